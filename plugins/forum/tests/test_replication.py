"""Multi-node replication over zeone.testing's in-memory network (real nodes, virtual clock)."""

import trio
from forum_helpers import FAST, wait_for
from zeone_forum import service
from zeone_forum.service import PROTOCOL, state, thread_key


async def test_post_reaches_every_node_by_push(zeone_network, autojump_clock):
    nodes = await zeone_network.add_nodes(5, enable=["forum"], settings=FAST)
    await zeone_network.connect_all()
    thread, post = state(nodes[0]).new_thread("Hello", "first **post**", tags=("p2p",))
    await wait_for(lambda: all(state(n).store.has(post.id) for n in nodes))
    reply = state(nodes[3]).reply(thread.id, "a reply")
    await wait_for(lambda: all(state(n).store.has(reply.id) for n in nodes))
    data = state(nodes[1]).store.thread(thread.id)
    assert [m["content"] for m in data["messages"]] == ["first **post**", "a reply"]
    # the signed thread metadata is findable by id in the DHT (forum:t/<id>)
    records = await nodes[4].dht.get(thread_key(thread.id))
    assert [r.value for r in records] == [thread.wire]


async def test_watermark_pull_and_reconciliation_move_only_the_difference(
    zeone_network, autojump_clock, monkeypatch
):
    monkeypatch.setattr(service, "MAX_REPLY_BYTES", 1500)  # every answer comes in pages
    a, b, c = await zeone_network.add_nodes(3, enable=["forum"], settings=FAST)
    forum_a, forum_b = state(a), state(b)
    thread, _ = forum_a.new_thread("Offline", "written while nobody listened")
    for i in range(30):
        forum_a.reply(thread.id, f"reply {i}")
    wires = forum_a.store.thread_wires(thread.id)
    assert len(wires) == 32
    # c never met a: first contact fetches the index, then popular threads whole (here: the
    # one thread, 32 records), then the rest of a's log without them...
    stats = await state(c).sync_with(a.node_id, reconcile=False)
    assert stats["pulled"] == 1 + 32 and state(c).store.counts()["posts"] == 31
    forum_a.reply(thread.id, "one more")
    assert (await state(c).sync_with(a.node_id, reconcile=False))["pulled"] == 1
    # ...and the next pull (watermark advanced) gets nothing
    assert (await state(c).sync_with(a.node_id, reconcile=False))["pulled"] == 0
    # b got most of a's records out of band and wrote its own: reconciliation moves exactly
    # the difference, both ways
    forum_b.store.ingest_many(wires[:25])
    only_b = [forum_b.reply(thread.id, f"b-only {i}") for i in range(3)]
    result = await forum_b.reconcile_with(a.node_id)
    assert result["fetched"] == 8 and result["pushed"] == 3
    assert all(forum_a.store.has(r.id) for r in only_b)
    assert forum_a.store.counts()["records"] == forum_b.store.counts()["records"] == 36
    again = await forum_b.reconcile_with(a.node_id)
    assert again["fetched"] == again["pushed"] == 0 and again["rounds"] == 1


async def test_availability_after_removing_30_percent(zeone_network, autojump_clock):
    nodes = await zeone_network.add_nodes(10, enable=["forum"], settings=FAST)
    await zeone_network.connect_all()
    ids = []
    for i, node in enumerate(nodes[:5]):
        thread, post = state(node).new_thread(f"t{i}", f"body {i}")
        ids += [thread.id, post.id]
    await wait_for(lambda: all(state(n).store.has(x) for n in nodes for x in ids))
    for node in nodes[:3]:  # the authors of three threads vanish
        await zeone_network.stop_node(node)
    survivors = nodes[3:]
    for x in ids:
        assert sum(state(n).store.has(x) for n in survivors) >= 5


async def test_holder_records_and_rereplication(zeone_network, autojump_clock):
    settings = {**FAST, "plugins.forum.replication_factor": 3}
    nodes = await zeone_network.add_nodes(4, enable=["forum"], settings=settings)
    a = nodes[0]
    forum_a = state(a)
    _thread, post = forum_a.new_thread("lonely", "only one holder")
    # nobody is connected, so nothing was pushed: a is the only holder
    for other in nodes[1:]:
        await a.network.connect(other.node_id)
    # maintenance counts holders in the DHT and pushes to peers that lack the thread
    report = await forum_a.maintain()
    assert report["under_replicated"] == 1
    await wait_for(lambda: sum(state(n).store.has(post.id) for n in nodes) >= 3)


async def test_protocol_rejects_bad_requests(zeone_network, autojump_clock):
    import pytest

    from zeone import RemoteError

    a, b = await zeone_network.add_nodes(2, enable=["forum"], settings=FAST)
    for body in [
        "nope",
        {"op": 5},
        {"op": "get", "ids": "x"},
        {"op": "recon", "msg": [[1]]},
        {"op": "since", "seq": -1},
        {"op": "push", "records": "x"},
        {"op": "zzz"},
    ]:
        with pytest.raises(RemoteError) as info:
            await a.rpc.request(b.node_id, PROTOCOL, body)
        assert info.value.code == "bad-request"
    answer = await a.rpc.request(b.node_id, PROTOCOL, {"op": "push", "records": [b"garbage"]})
    assert answer["accepted"] == 0 and answer["rejected"][0][0] == 0


async def test_light_node_keeps_metadata_and_fetches_content_on_demand(
    zeone_network, autojump_clock
):
    a = await zeone_network.add_node(enable=["forum"], settings=FAST)
    light = await zeone_network.add_node(
        enable=["forum"], settings={**FAST, "plugins.forum.role": "light"}
    )
    await zeone_network.connect_all()
    thread, post = state(a).new_thread("Big thread", "content a light node fetches lazily")
    await wait_for(lambda: state(light).store.thread_exists(thread.id))
    await trio.sleep(1)
    assert not state(light).store.has(post.id)  # metadata only
    assert await state(light).fetch_thread(thread.id)
    assert state(light).store.has(post.id)
    reply = state(a).reply(thread.id, "now pushed, because the light node holds the thread")
    await wait_for(lambda: state(light).store.has(reply.id))


async def test_a_vanished_holder_triggers_emergency_rereplication(zeone_network, autojump_clock):
    settings = {
        **FAST,
        "plugins.forum.replication_factor": 3,
        "plugins.forum.maintenance_interval": 1000.0,
    }
    a, b, c = await zeone_network.add_nodes(3, enable=["forum"], settings=settings)
    await zeone_network.connect_all()
    thread, post = state(a).new_thread("kept alive", "three holders")
    await wait_for(lambda: all(state(n).store.has(post.id) for n in (a, b, c)))
    for node in (a, b, c, a):  # each announces itself; a counts last
        await state(node).maintain()
    assert state(a).store.thread(thread.id)["holders"] == 3
    await zeone_network.stop_node(c)
    # well before the next periodic round (1000 s), a recounts without c and finds the thread
    # under-replicated; a fresh node that joins gets it pushed
    await wait_for(lambda: state(a).store.thread(thread.id)["holders"] == 2, timeout=100)
    d = await zeone_network.add_node(enable=["forum"], settings=settings)
    await a.network.connect(d.node_id)
    report = await state(a).maintain()
    assert report["under_replicated"] == 1
    await wait_for(lambda: state(d).store.has(post.id))
