"""Shared fixtures (helpers live in mimic_cover.py, importable from the tests by that name)."""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

# --import-mode=importlib puts no test directory on sys.path; the helper module has a name no
# other test directory uses, so adding ours is safe.
sys.path.insert(0, str(Path(__file__).parent))

from mimic_cover import CoverSite, make_certificate, serve_https


@pytest.fixture
async def cover_site(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[CoverSite]:
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    site = CoverSite(listeners[0].socket.getsockname()[1], cert)

    async def handler(tcp: trio.SocketStream) -> None:
        await serve_https(site, context, tcp)

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    yield site
