"""The `http` transport plugin: registers `ws` and `wss` (see zeone_http.transport)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import click

from zeone import PluginInfo, hookimpl
from zeone_http import __version__
from zeone_http.config import HttpConfig, load_or_create_secret_path, resolve_path
from zeone_http.server import ServerLimits
from zeone_http.site import Site
from zeone_http.transport import HttpSettings, WssTransport, WsTransport

NAME = "http"


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        version=__version__,
        api="1.0",
        description="ws:// and wss:// transports: WebSocket on a secret path, a website elsewhere",
        config=HttpConfig,
    )


def settings_for(config: HttpConfig, base_dir: Any, data_dir: Any) -> HttpSettings:
    """Resolve `[plugins.http]` against the config file's directory and the node's data dir."""
    site_dir = resolve_path(base_dir, config.site_dir)
    return HttpSettings(
        secret_path=(
            (lambda: config.secret_path)
            if config.secret_path
            else (lambda: load_or_create_secret_path(data_dir))
        ),
        site=Site(site_dir, config.server_header),
        limits=ServerLimits(
            header_timeout=config.header_timeout,
            keepalive_timeout=config.keepalive_timeout,
            max_header_bytes=config.max_header_bytes,
            max_connections=config.max_connections,
        ),
        public_address=config.public_address,
        host_header=config.host_header,
        origin=config.origin,
        user_agent=config.user_agent,
        server_header=config.server_header,
        tls_cert=resolve_path(base_dir, config.tls_cert),
        tls_key=resolve_path(base_dir, config.tls_key),
        tls_ca_file=resolve_path(base_dir, config.tls_ca_file),
        tls_verify=config.tls_verify,
    )


@hookimpl
def zeone_register_transports(register: Any, node: Any) -> None:
    config: HttpConfig = node.plugin_config(NAME)
    settings = settings_for(config, node.config.base_dir, node.config.data_dir)
    register(WsTransport(settings))
    register(WssTransport(settings))


@hookimpl
def zeone_register_commands(cli: click.Group) -> None:
    from zeone.cli import CliState

    @cli.group(name=NAME)
    def http() -> None:
        """HTTP/WebSocket transport (ws://, wss://)."""

    @http.command(name="secret-path")
    @click.pass_obj
    def secret_path(state: CliState) -> None:
        """Print the WebSocket secret path (generating it if needed), for the proxy config."""
        config = state.load_config()
        settings: HttpConfig = config.plugin_settings(NAME)
        click.echo(settings.secret_path or load_or_create_secret_path(config.data_dir))


@hookimpl
def zeone_devnet_configure(
    index: int, count: int, settings: MutableMapping[str, Any], port: Callable[[str], int]
) -> None:
    """Every node can dial ws/wss; in a devnet of 3+ the last node listens on ws:// only.

    That node is then reachable solely through the WebSocket transport (its cover site is at the
    same port: open it in a browser), which shows a mixed network at work.
    """
    transports = list(settings.get("network.transports", ["tcp"]))
    transports += [scheme for scheme in ("ws", "wss") if scheme not in transports]
    settings["network.transports"] = transports
    if count >= 3 and index == count - 1:
        settings["network.listen"] = [f"ws://127.0.0.1:{port('ws')}"]
