"""The auditor's commands: replay, verify, digest, simulate, audit."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from ledger.app.audit import ReplayedInvoice
from ledger.store.digest import (
    Algorithm,
    ChainDigest,
    KeyFileError,
    check_digest,
    export_digest,
    generate_key,
    load_key,
)
from ledger.store.records import StoredEvent
from ledger.store.verify import verify_progress
from projections.audit_log import AuditQuery
from projections.auditing import check_range
from projections.invoicing import ReplayCheck
from services.bootstrap import App
from services.cli import reports
from services.cli.runtime import with_app
from services.config import Settings


def _instant(text: str) -> datetime:
    """An ISO date or date-time, taken as UTC when it names no offset."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.invoice:
        check: ReplayCheck = with_app(
            settings, lambda app: app.invoicing.verify_finalized(args.invoice)
        )
        if args.customer and check.replayed.customer_id != args.customer:
            print(f"invoice {args.invoice} belongs to another customer", file=sys.stderr)
            return 2
        print(_invoice_check(check, as_json=args.json))
        return 0 if check.matches else 1
    if not args.customer:
        print("give --customer (and optionally --invoice)", file=sys.stderr)
        return 2
    return with_app(settings, lambda app: _replay_customer(app, args))


async def _replay_customer(app: App, args: argparse.Namespace) -> int:
    mismatches = 0
    if not args.json:
        print(f"customer {args.customer}: events in ledger order, then invoices recomputed")
    items = app.auditing.replay_customer(
        args.customer,
        up_to_seq=args.up_to_seq,
        up_to_time=_instant(args.up_to_time) if args.up_to_time else None,
        rate_card_id=args.rate_card or "",
        rate_card_version=args.version or 0,
    )
    async for item in items:
        if isinstance(item, StoredEvent):
            line = reports.json_line("event", reports.event_json(item)) if args.json else None
            print(line or reports.event_line(item))
            continue
        mismatches += item.matches is False
        print(_replayed(item, as_json=args.json))
    return 1 if mismatches else 0


def _replayed(item: ReplayedInvoice, *, as_json: bool) -> str:
    if as_json:
        return reports.json_line("invoice", reports.replayed_json(item))
    return reports.invoice_block(item)


def _invoice_check(check: ReplayCheck, *, as_json: bool) -> str:
    item = ReplayedInvoice(
        check.replayed, "FINALIZED", check.replayed_sha256, check.recorded_sha256
    )
    if as_json:
        return reports.json_line("invoice", reports.replayed_json(item))
    verdict = "MATCH: the invoice follows from the ledger" if check.matches else "MISMATCH"
    return f"{reports.invoice_block(item)}\n{verdict}"


def verify_command(settings: Settings, args: argparse.Namespace) -> int:
    check_range(args.from_seq, args.to_seq)

    async def body(app: App) -> int:
        final = None
        async for report in verify_progress(app.store, args.from_seq, args.to_seq, args.every):
            final = report
            if not report.done:
                print(
                    f"checked {report.events_checked} events through seq {report.last_seq}",
                    file=sys.stderr,
                )
        assert final is not None
        if final.breach is None:
            print(
                f"ledger ok: {final.events_checked} events, through seq {final.last_seq},"
                f" chain hash {final.last_hash.hex()}"
            )
            return 0
        print(f"ledger BROKEN at seq {final.breach.seq}: {final.breach.reason}")
        return 1

    return with_app(settings, body)


def digest_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return _digest(settings, args)
    except KeyFileError as error:
        print(f"accrual: {error}", file=sys.stderr)
        return 2


def _digest(settings: Settings, args: argparse.Namespace) -> int:
    algorithm = Algorithm(args.algorithm or settings.digest_algorithm)
    if args.action == "keygen":
        return _keygen(algorithm, Path(args.out))
    key_file = Path(args.key) if args.key else settings.digest_key_file
    if key_file is None:
        print("give --key or set ACCRUAL_DIGEST_KEY_FILE", file=sys.stderr)
        return 2
    key = load_key(algorithm, key_file)
    if args.action == "export":

        async def export(app: App) -> str:
            return (await export_digest(app.store, key, datetime.now(UTC))).to_json()

        text = with_app(settings, export)
        if getattr(args, "out", None):
            Path(args.out).write_text(text)
        print(text, end="")
        return 0

    async def verify(app: App) -> int:
        broken = 0
        for name in args.digests:
            digest = ChainDigest.from_json(Path(name).read_text())
            breach = await check_digest(app.store, digest, key)
            if breach is None:
                print(f"{name}: ok, the ledger reproduces seq {digest.seq} hash {digest.hash}")
            else:
                broken += 1
                print(f"{name}: BROKEN at seq {breach.seq}: {breach.reason}")
        return 1 if broken else 0

    return with_app(settings, verify)


def _keygen(algorithm: Algorithm, out: Path) -> int:
    if out.exists():
        print(f"{out} exists; refusing to overwrite a key", file=sys.stderr)
        return 2
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(generate_key(algorithm))
    key = load_key(algorithm, out)
    print(f"wrote {algorithm.value} key {key.key_id} to {out} (readable only by you)")
    return 0


def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    async def body(app: App) -> str:
        simulation = await app.auditing.simulate(
            args.rate_card, args.version, _instant(args.start), _instant(args.end)
        )
        if args.csv:
            return reports.simulation_csv(simulation.rows)
        return reports.simulation_table(simulation.rows, simulation.totals())  # type: ignore[arg-type]

    print(with_app(settings, body), end="" if args.csv else "\n")
    return 0


def audit_command(settings: Settings, args: argparse.Namespace) -> int:
    async def body(app: App) -> list[str]:
        await app.runner.catch_up()  # the audit log reflects every event so far
        query = AuditQuery(
            customer_id=args.customer or "",
            actor=args.actor or "",
            kind=args.kind or "",
            start=_instant(args.start) if args.start else None,
            end=_instant(args.end) if args.end else None,
            page_size=args.limit,
        )
        entries, _ = await app.auditing.entries(query)
        render = reports.audit_json if args.json else reports.audit_line
        return [render(entry) for entry in entries]

    for line in with_app(settings, body):
        print(line)
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser("replay", help="recompute a customer's invoices from the ledger")
    replay.add_argument("--customer", help="replay this customer's events and invoices")
    replay.add_argument("--invoice", help="check one finalized invoice's hash")
    replay.add_argument("--up-to-seq", type=int, help="replay the ledger only through this seq")
    replay.add_argument("--up-to-time", help="replay events recorded by this ISO instant")
    replay.add_argument("--rate-card", help="recompute under this rate card ...")
    replay.add_argument("--version", type=int, help="... at this version (a simulation)")
    replay.add_argument("--json", action="store_true", help="canonical JSON lines")
    replay.set_defaults(run=replay_command)

    verify = commands.add_parser("verify", help="check seq gaps, versions and the hash chain")
    verify.add_argument("--from", dest="from_seq", type=int, default=1)
    verify.add_argument("--to", dest="to_seq", type=int)
    verify.add_argument("--every", type=int, default=50_000, help="progress every N events")
    verify.set_defaults(run=verify_command)

    digest = commands.add_parser("digest", help="signed chain digests kept outside the database")
    actions = digest.add_subparsers(dest="action", required=True)
    keygen = actions.add_parser("keygen", help="write a new signing key (mode 0600)")
    keygen.add_argument("--out", required=True, help="the key file to create")
    export = actions.add_parser("export", help="sign the chain head; print (and --out) it")
    export.add_argument("--out", help="also write the digest to this file")
    check = actions.add_parser("verify", help="check that the ledger reproduces digests")
    check.add_argument("digests", nargs="+", help="digest files written by export")
    for action in (keygen, export, check):
        action.add_argument("--algorithm", choices=[a.value for a in Algorithm])
        action.set_defaults(run=digest_command)
    for action in (export, check):
        action.add_argument("--key", help="key file (default: ACCRUAL_DIGEST_KEY_FILE)")

    simulate = commands.add_parser("simulate", help="revenue delta of a price version on history")
    simulate.add_argument("--rate-card", required=True)
    simulate.add_argument("--version", type=int, required=True)
    simulate.add_argument("--from", dest="start", required=True, help="ISO date or instant")
    simulate.add_argument("--to", dest="end", required=True, help="ISO date or instant")
    simulate.add_argument("--csv", action="store_true")
    simulate.set_defaults(run=simulate_command)

    audit = commands.add_parser("audit", help="who did what, when and why")
    audit.add_argument("--customer")
    audit.add_argument("--actor")
    audit.add_argument("--kind", help="an event type, e.g. RateCardPublished")
    audit.add_argument("--from", dest="start")
    audit.add_argument("--to", dest="end")
    audit.add_argument("--limit", type=int, default=1_000)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(run=audit_command)
