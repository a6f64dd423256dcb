"""Headless Chromium for tests that must see a page the way a browser draws it.

The browser is Debian's ``chromium`` package (``make browser`` installs it);
nothing is downloaded at test time. Each run gets a fresh profile and no
network-facing background services, so runs are independent and offline.

What Chromium prints on stderr, and what counts as the page's error
-------------------------------------------------------------------
Run here (Chromium 156, Debian, no display, no D-Bus), a clean page prints:

* the Debian wrapper's own shell noise (``/usr/bin/chromium: 9: [: ...:
  unexpected operator`` from its /dev/shm size check);
* dozens of ``ERROR:dbus/bus.cc`` and ``ERROR:dbus/object_proxy.cc`` lines (no
  system bus in a container), ``WARNING:media/gpu/vaapi``, ``WARNING:sandbox``
  and ``WARNING:ui/base/idle`` lines;
* ``N bytes written to file ...png`` for a screenshot.

None of that is about the page, and it says "ERROR" a lot, so the level is no
guide. What is about the page is a console message, logged as
``[pid:tid:time:INFO:CONSOLE:LINE] "text", source: URL (LINE)``. This build
logs every console message at INFO whatever its level (``console.error`` and a
Content-Security-Policy violation alike), so every ``:CONSOLE`` line counts: the
statement page runs no script, so any message at all is the browser reporting a
problem with it. A failed load is not logged by this build unless it breaks the
page's CSP (the page forbids every fetch, so any reference does), but older
builds print ``Failed to load resource`` and network failures ``net::ERR_``;
those count too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

NAMES: Final = ("chromium", "chromium-browser")
DEBIAN_PATH: Final = Path("/usr/bin/chromium")
TIMEOUT_S: Final = 120
MISSING: Final = "chromium is not installed; `make browser` installs it"

# A console message from the page: the log prefix's tag is CONSOLE (":CONSOLE:7]"
# in this build, "CONSOLE(7)]" in older ones), whatever the level before it.
_CONSOLE: Final = re.compile(r"^\[[^\]]*:CONSOLE[:(]")
_LOAD_FAILURES: Final = ("Failed to load resource", "net::ERR_")

FLAGS: Final = (
    "--headless",
    "--no-sandbox",  # root in a container: no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Debian's wrapper adds this only when its /dev/shm check works; containers
    # often have a tiny /dev/shm, which crashes the renderer on a tall page.
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
)


@dataclass(frozen=True)
class RenderResult:
    returncode: int
    stderr: str
    console_errors: tuple[str, ...]  # the stderr lines that are about the page


def chromium_binary() -> str | None:
    """The Chromium on PATH (Debian's name, then Ubuntu's), else Debian's path."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return str(DEBIAN_PATH) if os.access(DEBIAN_PATH, os.X_OK) else None


def require_chromium() -> str:
    """The browser, or skip the test; on CI (CI=true) a missing browser fails it."""
    binary = chromium_binary()
    if binary is not None:
        return binary
    if os.environ.get("CI") == "true":
        pytest.fail(f"{MISSING} (CI must run the browser tests)")
    pytest.skip(MISSING)


def console_errors(stderr: str) -> tuple[str, ...]:
    """The lines of Chromium's stderr that report a problem with the page (see above)."""
    return tuple(
        line
        for line in stderr.splitlines()
        if _CONSOLE.match(line) or any(failure in line for failure in _LOAD_FAILURES)
    )


def render_png(
    html_path: Path, png_path: Path, *, width: int = 1200, height: int = 2400
) -> RenderResult:
    """Screenshot the page's first ``width`` x ``height`` pixels into ``png_path``."""
    args = (f"--screenshot={png_path}", f"--window-size={width},{height}")
    returncode, _, stderr = _run(html_path, args)
    return RenderResult(returncode, stderr, console_errors(stderr))


def dump_dom(html_path: Path) -> str:
    """The DOM as the browser parsed it, serialized (what it would show, not the bytes)."""
    returncode, stdout, stderr = _run(html_path, ("--dump-dom",))
    assert returncode == 0, f"chromium --dump-dom exited {returncode}:\n{stderr}"
    return stdout


def _run(html_path: Path, args: Sequence[str]) -> tuple[int, str, str]:
    binary = chromium_binary()
    assert binary is not None, MISSING
    with tempfile.TemporaryDirectory(prefix="accrual-chromium-") as profile:
        command = [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            *args,
            html_path.resolve().as_uri(),
        ]
        # Its own session, so a hung browser is ended with every process it forked.
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
    text = stderr.decode("utf-8", "replace")
    return process.returncode, stdout.decode("utf-8", "replace"), text
