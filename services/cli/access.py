"""Access: bearer tokens (``accrual tokens``) and client-certificate principals
(``accrual certs``)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg

from ledger.store import migrate
from services.auth import credentials
from services.auth.principals import ROLES
from services.cli.reports import table
from services.cli.runtime import database
from services.config import Settings

MAX_EXPIRES_DAYS = 3650
Command = Callable[[Settings, argparse.Namespace], int]


@contextlib.contextmanager
def _owner_connection(settings: Settings) -> Iterator[credentials.Connection]:
    """The database owner's connection (autocommit), on a migrated schema."""
    with database(settings) as urls:
        migrate.upgrade(urls.owner)
        with psycopg.connect(urls.owner, autocommit=True) as conn:
            yield conn


def _bad_input_exits_2(command: Command) -> Command:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return command(settings, args)
        except ValueError as error:
            print(f"accrual: {error}", file=sys.stderr)
            return 2

    return run


def _customers(args: argparse.Namespace) -> list[str] | None:
    return list(args.customer) if args.customer else None


@_bad_input_exits_2
def create_token_command(settings: Settings, args: argparse.Namespace) -> int:
    customers = _customers(args)
    # Checked before the database is started, so a typo costs nothing.
    credentials.validated_grant(args.principal, args.role, customers)
    expires_at = None
    if args.expires_days is not None:
        if not 1 <= args.expires_days <= MAX_EXPIRES_DAYS:
            raise ValueError(f"--expires-days must be between 1 and {MAX_EXPIRES_DAYS}")
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_days)
    with _owner_connection(settings) as conn:
        issued = credentials.issue_token(
            conn,
            args.principal,
            args.role,
            customers=customers,
            expires_at=expires_at,
            note=args.note,
        )
    print(issued.token)
    print(
        f"accrual: token {issued.token_id} for {args.principal} issued. Keep it now:"
        " it is stored hashed and will not be shown again.",
        file=sys.stderr,
    )
    return 0


def list_tokens_command(settings: Settings, _: argparse.Namespace) -> int:
    with _owner_connection(settings) as conn:
        tokens = credentials.list_tokens(conn)
    rows = [
        (
            token.token_id,
            token.principal,
            ",".join(token.roles),
            _customer_cell(token.customers),
            _when(token.created_at),
            _when(token.expires_at),
            _when(token.revoked_at),
            token.note,
        )
        for token in tokens
    ]
    headers = ("id", "principal", "roles", "customers", "created", "expires", "revoked", "note")
    print(table(headers, rows))
    return 0


@_bad_input_exits_2
def revoke_token_command(settings: Settings, args: argparse.Namespace) -> int:
    token_id = credentials.check_token_id(args.token_id)
    with _owner_connection(settings) as conn:
        revoked = credentials.revoke_token(conn, token_id)
    if not revoked:
        print(
            f"accrual: no token {token_id} in force (unknown or already revoked)", file=sys.stderr
        )
        return 1
    print(f"token {token_id} revoked; servers stop accepting it within seconds")
    return 0


@_bad_input_exits_2
def allow_certificate_command(settings: Settings, args: argparse.Namespace) -> int:
    customers = _customers(args)
    credentials.validated_grant(args.name, args.role, customers)
    with _owner_connection(settings) as conn:
        credentials.allow_certificate(
            conn, args.name, args.role, customers=customers, note=args.note
        )
    print(f"client certificates with common name {args.name!r} allowed: {', '.join(args.role)}")
    return 0


def list_certificates_command(settings: Settings, _: argparse.Namespace) -> int:
    with _owner_connection(settings) as conn:
        allowed = credentials.list_certificates(conn)
    rows = [
        (
            cert.principal,
            ",".join(cert.roles),
            _customer_cell(cert.customers),
            _when(cert.created_at),
            cert.note,
        )
        for cert in allowed
    ]
    print(table(("common name", "roles", "customers", "created", "note"), rows))
    return 0


def remove_certificate_command(settings: Settings, args: argparse.Namespace) -> int:
    with _owner_connection(settings) as conn:
        removed = credentials.remove_certificate(conn, args.name)
    if not removed:
        print(f"accrual: common name {args.name!r} was not allowed", file=sys.stderr)
        return 1
    print(f"client certificates with common name {args.name!r} removed")
    return 0


def _customer_cell(customers: Sequence[str] | None) -> str:
    return "(all)" if customers is None else ",".join(customers)


def _when(instant: datetime | None) -> str:
    return "-" if instant is None else instant.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _grant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role",
        action="append",
        required=True,
        metavar="ROLE",
        help=f"a role, repeat for more: {', '.join(sorted(ROLES))}",
    )
    parser.add_argument(
        "--customer",
        action="append",
        metavar="CUSTOMER_ID",
        help="limit to this customer, repeat for more (default: every customer)",
    )
    parser.add_argument("--note", default="", help="what it is for, shown in lists")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = commands.add_parser("tokens", help="create, list and revoke bearer tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    create = token_commands.add_parser(
        "create", help="issue a token (printed once on stdout, stored hashed)"
    )
    create.add_argument("--principal", required=True, help="who the token speaks for")
    _grant_arguments(create)
    create.add_argument(
        "--expires-days", type=int, metavar="N", help="expire after N days (default: never)"
    )
    create.set_defaults(run=create_token_command)
    token_commands.add_parser(
        "list", help="every token: id, principal, roles, customers, dates (never secrets)"
    ).set_defaults(run=list_tokens_command)
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the id `accrual tokens list` shows")
    revoke.set_defaults(run=revoke_token_command)

    certs = commands.add_parser("certs", help="client certificate common names allowed in (mTLS)")
    cert_commands = certs.add_subparsers(dest="certs_command", required=True)
    allow = cert_commands.add_parser(
        "allow", help="allow a client certificate common name, with roles (replaces)"
    )
    allow.add_argument("name", metavar="NAME", help="the certificate's subject common name")
    _grant_arguments(allow)
    allow.set_defaults(run=allow_certificate_command)
    cert_commands.add_parser("list", help="every allowed common name").set_defaults(
        run=list_certificates_command
    )
    remove = cert_commands.add_parser("remove", help="stop allowing a common name")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(run=remove_certificate_command)
