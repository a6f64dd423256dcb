"""Where every benchmark keeps its runs: one JSON file per run in tests/bench/results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[2]


def print_figures(title: str, figures: Mapping[str, object]) -> None:
    """A benchmark's figures as one table under ``title``: whole numbers with
    thousands separators, others to two places, text as it is."""
    print(f"\n{title}")
    for label, value in figures.items():
        if isinstance(value, int):
            shown = f"{value:,}"
        elif isinstance(value, float):
            shown = f"{value:,.2f}"
        else:
            shown = str(value)
        print(f"  {label:<52} {shown:>12}")


def source_commit() -> str:
    """The commit of the code measured: the newest that changed more than result
    files, ``+changes`` if the checkout differs from it; ``unknown`` outside a
    git checkout."""
    code = ["--", ".", ":!tests/bench/results"]
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%h", *code], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", *code],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit.strip()}+changes" if changes else commit.strip()


def write_result(kind: str, details: dict[str, object], stamp: str = "") -> Path:
    """Write one run, with the date, machine, Python and commit it ran on, as
    ``<kind>-<UTC stamp>.json``; print and return where it went."""
    now = datetime.now(UTC)
    record = {
        "date": now.isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "commit": source_commit(),
        **details,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{stamp or f'{now:%Y%m%dT%H%M%S}'}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return out
