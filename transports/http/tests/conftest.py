"""Fixtures: a real ws listener on loopback (no node), and a cover site directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from hypothesis import settings
from zeone_http.server import ServerLimits
from zeone_http.site import Site
from zeone_http.transport import HttpSettings, WsTransport

from zeone.net.transport import Address

SECRET = "/assets/app-7c1e0b55.js"

# Same examples on every run (as the kernel's tests do): a flaky test is a bug.
settings.register_profile("zeone-http", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(
    "explore" if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else "zeone-http"
)


def need_binary(name: str) -> str:
    """The path of an external program, or a skip (a failure under CI)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (apt-get install -y {name})")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<h1>Welcome to my site</h1>\n")
    (root / "style.css").write_text("body { color: black }\n")
    (root / "docs" / "index.html").write_text("<p>docs</p>\n")
    (root / ".env").write_text("SECRET=1\n")
    (tmp_path / "outside.txt").write_text("outside the site\n")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    return root


@pytest.fixture(name="need_binary")
def need_binary_fixture() -> Callable[[str], str]:
    """Test modules must not import conftest (another directory's may win the module name)."""
    return need_binary


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


class Listener:
    def __init__(self, transport: WsTransport, address: Address) -> None:
        self.transport = transport
        self.address = address
        self.port = address.port
        self.base = f"http://127.0.0.1:{address.port}"


@pytest.fixture
def start_listener(nursery: trio.Nursery) -> Callable[..., object]:
    async def start(
        site: Site | None = None,
        limits: ServerLimits | None = None,
        handler: Callable[[trio.abc.Stream], object] = echo,
        **settings: object,
    ) -> Listener:
        transport = WsTransport(
            HttpSettings(
                secret_path=lambda: SECRET,
                site=site or Site(),
                limits=limits or ServerLimits(),
                **settings,  # type: ignore[arg-type]
            )
        )
        bound = await nursery.start(transport.listen, Address.build("ws", "127.0.0.1", 0), handler)
        return Listener(transport, bound)

    return start


@pytest.fixture
async def listener(start_listener, site_dir: Path) -> AsyncIterator[Listener]:
    yield await start_listener(site=Site(site_dir))


def _make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _make_cert(tmp_path_factory.mktemp("tls"))
