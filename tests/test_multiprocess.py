"""Real node processes on loopback: they find each other, ping and exchange RPCs via the CLI."""

from __future__ import annotations

import pytest

from zeone.testing import NodeProcesses, wait_for


@pytest.mark.parametrize("count", [2, 5])
def test_nodes_mesh_ping_and_rpc_through_the_cli(
    zeone_processes: NodeProcesses, count: int
) -> None:
    nodes = zeone_processes.make(count, enable=["hello"])
    seed = nodes[0].start()
    seed_entry = f"{seed['node_id']}@{seed['listen'][0]}"
    infos = [seed] + [node.start("--bootstrap", seed_entry) for node in nodes[1:]]
    ids = [info["node_id"] for info in infos]

    for node, own in zip(nodes, ids, strict=True):
        expected = set(ids) - {own}
        wait_for(
            lambda node=node, expected=expected: (
                {p["node_id"] for p in node.json("peers")["peers"]} == expected
            ),
            f"{node.directory.name} to see every other node",
        )

    last = nodes[-1]
    pong = last.json("ping", ids[0])
    assert pong["node_id"] == ids[0] and pong["rtt_ms"] > 0
    answer = last.json("hello", "greet", ids[0])
    assert answer == {"greeting": f"hello, {ids[-1][:8]}", "node_id": ids[0]}
    greetings = nodes[0].json("hello", "greetings")
    assert [g["from"] for g in greetings] == [ids[-1]]

    # the DHT through the CLI: an owned value and a provider record, written and read on
    # different nodes
    put = last.json("dht", "put", "greeting", "hello world")
    assert put["key"] == f"kv:{ids[-1]}/greeting" and put["acks"] >= 1
    got = nodes[0].json("dht", "get", put["key"])
    assert [(r["value"], r["publisher"]) for r in got] == [("hello world", ids[-1])]
    assert nodes[0].json("dht", "provide", "service:demo")["acks"] >= 1
    providers = last.json("dht", "providers", "service:demo")
    assert [p["node_id"] for p in providers] == [ids[0]]
    missing_key = nodes[0].cli("dht", "get", "kv:nobody/nothing", check=False)
    assert missing_key.returncode == 1 and "no record" in missing_key.stderr

    # an unknown peer is a clear error, not a traceback
    missing = last.cli("ping", "0" * 40, check=False)
    assert missing.returncode == 1
    assert "no known address" in missing.stderr and "Traceback" not in missing.stderr

    for node in reversed(nodes):
        assert node.stop() == 0
        assert not (node.directory / "node.json").exists()
