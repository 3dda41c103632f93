"""`zeone devnet` with the VPN: a SOCKS port per node, the last node an exit."""

from __future__ import annotations

from pathlib import Path

from zeone.config import load_config
from zeone.devnet import Devnet
from zeone.plugins import Catalog


def test_devnet_nodes_get_their_own_socks_port_and_one_exit(tmp_path: Path) -> None:
    catalog = Catalog.discover()
    net = Devnet(
        directory=tmp_path / "net",
        nodes=3,
        enable=["vpn"],
        base_port=30000,
        api_base_port=31000,
        catalog=catalog,
    )
    net.prepare()
    configs = [
        load_config(m.config_path, environ={}, plugin_schemas=catalog.schemas).plugins.settings[
            "vpn"
        ]
        for m in net.members
    ]
    binds = [c.socks_bind for c in configs]
    assert len(set(binds)) == 3 and all(b.startswith("127.0.0.1:") for b in binds)
    assert [c.exit for c in configs] == [False, False, True]
    assert configs[2].policy[0] == "allow 127.0.0.1/32:*"
    assert configs[0].policy == ["allow *:*"]
