"""Real node processes on loopback, driven through `zeone store ...` exactly as a user would."""

from __future__ import annotations

import os

import pytest

from zeone.testing import NodeProcesses, wait_for

# A small code so five nodes can hold and repair it.
SMALL_CODE = {
    "k": 2,
    "m": 1,
    "repair_threshold": 2,
    "stripe_size": 65536,
    "audit_failures": 1,
    "request_timeout": 5.0,
}


@pytest.fixture
def nodes(zeone_processes: NodeProcesses):
    return zeone_processes.make(5, enable=["storage"], plugins={"storage": SMALL_CODE})


def test_store_put_get_status_and_repair_through_the_cli(nodes, tmp_path) -> None:
    seed = nodes[0].start()
    entry = f"{seed['node_id']}@{seed['listen'][0]}"
    infos = [seed] + [node.start("--bootstrap", entry) for node in nodes[1:]]
    for node in nodes:
        api = node.client()
        wait_for(lambda api=api: len(api.get_json("/peers")["peers"]) == 4, "a full mesh")

    data = os.urandom(300_000)
    source = tmp_path / "photo.bin"
    source.write_bytes(data)
    put = nodes[0].json("store", "put", str(source))
    assert put["stripes"] == 5 and put["encrypted"] and put["nodes"] >= 3
    capability = put["id"]
    cid = put["cid"]

    # another process fetches it with the capability; the plain output shows the size
    out = tmp_path / "copy.bin"
    got = nodes[4].cli("store", "get", capability, "-o", str(out))
    assert out.read_bytes() == data and "300000 bytes" in got.stdout
    listed = nodes[0].json("store", "ls")
    assert [(f["cid"], f["name"], f["size"]) for f in listed] == [(cid, "photo.bin", 300_000)]
    status = nodes[4].json("store", "status", cid)
    assert status["state"] == "healthy" and status["alive_per_stripe"] == [3] * 5

    # stop a holder: the publisher's audit notices and the fragments are regenerated elsewhere
    holder_ids = {
        p for p in (i["node_id"] for i in infos[1:])
        if p not in status["silent_holders"]
    }  # fmt: skip
    victim = next(
        n for n, info in zip(nodes[1:], infos[1:], strict=True) if info["node_id"] in holder_ids
        and (n.directory / "storage" / "fragments.sqlite3").exists()
        and n.client().get_json("/status")["sections"]["storage"]["fragments_held"] > 0
    )  # fmt: skip
    assert victim.stop() == 0
    audit = nodes[0].json("store", "audit")
    assert audit["audit"]["unreachable"] == 1 and audit["repair"]["unrecoverable"] == 0
    assert audit["repair"]["fragments"] > 0
    publisher = nodes[0].client()
    healed = wait_for(
        lambda: (s := publisher.get_json(f"/storage/status/{cid}"))["state"] == "healthy" and s,
        "the file to be healthy again",
    )
    assert healed["alive_per_stripe"] == [3] * 5
    out2 = tmp_path / "again.bin"
    nodes[3].cli("store", "get", capability, "-o", str(out2))
    assert out2.read_bytes() == data

    # bad input is a clear error, not a traceback
    api = nodes[0].client()
    with pytest.raises(Exception, match="absolute path"):
        api.post_json("/storage/put", {"path": "relative.bin"})
    with pytest.raises(Exception, match="not a readable regular file"):
        api.post_json("/storage/put", {"path": str(tmp_path)})
    with pytest.raises(Exception, match="no such job"):
        api.get_json("/storage/jobs/nope")
    bad = nodes[0].cli("store", "get", "not-an-id", check=False)
    assert bad.returncode != 0 and "bad file id" in bad.stderr and "Traceback" not in bad.stderr
    for node in nodes:
        if node is not victim:
            assert node.stop() == 0
