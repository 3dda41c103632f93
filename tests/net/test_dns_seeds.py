"""DNS seed lists (seed 004 section 8.1), served by a real DNS server on loopback."""

from __future__ import annotations

import dns.message
import dns.rdatatype
import dns.rrset
import pytest
import trio

from zeone.net.dns_seeds import make_resolver, resolve_seeds
from zeone.testing import make_config


async def serve_dns(records: dict[tuple[str, str], list[str]], *, task_status) -> None:
    """Answer (name, type) queries from ``records``; NXDOMAIN otherwise."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    task_status.started(sock.getsockname()[1])
    while True:
        data, peer = await sock.recvfrom(4096)
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        key = (question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
        if key in records:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 60, "IN", key[1], records[key])
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        await sock.sendto(response.to_wire(), peer)


async def test_txt_and_srv_seeds_are_read_and_bad_entries_skipped() -> None:
    node_id = "ab" * 20
    records = {
        ("seeds.zeone.test.", "TXT"): [
            f'"zeone={node_id}@tcp://127.0.0.1:4100"',
            '"zeone=not-an-entry"',
            '"unrelated text"',
        ],
        ("seeds.zeone.test.", "SRV"): ["0 0 4101 node1.zeone.test."],
    }
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_dns, records)
        seeds = await resolve_seeds(["seeds.zeone.test"], make_resolver(f"127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()
    assert [str(s) for s in seeds] == [
        f"{node_id}@tcp://127.0.0.1:4100",
        "tcp://node1.zeone.test:4101",
    ]


async def test_a_node_without_reachable_seeds_finds_them_in_dns(tmp_path) -> None:
    from zeone.identity import Identity
    from zeone.node import Node
    from zeone.plugins import Catalog

    catalog = Catalog.discover(entry_points=False)
    seed = Node(
        make_config(tmp_path / "seed", settings={"network.listen": ["tcp://127.0.0.1:0"]}),
        identity=Identity.generate(),
        catalog=catalog,
        write_runtime_file=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(seed.run)
        entry = f'"zeone={seed.node_id}@{seed.network.listen_addresses[0]}"'
        port = await nursery.start(serve_dns, {("seeds.zeone.test.", "TXT"): [entry]})
        settings = {
            "network.listen": ["tcp://127.0.0.1:0"],
            "network.bootstrap": [f"{'00' * 20}@tcp://127.0.0.1:9"],  # a dead seed
            "network.bootstrap_dns": ["seeds.zeone.test"],
            "network.dns_server": f"127.0.0.1:{port}",
        }
        newcomer = Node(
            make_config(tmp_path / "new", settings=settings),
            identity=Identity.generate(),
            catalog=catalog,
            write_runtime_file=False,
        )
        connected = trio.Event()
        newcomer.network.on_connected.append(
            lambda conn: connected.set() if conn.peer_id == seed.node_id else None
        )
        await nursery.start(newcomer.run)
        with trio.fail_after(20):
            await connected.wait()
        newcomer.stop()
        seed.stop()
        await newcomer.stopped.wait()
        await seed.stopped.wait()
        nursery.cancel_scope.cancel()  # the DNS server


def test_a_bad_dns_server_setting_is_a_config_error(tmp_path) -> None:
    from zeone.errors import ConfigError

    with pytest.raises(ConfigError, match="dns_server"):
        make_config(tmp_path, settings={"network.dns_server": "nowhere"})
