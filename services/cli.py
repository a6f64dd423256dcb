"""The ``accrual`` command: serve, migrate, project, replay, verify."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence

import structlog

from ledger.core.canonical import format_decimal
from ledger.core.codec import encode
from ledger.store import migrate
from ledger.store.verify import verify_ledger
from projections.invoicing import ReplayCheck
from services.bootstrap import running_app
from services.config import ConfigError, Settings
from services.embedded_db import EmbeddedPostgres
from services.logs import configure_logging
from services.server import serve

_log = structlog.get_logger("accrual.cli")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database, or the embedded one.

    The embedded server is started if it is not running, and stopped again at
    the end only if this command started it.
    """
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir / "pgdata", settings.embedded_pg_port)
    was_running = embedded.is_running()
    url = embedded.start()
    if not was_running:
        _log.info("embedded postgres started", data_dir=str(embedded.data_dir), url=url)
    try:
        yield url
    finally:
        if not was_running:
            embedded.stop()


def _serve(settings: Settings, _: argparse.Namespace) -> int:
    with database(settings) as url:
        migrate.upgrade(url)

        async def main() -> None:
            async with running_app(settings, url) as app:
                await serve(app, settings.grpc_address)

        asyncio.run(main())
    return 0


def _migrate(settings: Settings, _: argparse.Namespace) -> int:
    with database(settings) as url:
        migrate.upgrade(url)
    print("migrations applied")
    return 0


def _project(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings) as url:

        async def main() -> None:
            async with running_app(settings, url) as app:
                applied = await app.runner.catch_up()
                _log.info("caught up", events=applied)
                if not args.once:
                    await app.runner.run_forever(asyncio.Event())

        asyncio.run(main())
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings) as url:

        async def main() -> ReplayCheck:
            quiet = dataclasses.replace(settings, run_projector=False)
            async with running_app(quiet, url) as app:
                return await app.invoicing.verify_finalized(args.invoice)

        check = asyncio.run(main())
    if args.customer and check.replayed.customer_id != args.customer:
        print(f"invoice {args.invoice} belongs to another customer", file=sys.stderr)
        return 2
    print(_replay_report(check, as_json=args.json))
    return 0 if check.matches else 1


def _replay_report(check: ReplayCheck, *, as_json: bool) -> str:
    invoice = check.replayed
    if as_json:
        return json.dumps(
            {
                "invoice": encode(invoice),
                "recorded_sha256": check.recorded_sha256,
                "replayed_sha256": check.replayed_sha256,
                "matches": check.matches,
            },
            indent=2,
            sort_keys=True,
        )
    lines = [
        f"invoice {invoice.invoice_id} for customer {invoice.customer_id}",
        f"period {invoice.period_start:%Y-%m-%d %H:%M} .. {invoice.period_end:%Y-%m-%d %H:%M} UTC,"
        f" replayed through ledger seq {invoice.computed_through_seq}",
    ]
    lines += [
        f"  {line.product_id} {dict(line.group_values) or ''} v{line.rate_card_version}:"
        f" {line.explanation} {invoice.currency}"
        for line in invoice.lines
    ]
    lines += [
        f"total {format_decimal(invoice.total)} {invoice.currency}",
        f"recorded sha256 {check.recorded_sha256}",
        f"replayed sha256 {check.replayed_sha256}",
        "MATCH: the invoice follows from the ledger" if check.matches else "MISMATCH",
    ]
    return "\n".join(lines)


def _verify(settings: Settings, _: argparse.Namespace) -> int:
    with database(settings) as url:

        async def main() -> int:
            quiet = dataclasses.replace(settings, run_projector=False)
            async with running_app(quiet, url) as app:
                report = await verify_ledger(app.store)
            if report.breach is None:
                print(
                    f"ledger ok: {report.events_checked} events, head seq {report.last_seq},"
                    f" head hash {report.last_hash.hex()}"
                )
                return 0
            print(f"ledger BROKEN at seq {report.breach.seq}: {report.breach.reason}")
            return 1

        return asyncio.run(main())


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="accrual", description="Event-sourced billing ledger")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="migrate, project and serve gRPC").set_defaults(run=_serve)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)
    project = commands.add_parser("project", help="run the projection runner")
    project.add_argument("--once", action="store_true", help="catch up once and exit")
    project.set_defaults(run=_project)
    replay = commands.add_parser("replay", help="recompute a finalized invoice and check its hash")
    replay.add_argument("--invoice", required=True, help="invoice id, e.g. in-ct-acme-1")
    replay.add_argument("--customer", help="the customer the invoice must belong to")
    replay.add_argument("--json", action="store_true", help="print JSON instead of a report")
    replay.set_defaults(run=_replay)
    verify = commands.add_parser(
        "verify", help="check seq gaps, stream versions and the hash chain"
    )
    verify.set_defaults(run=_verify)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"accrual: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
