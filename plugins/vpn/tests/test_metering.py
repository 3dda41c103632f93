"""Metering: a settlement-style usage sink, the /vpn/status route, /metrics, node status."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio
from vpn_helpers import SMALL, curl, drained, firehose, socks_connect, socks_url, start_vpn
from zeone_vpn.metering import Meter, Usage, UsageSink, register_usage_sink
from zeone_vpn.state import state

from zeone.api.auth import read_token
from zeone.testing import open_network


@attrs.define
class Ledger:
    """What a settlement plugin would do: keep every record, charge per peer."""

    records: list[Usage] = attrs.Factory(list)

    def record_usage(self, usage: Usage) -> None:
        self.records.append(usage)

    def charged(self, peer) -> int:
        return sum(r.sent + r.received for r in self.records if r.peer == peer)


async def test_usage_sinks_see_every_byte_once(http_server, nursery):
    written = [0]
    port = await nursery.start(firehose, written)
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net, exit_settings={"plugins.vpn.usage_interval": 0.05})
        at_entry, at_exit = Ledger(), Ledger()
        assert isinstance(at_entry, UsageSink)
        register_usage_sink(entry, at_entry)
        register_usage_sink(exit, at_exit)
        for _ in range(2):
            result = await curl("--socks5-hostname", socks_url(entry), http_server.url("small.bin"))
            assert result.returncode == 0, result.stderr
        # a long flow gets interim records while it runs
        client = await socks_connect(entry, "127.0.0.1", port)
        async with client:
            with trio.fail_after(20):
                while not any(not r.final and r.sent for r in at_exit.records):
                    await client.receive_some()
        await drained(entry, exit)
        (row,) = state(exit).meter.peer_rows()
        assert at_exit.charged(entry.node_id) == row["sent"] + row["received"]
        assert sum(r.sent for r in at_exit.records) == row["sent"] > 2 * SMALL
        (row,) = state(entry).meter.peer_rows()
        assert at_entry.charged(exit.node_id) == row["sent"] + row["received"]
        finals = [r for r in at_exit.records if r.final]
        assert len(finals) == 3 and {r.role for r in finals} == {"exit"}
        assert len({r.flow_id for r in finals}) == 3
        assert all(r.peer == entry.node_id for r in at_exit.records)


def test_a_failing_sink_does_not_break_the_others():
    from zeone.identity import NodeId

    meter, ledger = Meter(), Ledger()

    class Broken:
        def record_usage(self, usage: Usage) -> None:
            raise RuntimeError("boom")

    meter.add_sink(Broken())
    meter.add_sink(ledger)
    flow = meter.open(NodeId(bytes(20)), "exit", "tcp", "x:1")
    flow.add_sent(10)
    meter.close(flow)
    assert [(r.sent, r.final) for r in ledger.records] == [(10, True)]
    with pytest.raises(TypeError):
        meter.add_sink(object())  # type: ignore[arg-type]


async def test_status_route_metrics_and_node_status(http_server):
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net, api=True)
        result = await curl("--socks5-hostname", socks_url(entry), http_server.url("small.bin"))
        assert result.returncode == 0
        await drained(entry, exit)
        token = read_token(entry.config.token_file)
        async with httpx.AsyncClient(
            base_url=entry.api_url, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            status = (await api.get("/vpn/status")).json()
            metrics = (await api.get("/metrics")).text
        assert status["entry"]["socks"] == socks_url(entry)
        assert status["exit"] is None
        (known,) = status["exits"]
        assert known["node_id"] == str(exit.node_id) and known["up"]
        assert status["bytes_received"] >= SMALL and status["flows"] == []
        (peer,) = status["peers"]
        assert peer["peer"] == str(exit.node_id) and peer["flows"] == 1
        line = (f'zeone_vpn_bytes_total{{direction="received",peer="{exit.node_id}",'
                f'role="entry"}} {float(peer["received"])}')  # fmt: skip
        assert line in metrics
        assert 'zeone_vpn_flows_total{role="entry"} 1.0' in metrics
        section = entry.status()["sections"]["vpn"]
        assert section["roles"] == "entry" and section["exits_known"] == 1
        assert section["socks"] == socks_url(entry)
        assert exit.status()["sections"]["vpn"]["roles"] == "exit"


async def test_node_status_has_bytes_per_peer_and_direction(http_server):
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net)
        result = await curl("--socks5-hostname", socks_url(entry), http_server.url("small.bin"))
        assert result.returncode == 0
        await drained(entry, exit)
        (row,) = state(exit).meter.peer_rows()
        section = exit.status()["sections"]["vpn"]
        key = f"exit {str(entry.node_id)[:8]} sent/received"
        assert section[key] == f"{row['sent']}/{row['received']}"
