"""The README's worked example, run verbatim against a real server over loopback."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from services import cli
from tests.e2e.conftest import RunningServer

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(
    r"<!-- worked-example:start -->\n```python\n(.*?)```\n<!-- worked-example:end -->", re.S
)


def readme_example() -> str:
    match = BLOCK.search(README.read_text())
    assert match is not None, "the README has a worked example between its markers"
    return match.group(1)


def test_readme_worked_example_bills_and_replays_exactly(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ACCRUAL_ADDRESS", server.address)
    # As `make run` leaves them: the local admin's and approver's tokens in the data folder.
    monkeypatch.setenv("ACCRUAL_DATA_DIR", str(tmp_path))
    (tmp_path / "admin-token").write_text(server.admin_token + "\n")
    (tmp_path / "approver-token").write_text(server.approver_token + "\n")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    lines = output.getvalue().splitlines()
    assert lines[:4] == [
        "ACCEPTED",
        "DUPLICATE",
        "DRAFT 185.19 USD",
        "123456789 × 0.0000015 = 185.1851835 → 185.19",
    ]
    status, invoice_id, sha256 = lines[4].split()
    assert status == "FINALIZED"
    assert re.fullmatch(r"[0-9a-f]{64}", sha256)

    monkeypatch.setenv("ACCRUAL_DATABASE_URL", server.database_url)
    replay = io.StringIO()
    with contextlib.redirect_stdout(replay):
        exit_code = cli.main(["replay", "--invoice", invoice_id])
    assert exit_code == 0
    assert f"recorded sha256 {sha256}" in replay.getvalue()
    assert f"replayed sha256 {sha256}" in replay.getvalue()
    assert "MATCH" in replay.getvalue()
    assert os.environ["ACCRUAL_ADDRESS"] == server.address
