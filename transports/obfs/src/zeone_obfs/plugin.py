"""The obfs transport plugin: hooks, configuration, and the `zeone obfs` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import click
from attrs import validators as v

from zeone import PluginInfo, hookimpl
from zeone.net.transport import parse_address
from zeone_obfs import __version__
from zeone_obfs.handshake import PaddingStyle, ReplayFilter
from zeone_obfs.state import load_or_create
from zeone_obfs.transport import SCHEME, ObfsTransport

NAME = "obfs"


@attrs.frozen
class ObfsConfig:
    """[plugins.obfs]; listen with `[network] listen = ["obfs://0.0.0.0:4100"]`."""

    #: 0: bursts padded to per-server lengths; 1: also split into segments sent 0-10 ms apart;
    #: 2: also random segment sizes. Published in the bridge line; clients mirror it.
    iat_mode: int = attrs.field(default=0, validator=v.in_((0, 1, 2)))
    #: How this node pads the handshakes it sends when dialing (see README, GFW heuristics).
    client_padding: Literal["uniform", "low-popcount"] = "uniform"
    #: The server's node id and private key, relative to the node's data_dir.
    state_file: str = attrs.field(default="obfs_state.json", validator=v.min_len(1))
    #: Probes are closed after a per-server delay drawn from this range (seconds).
    close_delay_min: float = attrs.field(default=15.0, validator=v.ge(0))
    close_delay_max: float = attrs.field(default=60.0, validator=v.ge(0))
    #: Put the cert in the advertised listen address (peers learn the bridge line). False keeps
    #: the server reachable only by those given the bridge line out of band.
    publish_cert: bool = True
    #: How many recent client MACs the replay filter keeps (each for three hours).
    replay_capacity: int = attrs.field(default=100_000, validator=v.ge(1))
    #: Connections that may wait in the obfs handshake at once (probes included).
    max_pending_handshakes: int = attrs.field(default=1024, validator=v.ge(1))

    def __attrs_post_init__(self) -> None:
        if self.close_delay_max < self.close_delay_min:
            raise ValueError("close_delay_max must be >= close_delay_min")


def state_path(config: Any, settings: ObfsConfig) -> Path:
    return config.data_dir / Path(settings.state_file).expanduser()


def make_transport(config: Any, settings: ObfsConfig) -> ObfsTransport:
    return ObfsTransport(
        keys=load_or_create(state_path(config, settings)),
        iat_mode=settings.iat_mode,
        padding=PaddingStyle(settings.client_padding),
        close_delay_min=settings.close_delay_min,
        close_delay_max=settings.close_delay_max,
        publish_cert=settings.publish_cert,
        replay=ReplayFilter(capacity=settings.replay_capacity),
        max_pending=settings.max_pending_handshakes,
    )


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        version=__version__,
        api="1.0",
        description="obfs:// transport: no fixed bytes on the wire, probe-resistant (obfs4-style)",
        config=ObfsConfig,
    )


@hookimpl
def zeone_register_transports(register: Any, node: Any) -> None:
    transport = make_transport(node.config, node.plugin_config(NAME))
    node.plugin_state[NAME] = transport
    register(transport)


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any] | None:
    transport = node.plugin_state.get(NAME)
    if transport is None:
        return None
    return {
        "handshakes_accepted": transport.accepted,
        "probes_rejected": transport.rejected,
        "handshakes_pending": transport.pending,
        "closed_when_flooded": transport.overflowed,
        "replay_filter_entries": len(transport.replay),
        "iat_mode": transport.iat_mode,
    }


def bridge_lines(config: Any, settings: ObfsConfig, host: str | None) -> list[dict[str, str]]:
    """The bridge line of each obfs listen address in `config`, host substituted if given."""
    transport = make_transport(config, settings)
    rows = []
    for text in config.network.listen:
        address = parse_address(text)
        if address.scheme != SCHEME:
            continue
        line = transport.bridge_address(host or address.host, address.port or 0)
        rows.append({"listen": text, "bridge_line": str(line)})
    return rows


@hookimpl
def zeone_register_commands(cli: click.Group) -> None:
    from zeone.cli import CliState, print_json, print_rows

    @cli.group(name=NAME)
    def obfs() -> None:
        """The obfs transport: bridge lines to hand out."""

    @obfs.command(name="bridge-line")
    @click.option("--host", help="Public host or IP to put in the line (default: the listen host).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def bridge_line(state: CliState, host: str | None, as_json: bool) -> None:
        """Print this node's obfs bridge line(s); creates the obfs state file if missing."""
        config = state.load_config()
        rows = bridge_lines(config, config.plugin_settings(NAME), host)
        if as_json:
            print_json(rows)
        elif not rows:
            raise click.ClickException(
                'no obfs listen address: add e.g. "obfs://0.0.0.0:4100" to [network] listen'
            )
        else:
            print_rows("obfs bridge lines", rows, ["listen", "bridge_line"])

    @obfs.command(name="gfw-check")
    @click.option(
        "--padding",
        type=click.Choice([style.value for style in PaddingStyle]),
        default=None,
        help="Client padding to test (default: [plugins.obfs] client_padding).",
    )
    @click.option("--count", type=click.IntRange(1, 100_000), default=1000, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def gfw_check(state: CliState, padding: str | None, count: int, as_json: bool) -> None:
        """Run the Wu et al. (2023) GFW rules on COUNT fresh client first packets."""
        from zeone_obfs.framing import MSS
        from zeone_obfs.gfw import evaluate
        from zeone_obfs.handshake import ClientHandshake, ServerKeys

        if padding is None:
            padding = state.load_config().plugin_settings(NAME).client_padding
        style = PaddingStyle(padding)
        server = ServerKeys.generate().identity
        packets = [ClientHandshake(server, padding=style).message[:MSS] for _ in range(count)]
        report = {"client_padding": style.value, **evaluate(packets)}
        if as_json:
            print_json(report)
        else:
            rows = [{"metric": key, "value": str(value)} for key, value in report.items()]
            print_rows("GFW fully-encrypted-traffic rules", rows, ["metric", "value"])


@hookimpl
def zeone_devnet_configure(index: int, count: int, settings: Any, port: Any) -> None:
    """Node 1 of a devnet of three or more is reachable over obfs only (it still dials out over
    TCP); probes are closed after a few seconds instead of 15-60 so a devnet stops quickly."""
    settings["plugins.obfs.close_delay_min"] = 2.0
    settings["plugins.obfs.close_delay_max"] = 5.0
    if count >= 3 and index == 1:
        settings["network.listen"] = [f"obfs://127.0.0.1:{port('obfs')}"]
