"""Real node processes on loopback, driven through the CLI: publish on A, fetch via B's gateway."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
from cdn_helpers import curl_path

from zeone.testing import NodeProcess, NodeProcesses


def curl(node: NodeProcess, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """curl with the node's API token, as a user scripting the gateway would."""
    return subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {node.token}", *args, url],
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def nodes(zeone_processes: NodeProcesses) -> list[NodeProcess]:
    return zeone_processes.make(["a", "b"], enable=["cdn"])


def test_publish_on_a_fetch_through_b(nodes, tmp_path):
    curl_path()  # skips (or fails in CI) without curl
    a, b = nodes
    info_a = a.start()
    info_b = b.start("--bootstrap", f"{info_a['node_id']}@{info_a['listen'][0]}")
    data = os.urandom(1_500_000)
    path = tmp_path / "report.pdf"
    path.write_bytes(data)

    published = a.cli("cdn", "publish", str(path), check=False)
    assert published.returncode == 0, published.stderr
    cid, url = published.stdout.split()
    assert url == f"{info_a['api_url']}/cdn/{cid}"

    url_b = f"{info_b['api_url']}/cdn/{cid}"
    deadline = time.monotonic() + 20
    while True:  # B's bootstrap lookup may still be running when the first request comes
        result = curl(b, url_b, "-o", str(tmp_path / "got.pdf"), "-w", "%{http_code}")
        if result.stdout == b"200" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.stdout == b"200", result.stderr
    got = (tmp_path / "got.pdf").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    contents = f"{info_b['api_url']}/cdn/api/contents"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the cache is flushed just after the client is done
        listed = json.loads(curl(b, contents).stdout)["contents"]
        if listed and listed[0]["complete"]:
            break
        time.sleep(0.1)
    ranged = curl(b, url_b, "-r", "-100")  # from B's cache now
    assert ranged.stdout == data[-100:]
    status = b.json("cdn", "status")
    assert status["bytes_from_peers"] == len(data) and status["bad_chunks"] == 0
    rows = b.json("cdn", "ls")
    assert [(r["id"], r["complete"], r["pinned"]) for r in rows] == [(cid, True, False)]
    assert b.json("cdn", "pin", cid)["pinned"] is True
    bad = b.cli("cdn", "pin", "not-an-id", check=False)
    assert bad.returncode == 1 and "error" in bad.stderr and "Traceback" not in bad.stderr
