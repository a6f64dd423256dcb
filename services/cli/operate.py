"""Running the service: serve, migrate, project."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal

import psycopg
import structlog

from ledger.store import migrate
from services.auth.credentials import ADMIN_TOKEN_FILE, APPROVER_TOKEN_FILE, ensure_admin_token
from services.bootstrap import running_app
from services.cli.runtime import DatabaseUrls, database, hand_projections_to_projector
from services.config import Settings
from services.server import serve, tune_garbage_collector
from services.telemetry import configure_telemetry

_log = structlog.get_logger("accrual.cli")


def serve_command(settings: Settings, _: argparse.Namespace) -> int:
    telemetry = configure_telemetry(prometheus=settings.prometheus_address)
    try:
        with database(settings) as urls:
            _migrate(urls)
            if settings.database_url is None:  # the development default: local tokens
                _issue_local_tokens(settings, urls.owner)
            if urls.owner_login:
                _log.warning(
                    "the service connects with the database owner's privileges; set these"
                    " to the least-privileged roles' URLs",
                    unset=list(urls.owner_login),
                )

            async def main() -> None:
                async with running_app(settings, urls.service, projector_url=urls.projector) as app:
                    await serve(app, settings.grpc_address, telemetry.server_interceptors())

            asyncio.run(main())
    finally:
        telemetry.shutdown()
    return 0


def _issue_local_tokens(settings: Settings, owner_url: str) -> None:
    """An admin token, and a pricing approver's for the second pair of eyes, in files
    only their owner can read; kept across restarts."""
    path = settings.data_dir / ADMIN_TOKEN_FILE
    with psycopg.connect(owner_url, autocommit=True) as conn:
        created = ensure_admin_token(conn, path)
    _log.info(
        "local admin token created" if created else "local admin token kept",
        admin_token_file=str(path),
        approver_token_file=str(path.with_name(APPROVER_TOKEN_FILE)),
    )


def migrate_command(settings: Settings, _: argparse.Namespace) -> int:
    with database(settings) as urls:
        _migrate(urls)
    print("migrations applied")
    return 0


def _migrate(urls: DatabaseUrls) -> None:
    migrate.upgrade(urls.owner)
    hand_projections_to_projector(urls)


def project_command(settings: Settings, args: argparse.Namespace) -> int:
    """The projection runner as its own process (one of any number of replicas)."""
    runner_only = dataclasses.replace(settings, run_projector=False)
    telemetry = configure_telemetry(prometheus=settings.prometheus_address)
    try:
        _run_projector(runner_only, args)
    finally:
        telemetry.shutdown()
    return 0


def _run_projector(settings: Settings, args: argparse.Namespace) -> None:
    with database(settings) as urls:

        async def main() -> None:
            async with running_app(settings, urls.service, projector_url=urls.projector) as app:
                tune_garbage_collector()  # a projector's: big batches, short-lived
                if args.once:
                    applied = await app.runner.catch_up()
                    _log.info("caught up", events=applied)
                    return
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
                await app.runner.run_forever(stop)

        asyncio.run(main())


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands.add_parser("serve", help="migrate, project and serve gRPC").set_defaults(
        run=serve_command
    )
    commands.add_parser("migrate", help="apply database migrations").set_defaults(
        run=migrate_command
    )
    project = commands.add_parser("project", help="run the projection runner")
    project.add_argument("--once", action="store_true", help="catch up once and exit")
    project.set_defaults(run=project_command)
