"""The ``accrual`` command: serve, migrate, project, projections, replay, verify, digest,
simulate, audit, tokens, certs, report, statement."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ledger.core.errors import DomainError
from services.cli.access import add_commands as add_access_commands
from services.cli.audit import add_commands as add_audit_commands
from services.cli.operate import add_commands as add_operating_commands
from services.cli.projections import add_commands as add_projection_commands
from services.cli.reporting import add_commands as add_reporting_commands
from services.config import ConfigError, Settings
from services.logs import configure_logging


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="accrual", description="Event-sourced billing ledger")
    commands = root.add_subparsers(dest="command", required=True)
    add_operating_commands(commands)
    add_audit_commands(commands)
    add_projection_commands(commands)
    add_access_commands(commands)
    add_reporting_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"accrual: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    try:
        return int(args.run(settings, args))
    except DomainError as error:
        print(f"accrual: {error.message}", file=sys.stderr)
        for violation in error.violations:
            print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        return 2
