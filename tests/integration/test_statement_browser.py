"""The statement page in a real browser: headless Chromium draws it without a
single console error or failed load, and keeps every figure the page carries.

No database: the statement is the shared synthetic one. Skipped where Chromium
is missing (``make browser`` installs it), except on CI, where it must run.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from services.statement_page import render_statement
from tests.chromium import console_errors, dump_dom, render_png, require_chromium
from tests.statement_fixtures import INVOICE_ID, TOTAL, statement

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What Debian's Chromium 156 printed here for a clean page and for a leaky one.
STARTUP_NOISE = """\
/usr/bin/chromium: 9: [: 25275424768: unexpected operator
[6449:6478:1124/024023.404603:ERROR:dbus/bus.cc:405] Failed to connect to the bus: \
Failed to connect to socket /run/dbus/system_bus_socket: No such file or directory
[6492:6492:1124/024023.526861:WARNING:media/gpu/vaapi/vaapi_wrapper.cc:1655] \
drmGetDevices2() has not found any devices
[6449:6449:1124/024023.697171:ERROR:dbus/object_proxy.cc:572] Failed to call method: \
org.freedesktop.DBus.NameHasOwner: object_path= /org/freedesktop/DBus: unknown error type:
[6449:6449:1124/024023.778134:WARNING:ui/base/idle/idle_linux.cc:111] None of the known \
D-Bus ScreenSaver services could be used.
4134 bytes written to file /tmp/t.png
"""
PAGE_PROBLEMS = (
    '[6606:6606:1124/024030.154941:INFO:CONSOLE:9] "an error", source: file:///t.html (9)',
    '[1:1:0101/000000.000000:INFO:CONSOLE(3)] "Failed to load resource: net::ERR_FILE_NOT_FOUND"',
    "[1:1:0101/000000.000000:ERROR:url_loader.cc] net::ERR_NAME_NOT_RESOLVED",
)
WIDTH, HEIGHT = 1200, 2400


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, its checksum verified."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (kind, length) == (b"IHDR", 13)
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert zlib.crc32(kind + body) == crc
    width, height = struct.unpack(">II", body[:8])
    return width, height


def write_page(tmp_path: Path) -> Path:
    page = tmp_path / "statement.html"
    page.write_text(render_statement(statement()), encoding="utf-8")
    return page


def test_startup_noise_is_not_a_page_error() -> None:
    assert console_errors(STARTUP_NOISE) == ()
    assert console_errors(STARTUP_NOISE + "\n".join(PAGE_PROBLEMS)) == PAGE_PROBLEMS


def test_chromium_draws_the_statement_without_errors(tmp_path: Path) -> None:
    require_chromium()
    png = tmp_path / "statement.png"
    result = render_png(write_page(tmp_path), png, width=WIDTH, height=HEIGHT)
    assert result.returncode == 0, result.stderr
    assert result.console_errors == (), result.stderr
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # a blank page of this size compresses to a few KB
    assert png_size(data) == (WIDTH, HEIGHT)


def test_the_browsers_dom_keeps_the_invoice_and_its_total(tmp_path: Path) -> None:
    require_chromium()
    dom = dump_dom(write_page(tmp_path))
    assert INVOICE_ID in dom
    assert f'data-amount="{TOTAL}"' in dom
    assert 'data-field="total"' in dom
    assert "<script" not in dom.lower()  # the customer's name stayed text


def test_a_page_with_a_reference_is_reported(tmp_path: Path) -> None:
    """The filter sees what this Chromium prints when a page does fetch something."""
    require_chromium()
    page = tmp_path / "leaky.html"
    page.write_text(
        render_statement(statement()).replace(
            "</main>", '<img src="missing.png" alt=""></main>', 1
        ),
        encoding="utf-8",
    )
    result = render_png(page, tmp_path / "leaky.png", width=400, height=300)
    assert result.returncode == 0, result.stderr
    assert len(result.console_errors) == 1, result.stderr
    assert "missing.png" in result.console_errors[0]
