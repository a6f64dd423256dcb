"""Operating projections: status, blue/green rebuild, swap, drop."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from ledger.store.event_store import read_head
from projections.registry import status
from services.bootstrap import App
from services.cli.runtime import with_app
from services.config import Settings
from services.server import tune_garbage_collector


def status_command(settings: Settings, _: argparse.Namespace) -> int:
    async def body(app: App) -> list[str]:
        async with app.pool.connection() as conn:
            head = await read_head(conn)
            rows = await status(conn)
            cur = await conn.execute("SELECT recorded_at FROM events WHERE seq = %s", (head.seq,))
            row = await cur.fetchone()
        head_at: datetime | None = row[0] if row else None
        lines = [f"ledger head seq {head.seq}"]
        for r in rows:
            lag_s = (
                (head_at - r.checkpoint_recorded_at).total_seconds()
                if (head_at and r.checkpoint_recorded_at)
                else 0.0
            )
            lines.append(
                f"{r.name:<16} v{r.version:<3} {r.state.value:<9} checkpoint {r.checkpoint:<10}"
                f" lag {head.seq - r.checkpoint} events, {lag_s:.1f} s"
            )
        return lines

    print("\n".join(with_app(settings, body)))
    return 0


def rebuild_command(settings: Settings, args: argparse.Namespace) -> int:
    async def body(app: App) -> None:
        projection = await app.runner.start_rebuild(args.name, args.version)
        tune_garbage_collector()
        print(f"building {args.name} v{args.version} beside the live version", file=sys.stderr)
        async for progress in app.runner.build(projection):
            print(
                f"{progress.projection} v{progress.version}: seq {progress.checkpoint}"
                f" of {progress.head}, {progress.events_per_s:,.0f} events/s",
                file=sys.stderr,
            )
        print(f"{args.name} v{args.version} caught up; `accrual projections swap` makes it live")

    with_app(settings, body)
    return 0


def swap_command(settings: Settings, args: argparse.Namespace) -> int:
    async def body(app: App) -> int | None:
        return await app.runner.swap(args.name, args.version)

    retired = with_app(settings, body)
    print(f"{args.name} v{args.version} is live" + (f"; v{retired} retired" if retired else ""))
    return 0


def drop_command(settings: Settings, args: argparse.Namespace) -> int:
    async def body(app: App) -> None:
        await app.runner.drop(args.name, args.version)

    with_app(settings, body)
    print(f"dropped {args.name} v{args.version}")
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    projections = commands.add_parser("projections", help="status, rebuild, swap, drop")
    actions = projections.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="versions, checkpoints and lag").set_defaults(
        run=status_command
    )
    for name, run, text in (
        ("rebuild", rebuild_command, "build a new version from seq 0 beside the live one"),
        ("swap", swap_command, "make a rebuilt version live, atomically"),
        ("drop", drop_command, "drop a retired version's tables"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name", help="usage_rollups or audit_log")
        action.add_argument("--version", type=int, required=True)
        action.set_defaults(run=run)
