"""Fetching through the gateway from peers: parallel, verified, lying holders avoided, nothing
partial served as valid."""

from __future__ import annotations

import os

import cdn_evil_peer
import pytest
import trio
from zeone_cdn.plugin import state

from zeone.content import announce
from zeone.testing import open_network

SIZE = 2 * 1024 * 1024 + 777


async def eventually_complete(cdn, cid) -> None:
    """The client may hang up before the last verified chunks are flushed to the cache."""
    with trio.fail_after(10):
        while not await cdn.store.has(cid):  # noqa: ASYNC110 - polling another node
            await trio.sleep(0.02)


@pytest.fixture
async def net(tmp_path):
    async with open_network(plugins=[cdn_evil_peer], data_root=tmp_path / "nodes") as network:
        yield network


async def start(net, tmp_path, mode, *, honest=True):
    """Publisher A (cdn), gateway B (cdn, API), and a lying holder E announced last."""
    a = await net.add_node(enable=["cdn"])
    b = await net.add_node(enable=["cdn"], api=True, settings={"plugins.cdn.parallel": 4})
    e = await net.add_node(enable=["evilcdn"])
    await net.connect_all()
    data = os.urandom(SIZE)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    cdn_a = state(a).cdn
    manifest = await cdn_a.publish(path, chunk_size=65536)
    cid = manifest.content_id
    await cdn_evil_peer.copy_content(e, cdn_a.store, cid)
    cdn_evil_peer.MODE[e] = mode
    if honest:
        await announce(a, cid)
    else:
        await cdn_a.store.delete(cid)
        from zeone.content import stop_announcing

        stop_announcing(a, cid)
    await announce(e, cid)  # most recent: asked first
    return a, b, e, cid, data


async def test_fetch_from_peer_then_served_locally(net, tmp_path, curl):
    _a, b, _e, cid, data = await start(net, tmp_path, ("honest", 0))
    status, _h, body, rc = await curl(b, f"/cdn/{cid}")
    assert (status, rc) == (200, 0) and body == data
    cdn_b = state(b).cdn
    assert cdn_b.stats.bytes_from_peers == SIZE
    await eventually_complete(cdn_b, cid)  # cached while streaming
    status, _h, body, _rc = await curl(b, f"/cdn/{cid}", "-H", "Range: bytes=-1000")
    assert status == 206 and body == data[-1000:]
    assert cdn_b.stats.bytes_from_peers == SIZE  # served from the cache


async def test_range_from_peers_fetches_only_needed_chunks(net, tmp_path, curl):
    _a, b, _e, cid, data = await start(net, tmp_path, ("honest", 0))
    status, _h, body, _rc = await curl(b, f"/cdn/{cid}", "-r", "70000-140000")
    assert status == 206 and body == data[70000:140001]
    assert state(b).cdn.stats.chunks_from_peers == 2  # chunks 1 and 2 of 64 KiB


async def test_holder_serving_wrong_chunks_is_avoided(net, tmp_path, curl):
    a, b, e, cid, data = await start(net, tmp_path, ("bad-chunk", 0))
    status, _h, body, rc = await curl(b, f"/cdn/{cid}")
    assert (status, rc) == (200, 0) and body == data
    cdn_b = state(b).cdn
    assert cdn_b.is_bad(e.node_id) and not cdn_b.is_bad(a.node_id)
    # caught at its first answers; only requests already in flight then (parallel = 4) came back
    assert 1 <= cdn_b.stats.bad_chunks <= 4
    await eventually_complete(cdn_b, cid)


async def test_bad_manifest_signature_is_refused(net, tmp_path, curl):
    _a, b, e, cid, data = await start(net, tmp_path, ("bad-signature", 0))
    status, _h, body, rc = await curl(b, f"/cdn/{cid}")
    assert (status, rc) == (200, 0) and body == data
    cdn_b = state(b).cdn
    assert cdn_b.is_bad(e.node_id) and cdn_b.stats.bad_manifests == 1


async def test_only_a_lying_manifest_is_a_502(net, tmp_path, curl):
    _a, b, _e, cid, _data = await start(net, tmp_path, ("bad-signature", 0), honest=False)
    status, _h, body, _rc = await curl(b, f"/cdn/{cid}")
    assert status == 502 and b"valid manifest" in body


async def test_no_valid_chunk_mid_response_aborts_the_connection(net, tmp_path, curl):
    _a, b, _e, cid, data = await start(net, tmp_path, ("bad-chunk", 20), honest=False)
    status, headers, body, rc = await curl(b, f"/cdn/{cid}")
    assert status == 200 and headers["content-length"] == str(SIZE)
    assert rc == 18  # curl: "transferred a partial file": the body never ended cleanly
    assert 0 < len(body) < SIZE and body == data[: len(body)]  # only verified bytes were sent
    assert len(body) <= 20 * 65536
    cdn_b = state(b).cdn
    assert cdn_b.stats.aborted == 1 and not await cdn_b.store.has(cid)


async def test_no_valid_first_chunk_is_a_clean_502(net, tmp_path, curl):
    _a, b, e, cid, _data = await start(net, tmp_path, ("bad-chunk", 0), honest=False)
    status, _h, body, rc = await curl(b, f"/cdn/{cid}")
    assert (status, rc) == (502, 0) and b"no holder supplied a valid copy" in body
    cdn_b = state(b).cdn
    assert cdn_b.is_bad(e.node_id) and cdn_b.stats.bytes_served == 0


async def test_an_honest_but_flaky_holder_is_retried(net, tmp_path, curl):
    _a, b, e, cid, data = await start(net, tmp_path, ("flaky", 0), honest=False)
    status, _h, body, rc = await curl(b, f"/cdn/{cid}")
    assert (status, rc) == (200, 0) and body == data
    assert not state(b).cdn.is_bad(e.node_id)
