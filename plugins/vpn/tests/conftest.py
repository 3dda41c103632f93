from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))

from vpn_helpers import SMALL, HttpServer, deterministic_bytes


@pytest.fixture(scope="session")
def web_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "small.bin").write_bytes(deterministic_bytes(SMALL))
    (root / "hello.txt").write_text("hello through the VPN\n")
    return root


@pytest.fixture(scope="session")
def http_server(web_root):
    server = HttpServer(web_root)
    yield server
    server.stop()
