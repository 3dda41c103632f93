"""The gateway against real curl: full, ranges, suffix ranges, 416, conditionals, HEAD,
directories, path traversal, and an interrupted download resumed with `curl -C -`."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio
from cdn_helpers import curl_path, token_of
from zeone_cdn.plugin import state

SIZE = 3 * 1024 * 1024 + 12345
CACHE_CONTROL = "public, max-age=31536000, immutable"


@pytest.fixture
async def published(zeone_network, tmp_path):
    node = await zeone_network.add_node(enable=["cdn"], api=True)
    data = os.urandom(SIZE)
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    manifest = await state(node).cdn.publish(path, chunk_size=65536)
    return node, manifest.content_id, data


async def test_full_get_and_head(published, curl):
    node, cid, data = published
    status, headers, body, rc = await curl(node, f"/cdn/{cid}")
    assert (status, rc) == (200, 0) and body == data
    assert headers["etag"] == f'"{cid}"'
    assert headers["cache-control"] == CACHE_CONTROL
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "video/mp4"
    assert headers["content-length"] == str(SIZE)

    status, headers, body, rc = await curl(node, f"/cdn/{cid}", "-I", "-o", "/dev/null")
    assert status == 200 and body == b"" and headers["content-length"] == str(SIZE)
    assert headers["etag"] == f'"{cid}"'


async def test_ranges(published, curl):
    node, cid, data = published
    cases = [
        ("bytes=0-0", 0, 1),
        ("bytes=100-65636", 100, 65637),  # crosses a chunk boundary
        ("bytes=65536-131071", 65536, 131072),  # exactly one chunk
        (f"bytes={SIZE - 10}-", SIZE - 10, SIZE),
        (f"bytes=1000-{SIZE * 5}", 1000, SIZE),  # end clamped
        ("bytes=-500", SIZE - 500, SIZE),  # suffix
        (f"bytes=-{SIZE * 2}", 0, SIZE),  # suffix longer than the content
    ]
    for header, start, stop in cases:
        status, headers, body, _rc = await curl(node, f"/cdn/{cid}", "-H", f"Range: {header}")
        assert status == 206, header
        assert body == data[start:stop], header
        assert headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}", header
        assert headers["content-length"] == str(stop - start)
    # curl's own -r option too
    status, _h, body, _rc = await curl(node, f"/cdn/{cid}", "-r", "10-19")
    assert status == 206 and body == data[10:20]


async def test_unsatisfiable_and_malformed_ranges(published, curl):
    node, cid, data = published
    bad = [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0", "bytes=5-2"]
    bad += ["bytes=abc", "bytes=-", "bytes=1-2-3", "bytes= 0x10-20", "bytes=٣-4"]
    for header in bad:
        status, headers, body, _rc = await curl(node, f"/cdn/{cid}", "-H", f"Range: {header}")
        assert status == 416, header
        assert headers["content-range"] == f"bytes */{SIZE}", header
        assert body == b""
    # another unit is ignored; several ranges get the full representation
    for header in ["items=0-5", "bytes=0-1,5-6"]:
        status, headers, body, _rc = await curl(node, f"/cdn/{cid}", "-H", f"Range: {header}")
        assert status == 200 and body == data, header


async def test_conditional_requests(published, curl):
    node, cid, data = published
    etag = f'"{cid}"'
    for value in [etag, f"W/{etag}", f'"other", {etag}', "*"]:
        status, headers, body, _rc = await curl(
            node, f"/cdn/{cid}", "-H", f"If-None-Match: {value}"
        )
        assert status == 304 and body == b"" and headers["etag"] == etag, value
    # the id names immutable bytes: a client holding it is current even if no node holds it now
    unknown = "z" + "a" * 52
    status, _h, _b, _rc = await curl(node, f"/cdn/{unknown}", "-H", f'If-None-Match: "{unknown}"')
    assert status == 304
    status, _h, body, _rc = await curl(node, f"/cdn/{cid}", "-H", 'If-None-Match: "nope"')
    assert status == 200 and body == data
    # If-Range: a matching strong tag applies the range; a stale tag or a date sends everything
    ranged = ["-H", "Range: bytes=0-9"]
    status, _h, body, _rc = await curl(node, f"/cdn/{cid}", *ranged, "-H", f"If-Range: {etag}")
    assert status == 206 and body == data[:10]
    for value in ['"stale"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"]:
        status, _h, body, _rc = await curl(node, f"/cdn/{cid}", *ranged, "-H", f"If-Range: {value}")
        assert status == 200 and body == data, value
    status, _h, _b, _rc = await curl(node, f"/cdn/{cid}", "-H", 'If-Match: "other"')
    assert status == 412


async def test_bad_ids_and_unknown_content(published, curl):
    node, cid, _data = published
    status, _h, body, _rc = await curl(node, "/cdn/not-an-id")
    assert status == 400 and b"bad content id" in body
    unknown = "z" + "a" * 52
    status, _h, body, _rc = await curl(node, f"/cdn/{unknown}")
    assert status == 404 and b"no holder" in body
    status, _h, _b, _rc = await curl(node, f"/cdn/{cid}", auth=False)
    assert status == 401
    status, _h, _b, _rc = await curl(node, f"/cdn/{cid}/x")
    assert status == 404  # a file has no entries


async def test_directory_entries_and_traversal(zeone_network, tmp_path, curl):
    node = await zeone_network.add_node(enable=["cdn"], api=True)
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hi</h1>")
    (site / "css" / "style.css").write_text("body{}")
    (site / "data.bin").write_bytes(os.urandom(200_000))
    (tmp_path / "secret").write_text("outside")
    manifest = await state(node).cdn.publish(site, chunk_size=4096)
    cid = manifest.content_id

    status, headers, body, _rc = await curl(node, f"/cdn/{cid}/css/style.css")
    assert (status, body) == (200, b"body{}") and headers["content-type"].startswith("text/css")
    assert headers["etag"] != f'"{cid}"'
    status, _h, body, _rc = await curl(node, f"/cdn/{cid}")
    assert (status, body) == (200, b"<h1>hi</h1>")  # index.html
    status, headers, body, _rc = await curl(node, f"/cdn/{cid}/css/")
    assert status == 200 and b"style.css" in body  # a listing
    status, headers, body, _rc = await curl(node, f"/cdn/{cid}/data.bin", "-r", "100-199")
    assert status == 206 and body == (site / "data.bin").read_bytes()[100:200]
    assert headers["content-range"] == "bytes 100-199/200000"
    status, _h, _b, _rc = await curl(node, f"/cdn/{cid}/missing.txt")
    assert status == 404

    for attempt in ["../secret", "css/../../secret", "%2e%2e/secret", "css/%2E%2E/index.html",
                    "..%2fsecret", "css/..", "./index.html", "css//style.css", "%5c..%5csecret",
                    "css/%00"]:  # fmt: skip
        status, _h, body, _rc = await curl(node, f"/cdn/{cid}/{attempt}")
        assert status in (400, 404), attempt
        assert b"outside" not in body and b"body{}" not in body, attempt


async def test_interrupted_download_resumes_byte_identical(published, tmp_path, curl):
    node, cid, data = published
    target = tmp_path / "download.bin"
    command = [curl_path(), "-s", "-H", f"Authorization: Bearer {token_of(node)}",
               "-o", str(target), node.api_url + f"/cdn/{cid}"]  # fmt: skip
    # the reader goes away after 300 000 bytes: curl dies mid-body (write error / SIGPIPE)
    cut = await trio.run_process(
        ["sh", "-c", f'"$@" | head -c 300000 > "{target}"', "sh", *command[:4], command[-1]],
        check=False,
    )
    assert cut.returncode == 0  # the pipeline's status is head's
    partial = target.stat().st_size
    assert 0 < partial < SIZE
    resumed = await trio.run_process([*command[:1], "-C", "-", *command[1:]], check=False)
    assert resumed.returncode == 0
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
