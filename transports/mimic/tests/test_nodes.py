"""Two real ZEONE nodes talking over mimic on loopback: discovered through the entry point."""

from __future__ import annotations

from zeone_mimic.plugin import transport_of

from zeone.net.transport import parse_address
from zeone.testing import open_network

RPC = "/zeone/mimic-test/1"


class EchoPlugin:
    """A tiny capability plugin so the test exercises RPC, not just ping."""

    __name__ = "mimic_echo"

    def zeone_plugin_info(self):
        from zeone import PluginInfo

        return PluginInfo(name="mimic_echo", version="1.0")

    def zeone_register_protocols(self, register, node) -> None:
        async def echo(request):
            return {"echo": request.payload, "over": "mimic"}

        register(RPC, echo)


async def test_two_nodes_ping_and_rpc_over_mimic(tmp_path) -> None:
    async with open_network(data_root=tmp_path, plugins=[EchoPlugin()]) as net:
        settings = {
            "network.listen": ["mimic://127.0.0.1:0"],
            "network.transports": ["mimic"],
            "plugins.mimic.sni": "www.example.org",
        }
        a = await net.add_node(enable=["mimic", "mimic_echo"], settings=settings)
        b = await net.add_node(enable=["mimic", "mimic_echo"], settings=settings)
        address = parse_address(b.network.listen_addresses[0])
        assert (
            address.scheme == "mimic"
            and "pk=" in address.path
            and "sni=www.example.org" in address.path
        )
        # Only mimic addresses are known: the memory listener of the test network is not used.
        a.network.book[b.node_id] = [str(address)]
        peer, _rtt = await a.rpc.ping(b.node_id)
        assert peer == b.node_id
        answer = await a.rpc.request(b.node_id, RPC, b"x" * 200_000, timeout=20)
        assert answer == {"echo": b"x" * 200_000, "over": "mimic"}
        assert a.peers()[0]["address"].startswith("mimic://")
        assert transport_of(a).stats.dialed == 1
        assert transport_of(b).stats.accepted == 1
        assert transport_of(b).stats.fallback == 0
        section = b.status()["sections"]["mimic"]
        assert section["accepted"] == 1 and section["profile"] == "default"
        assert section["public_key"] in str(address)


async def test_mixed_network_tcp_only_mimic_only_and_both(tmp_path) -> None:
    async with open_network(data_root=tmp_path) as net:
        tcp_only = await net.add_node(settings={"network.listen": ["tcp://127.0.0.1:0"]})
        mimic_only = await net.add_node(
            enable=["mimic"], settings={"network.listen": ["mimic://127.0.0.1:0"]}
        )
        both = await net.add_node(
            enable=["mimic"],
            settings={
                "network.listen": ["tcp://127.0.0.1:0", "mimic://127.0.0.1:0"],
                "network.transports": ["mimic", "tcp"],
            },
        )
        # The node with both transports reaches each of the others by its only transport.
        for peer in (tcp_only, mimic_only):
            both.network.book[peer.node_id] = list(peer.network.listen_addresses)
            assert (await both.rpc.ping(peer.node_id))[0] == peer.node_id
        schemes = {p["node_id"]: p["address"].partition("://")[0] for p in both.peers()}
        assert schemes == {str(tcp_only.node_id): "tcp", str(mimic_only.node_id): "mimic"}
        # The node without the plugin has no mimic transport at all: it only ever sees tcp.
        assert "mimic" not in tcp_only.transports and "mimic" in both.transports
