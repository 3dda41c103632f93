"""Plugin glue: `[plugins.mimic]` settings, transport registration, status and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import click
from attrs import validators as v

from zeone import PluginInfo, hookimpl
from zeone.config import parse_host_port
from zeone_mimic import __version__, auth
from zeone_mimic.fallback import FallbackTarget
from zeone_mimic.transport import MimicTransport


def _check_fallback(_instance: Any, _attribute: Any, value: str) -> None:
    if value and parse_host_port(value)[1] == 0:  # parse_host_port names the expected form
        raise ValueError(f"fallback {value!r}: port 0 cannot be connected to")


def _check_sni(_instance: Any, _attribute: Any, value: str) -> None:
    if not value.isascii() or not 0 < len(value) <= 253 or any(c in value for c in "/?#@ "):
        raise ValueError(f"sni must be an ASCII host name, got {value!r}")


@attrs.frozen
class MimicConfig:
    """``[plugins.mimic]``. Listening itself is ``[network] listen = ["mimic://0.0.0.0:443"]``."""

    #: The server's static x25519 key (32 raw bytes), relative to the node's data dir; created
    #: on first start. Its public half is the `pk=` of this node's mimic addresses.
    key_file: str = attrs.field(default="mimic.key", validator=v.min_len(1))
    #: Server name this node puts in its ClientHellos when an address has no `sni=`, and
    #: advertises in its own listen addresses: the cover site's name.
    sni: str = attrs.field(default="www.example.com", validator=_check_sni)
    #: host:port of the real HTTPS site unauthenticated connections are spliced to; empty
    #: closes them instead (weaker: the port then looks like nothing, not like a website).
    fallback: str = attrs.field(default="", validator=_check_fallback)
    #: Seconds a client has to send its ClientHello and finish the handshake.
    handshake_timeout: float = attrs.field(default=10.0, validator=[v.gt(0), v.le(120)])
    #: Accepted clock skew of client tokens, seconds; also how long hellos are remembered (x2).
    replay_window: float = attrs.field(default=120.0, validator=[v.ge(5), v.le(3600)])
    #: Remembered hellos at most; when full, new clients go to the cover site until entries age.
    replay_capacity: int = attrs.field(default=1_000_000, validator=[v.ge(1000)])
    #: Connections at once still unauthenticated or spliced to the cover site; more are closed.
    max_pending: int = attrs.field(default=1024, validator=[v.ge(1), v.le(1_000_000)])
    #: Copy the cover site's ServerHello choices and encrypted record sizes (re-learned every
    #: `profile_refresh` seconds) instead of a built-in nginx-like default.
    learn_profile: bool = True
    profile_refresh: float = attrs.field(default=3600.0, validator=[v.ge(60)])


def fallback_target(text: str) -> FallbackTarget | None:
    if not text:
        return None
    host, port = parse_host_port(text)
    return FallbackTarget(host, port)


def key_path(node: Any, config: MimicConfig) -> Path:
    return node.config.data_dir / Path(config.key_file).expanduser()


def build_transport(node: Any) -> MimicTransport:
    config: MimicConfig = node.plugin_config("mimic")
    return MimicTransport(
        server_key=auth.ServerKey.load_or_create(key_path(node, config)),
        server_name=config.sni,
        fallback=fallback_target(config.fallback),
        handshake_timeout=config.handshake_timeout,
        replay=auth.ReplayFilter(config.replay_window, config.replay_capacity),
        max_pending=config.max_pending,
        learn_profile=config.learn_profile,
        profile_refresh=config.profile_refresh,
    )


def transport_of(node: Any) -> MimicTransport | None:
    return node.plugin_state.get("mimic")


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name="mimic",
        version=__version__,
        api="1.0",
        description="TLS 1.3 mimicry transport: Chrome ClientHello, cover-site fallback.",
        config=MimicConfig,
    )


@hookimpl
def zeone_register_transports(register: Any, node: Any) -> None:
    transport = build_transport(node)
    node.plugin_state["mimic"] = transport
    register(transport)


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any] | None:
    transport = transport_of(node)
    if transport is None:
        return None
    stats = transport.stats
    return {
        "public_key": transport.server_key.public_text,
        "sni": transport.server_name,
        "fallback": str(transport.fallback) if transport.fallback else None,
        "accepted": stats.accepted,
        "dialed": stats.dialed,
        "fallback_connections": stats.fallback,
        "handshake_failed": stats.handshake_failed,
        "refused_busy": stats.refused_busy,
        "profile": transport.profile.source,
        "fallback_reasons": dict(stats.reasons),
        "replay_entries": len(transport.replay),
    }


@hookimpl
def zeone_register_commands(cli: click.Group) -> None:
    from zeone.cli import CliState, print_json

    @cli.group()
    def mimic() -> None:
        """TLS-mimicry transport: server key and addresses."""

    @mimic.command()
    @click.option("--host", required=True, help="Public host name or IP to put in the address.")
    @click.option("--port", default=443, show_default=True, type=click.IntRange(1, 65535))
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def address(state: CliState, host: str, port: int, as_json: bool) -> None:
        """Print this node's server key and a mimic:// address peers can dial (creates the key)."""
        config = state.load_config()
        settings: MimicConfig = config.plugin_settings("mimic") or MimicConfig()
        path = config.data_dir / Path(settings.key_file).expanduser()
        key = auth.ServerKey.load_or_create(path)
        transport = MimicTransport(server_key=key, server_name=settings.sni)
        try:
            text = str(transport.address_for(host, port))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--host") from None
        if as_json:
            print_json({"public_key": key.public_text, "address": text, "key_file": str(path)})
        else:
            click.echo(f"key file:   {path}")
            click.echo(f"public key: {key.public_text}")
            click.echo(f"address:    {text}")


@hookimpl
def zeone_devnet_configure(index: int, count: int, settings: Any, port: Any) -> None:
    """Node 2 of a devnet of four or more is reachable over TLS mimicry only (it still dials out
    over TCP); with no cover site on a devnet, unauthenticated connections are just closed."""
    if count >= 4 and index == 2:
        settings["network.listen"] = [f"mimic://127.0.0.1:{port('mimic')}"]
