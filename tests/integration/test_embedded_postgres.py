"""The embedded server's stop survives its own tool dying, as CI once saw pg_ctl do."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from services import embedded_db
from services.embedded_db import EmbeddedPostgres, ToolKilledError, free_port


def test_a_program_killed_by_a_signal_is_reported_as_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded_db, "pg_binary", lambda _name: Path("/bin/sh"))
    with pytest.raises(ToolKilledError, match=r"failed \(-7\)"):
        EmbeddedPostgres._run(["sh", "-c", "kill -BUS $$"], None)
    with pytest.raises(RuntimeError) as failed:
        EmbeddedPostgres._run(["sh", "-c", "exit 3"], None)
    assert not isinstance(failed.value, ToolKilledError)


def test_stop_runs_pg_ctl_again_when_it_dies_of_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata", free_port(), fsync=False)
    server.start()
    real_run = EmbeddedPostgres._run
    stops: list[list[str]] = []

    def dies_once(args: list[str], user: str | None) -> None:
        if args[-1] == "stop":
            stops.append(args)
            if len(stops) == 1:
                raise ToolKilledError("pg_ctl failed (-7): ")
        real_run(args, user)

    monkeypatch.setattr(EmbeddedPostgres, "_run", staticmethod(dies_once))
    try:
        server.stop(mode="immediate")
        assert len(stops) == 2
        assert not server.is_running()
        assert not (server.data_dir / "postmaster.pid").exists()
    finally:
        monkeypatch.undo()
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops to the service user")
def test_as_root_programs_run_as_the_service_user_and_report_signals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = embedded_db._run_as_user()
    assert user == embedded_db.SERVICE_USER
    account = pwd.getpwnam(user)
    monkeypatch.setattr(embedded_db, "pg_binary", lambda _name: Path("/bin/sh"))
    check = (
        f'test "$(id -u):$(id -g):$(id -G)" = "{account.pw_uid}:{account.pw_gid}:{account.pw_gid}"'
    )
    EmbeddedPostgres._run(["sh", "-c", check], user)  # its ids, no root groups
    with pytest.raises(ToolKilledError, match=r"failed \(-7\)"):
        EmbeddedPostgres._run(["sh", "-c", "kill -BUS $$"], user)
