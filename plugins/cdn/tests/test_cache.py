"""The bounded cache: popularity-driven eviction, pinning, seed pinned sets, replication."""

from __future__ import annotations

import json
import os

import trio
from zeone_cdn.plugin import state
from zeone_cdn.popularity import DAY, Popularity, score

from zeone.content import ContentId, find_holders


def test_score_follows_rate_audience_and_freshness():
    assert score(100, 50, 0) > score(10, 50, 0) > score(0, 50, 0)
    assert score(10, 50, 0) > score(10, 1, 0)
    assert score(10, 5, 0) > score(10, 5, DAY) > score(10, 5, 7 * DAY)
    assert score(0, 0, 365 * DAY) >= 0 and score(10**9, 10**9, 0) <= 10.0001


def test_request_rate_decays_with_the_half_life():
    pop = Popularity(half_life=3600)
    for i in range(100):
        pop.hit("x", f"r{i % 7}", now=1000.0)
    fresh = pop.rate_per_hour("x", 1000.0)
    assert abs(pop.rate_per_hour("x", 1000.0 + 3600) - fresh / 2) < 1e-6
    assert pop.audience("x", 1000.0) == 7 and pop.audience("x", 1000.0 + 2 * DAY) == 0
    assert pop.rate_per_hour("unknown", 0) == 0


async def wait_until(predicate, timeout: float = 20.0):
    with trio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - polling state of other nodes
            await trio.sleep(0.05)


def blob(tmp_path, name: str, size: int):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


async def test_eviction_keeps_the_popular_and_the_pinned(zeone_network, tmp_path, curl):
    node = await zeone_network.add_node(
        enable=["cdn"], api=True, settings={"plugins.cdn.max_bytes": 700_000}
    )
    cdn = state(node).cdn
    pinned = (await cdn.publish(blob(tmp_path, "x", 300_000))).content_id
    hot = (await cdn.publish(blob(tmp_path, "a", 150_000), pin=False)).content_id
    cold = (await cdn.publish(blob(tmp_path, "b", 150_000), pin=False)).content_id
    for _ in range(3):
        status, *_ = await curl(node, f"/cdn/{hot}")
        assert status == 200
    newest = (await cdn.publish(blob(tmp_path, "c", 150_000), pin=False)).content_id
    held = {item.cid for item in await cdn.store.list_contents()}
    assert held == {pinned, hot, newest}  # the unrequested one went
    assert await cdn.store.used_bytes() <= 700_000
    assert cdn.stats.evictions == 1 and cold not in cdn.announced
    # pinned content stays even when it alone overflows the cache
    big = (await cdn.publish(blob(tmp_path, "d", 500_000))).content_id
    held = {item.cid for item in await cdn.store.list_contents()}
    assert {pinned, big} <= held and hot not in held and newest not in held

    status, _h, body, _rc = await curl(node, "/cdn/api/contents")
    rows = json.loads(body)["contents"]
    assert {r["id"] for r in rows if r["pinned"]} == {str(pinned), str(big)}


async def test_content_larger_than_the_cache_streams_through(zeone_network, tmp_path, curl):
    a = await zeone_network.add_node(enable=["cdn"])
    b = await zeone_network.add_node(
        enable=["cdn"], api=True, settings={"plugins.cdn.max_bytes": 100_000}
    )
    await zeone_network.connect_all()
    path = blob(tmp_path, "big", 1_000_000)
    cid = (await state(a).cdn.publish(path)).content_id
    await state(a).cdn.announce(cid)
    status, _h, body, rc = await curl(b, f"/cdn/{cid}")
    assert (status, rc) == (200, 0) and body == path.read_bytes()
    assert await state(b).cdn.store.list_contents() == []


async def test_pin_fetches_and_seed_keeps_its_pinned_set(zeone_network, tmp_path, curl):
    a = await zeone_network.add_node(enable=["cdn"])
    b = await zeone_network.add_node(enable=["cdn"], api=True)
    await zeone_network.connect_all()
    cid = (await state(a).cdn.publish(blob(tmp_path, "p", 500_000))).content_id
    await state(a).cdn.announce(cid)

    status, _h, body, _rc = await curl(
        b, "/cdn/api/pin", "-X", "POST", "--data", json.dumps({"id": str(cid)})
    )
    assert status == 200 and json.loads(body)["pinned"] is True
    await wait_until(lambda: state(b).cdn.store.has(cid))
    assert [i.pinned for i in await state(b).cdn.store.list_contents()] == [True]
    status, _h, body, _rc = await curl(
        b, "/cdn/api/unpin", "-X", "POST", "--data", json.dumps({"id": str(cid)})
    )
    assert status == 200 and [i.pinned for i in await state(b).cdn.store.list_contents()] == [False]
    status, _h, body, _rc = await curl(b, "/cdn/api/pin", "-X", "POST", "--data", '{"id": "zz"}')
    assert status == 400

    seed = await zeone_network.add_node(
        enable=["cdn"],
        settings={"plugins.cdn.pinned": [str(cid)], "plugins.cdn.replicate_interval": 0.2},
    )
    await zeone_network.connect_all()
    await wait_until(lambda: state(seed).cdn.store.has(cid))
    assert [i.pinned for i in await state(seed).cdn.store.list_contents()] == [True]


async def test_hot_content_is_replicated_to_neighbours(zeone_network, tmp_path):
    settings = {
        "plugins.cdn.replicate_rate": 5.0,
        "plugins.cdn.replicate_interval": 0.2,
        "plugins.cdn.target_replicas": 3,
    }
    a, b, c = await zeone_network.add_nodes(3, enable=["cdn"], settings=settings)
    refuser = await zeone_network.add_node(
        enable=["cdn"], settings={**settings, "plugins.cdn.accept_replicas": False}
    )
    observer = await zeone_network.add_node(
        enable=["cdn"], settings={"plugins.cdn.accept_replicas": False}
    )
    await zeone_network.connect_all()
    cdn_a = state(a).cdn
    cid = (await cdn_a.publish(blob(tmp_path, "hot", 400_000))).content_id
    await cdn_a.announce(cid)
    for i in range(20):  # 20 requests from 5 clients: well above 5/hour
        cdn_a.hit(cid, f"http:client{i % 5}")

    await wait_until(lambda: state(b).cdn.store.has(cid))
    await wait_until(lambda: state(c).cdn.store.has(cid))
    assert not await state(refuser).cdn.store.has_manifest(cid)
    assert cdn_a.stats.replicas_requested >= 2

    async def three_holders():
        holders = await find_holders(observer, cid)
        return {h.contact.node_id for h in holders} >= {a.node_id, b.node_id, c.node_id}

    await wait_until(three_holders)
    # replicas are cached, not pinned: the replica holders may evict them later
    assert [i.pinned for i in await state(b).cdn.store.list_contents()] == [False]


async def test_replica_requests_are_checked(zeone_network):
    a, b = await zeone_network.add_nodes(2, enable=["cdn"])
    from zeone_cdn.replication import PROTOCOL

    from zeone.rpc import RemoteError

    for body in [None, {"op": "x"}, {"op": "replicate", "cid": b"short"}]:
        try:
            await a.rpc.request(b.node_id, PROTOCOL, body)
        except RemoteError as exc:
            assert exc.code == "bad-request"
        else:
            raise AssertionError(f"{body!r} was accepted")
    # an id nobody holds is accepted into the queue, then declined without harm
    answer = await a.rpc.request(
        b.node_id, PROTOCOL, {"op": "replicate", "cid": ContentId(bytes(32)).digest}
    )
    assert answer == {"accepted": True, "reason": ""}
    await wait_until(lambda: _declined(b))


async def _declined(node) -> bool:
    return state(node).cdn.stats.replicas_declined == 1
