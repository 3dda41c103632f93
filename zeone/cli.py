"""The ``zeone`` command.

click, so that plugins add subcommands through ``zeone_register_commands`` the way datasette and
llm plugins do. Installed plugins are discovered once at start-up; a plugin that fails to import or
to register its commands loses its commands (with a warning naming it) and the rest of the CLI
works; ``zeone plugins`` lists broken plugins with the reason, and enabling one is a clear error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import trio
from rich.console import Console
from rich.table import Table

from zeone import __version__
from zeone.config import Config, find_config_file, load_config
from zeone.errors import ApiUnavailable, ZeoneError
from zeone.logs import setup_logging
from zeone.plugins import Catalog, plugin_table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("zeone.cli")

FORCED_EXIT_GRACE = 5.0


def split_names(values: Sequence[str] | str | None) -> list[str]:
    """``--enable a,b --enable c`` -> ["a", "b", "c"]."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@attrs.define
class CliState:
    """What the root command's options decided, shared with subcommands through ``ctx.obj``."""

    catalog: Catalog
    config_path: str | None = None
    enable: list[str] | None = None
    log_level: str | None = None

    def load_config(self, extra: dict[str, tuple[Any, str]] | None = None) -> Config:
        overrides: dict[str, Any] = {}
        labels: dict[str, str] = {}
        if self.enable is not None:
            overrides["plugins.enable"] = self.enable
            labels["plugins.enable"] = "flag --enable"
        if self.log_level:
            overrides["node.log_level"] = self.log_level
            labels["node.log_level"] = "flag --log-level"
        for key, (value, label) in (extra or {}).items():
            overrides[key] = value
            labels[key] = label
        path = find_config_file(self.config_path, os.environ)
        return load_config(
            path,
            overrides=overrides,
            override_source=labels,
            plugin_schemas=self.catalog.schemas,
        )

    def client(self) -> Any:
        """An :class:`~zeone.client.ApiClient` for the node this config describes."""
        from zeone.client import ApiClient

        return ApiClient.from_config(self.load_config())


class ZeoneGroup(click.Group):
    """Turns expected errors into one clear line on stderr and the error's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZeoneError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            ctx.exit(exc.exit_code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_rows(title: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group(
    cls=ZeoneGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", "-V", prog_name="zeone")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $ZEONE_CONFIG, ./zeone.toml, ~/.zeone/zeone.toml).",
)
@click.option(
    "--enable",
    multiple=True,
    metavar="PLUGINS",
    help="Comma-separated plugins to run (replaces [plugins] enable).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity."
)
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, enable: tuple[str, ...], log_level: str | None
) -> None:
    """ZEONE: a plugin-based peer-to-peer node.

    With no command, runs a node in the foreground (same as `zeone run`).
    """
    if not isinstance(ctx.obj, CliState):
        ctx.obj = CliState(Catalog.discover())
    state: CliState = ctx.obj
    state.config_path = config_path
    state.enable = split_names(enable) if enable else None
    state.log_level = log_level
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


# -- run ------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--listen", multiple=True, help="Listen address, e.g. tcp://0.0.0.0:4001 (repeatable)."
)
@click.option("--bootstrap", multiple=True, help="Seed peer as <node id>@<address> (repeatable).")
@click.option("--api-bind", help="Local API host:port.")
@click.pass_obj
def run(
    state: CliState,
    listen: tuple[str, ...] = (),
    bootstrap: tuple[str, ...] = (),
    api_bind: str | None = None,
) -> None:
    """Run a node in the foreground until Ctrl-C or SIGTERM."""
    from zeone.node import Node

    extra: dict[str, tuple[Any, str]] = {}
    if listen:
        extra["network.listen"] = (list(listen), "flag --listen")
    if bootstrap:
        extra["network.bootstrap"] = (list(bootstrap), "flag --bootstrap")
    if api_bind:
        extra["api.bind"] = (api_bind, "flag --api-bind")
    config = state.load_config(extra)
    setup_logging(config.node.log_level, config.node.log_format)
    node = Node(config, catalog=state.catalog, handle_signals=True)

    failure: list[ZeoneError] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_arm_watchdog, node, config.node.shutdown_timeout)
            try:
                await node.run()
            except ZeoneError as exc:  # raised here it would reach the user as an ExceptionGroup
                failure.append(exc)
            nursery.cancel_scope.cancel()

    trio.run(main)
    if failure:
        raise failure[0]


async def _arm_watchdog(node: Any, grace: float) -> None:
    """Bound shutdown at the process level: a service stuck in a shielded section can't hang us."""
    await node.stopping.wait()
    timer = threading.Timer(grace + FORCED_EXIT_GRACE, _forced_exit)
    timer.daemon = True
    timer.start()


def _forced_exit() -> None:
    log.error("shutdown took too long; exiting")
    logging.shutdown()
    os._exit(70)


# -- init / config ---------------------------------------------------------------------------


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("~/.zeone"),
    show_default=True,
    help="Node directory: config, key and state go here.",
)
@click.option(
    "--role",
    type=click.Choice(["seed", "full", "light", "mobile"]),
    default="full",
    show_default=True,
)
@click.option("--listen", multiple=True, help="Listen address (repeatable).")
@click.option("--api-bind", help="Local API host:port.")
@click.option(
    "--force", is_flag=True, help="Rewrite an existing config (the key is never replaced)."
)
@click.pass_obj
def init(
    state: CliState,
    directory: Path,
    role: str,
    listen: tuple[str, ...],
    api_bind: str | None,
    force: bool,
) -> None:
    """Create a node directory: a complete zeone.toml and the node's identity."""
    from zeone.initdir import init_node_dir

    settings: dict[str, Any] = {}
    if listen:
        settings["network.listen"] = list(listen)
    if api_bind:
        settings["api.bind"] = api_bind
    if state.enable:
        state.catalog.resolve(state.enable)  # unknown or broken plugins: a clear error now
        settings["plugins.enable"] = state.enable
    result = init_node_dir(
        directory.expanduser(), role=role, catalog=state.catalog, settings=settings, force=force
    )
    console.print(f"wrote [bold]{result.config_path}[/]")
    verb = "created" if result.created_key else "kept existing"
    key_file = result.config_path.parent / "node.key"
    console.print(f"{verb} identity [bold]{result.identity.node_id}[/] in {key_file}")
    console.print(f"run it with: zeone --config {result.config_path} run")


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@json_option
@click.pass_obj
def config_show(state: CliState, as_json: bool) -> None:
    """Print the effective config and where each value came from."""
    cfg = state.load_config()
    rows = []
    for key, value in _flatten(cfg.to_dict()):
        rows.append({"key": key, "value": value, "source": cfg.sources.get(key, "default")})
    if as_json:
        print_json({"file": str(cfg.path) if cfg.path else None, "values": rows})
        return
    console.print(f"config file: {cfg.path or '(none: built-in defaults)'}")
    table = Table(title_justify="left")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["key"], json.dumps(row["value"]), row["source"])
    console.print(table)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, dotted))
        else:
            out.append((dotted, value))
    return out


# -- commands that talk to the running node ---------------------------------------------------


@cli.command()
@json_option
@click.pass_obj
def status(state: CliState, as_json: bool) -> None:
    """Show the running node's status."""
    data = state.client().get_json("/status")
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False, title="node", title_justify="left")
    for key in ("node_id", "role", "version", "api_version", "uptime", "pid", "data_dir"):
        table.add_row(key.replace("_", " "), str(data.get(key)))
    table.add_row("plugins", ", ".join(data.get("plugins", [])) or "none")
    table.add_row("protocols", ", ".join(data.get("protocols", [])) or "none")
    console.print(table)
    print_rows(
        "services",
        data.get("services", []),
        ["plugin", "service", "state", "restarts", "last_error"],
    )
    for name, section in (data.get("sections") or {}).items():
        if section and name != "core":
            sub = Table(show_header=False, title=name, title_justify="left")
            for key, value in section.items():
                sub.add_row(str(key), _cell(value))
            console.print(sub)


@cli.command()
@json_option
@click.pass_obj
def peers(state: CliState, as_json: bool) -> None:
    """List the running node's connected peers."""
    data = state.client().get_json("/peers")
    if as_json:
        print_json(data)
        return
    rows = data.get("peers", [])
    if not rows:
        console.print("no connected peers")
        return
    now = time.time()
    for row in rows:
        row["age"] = _age(now - row["since"])
        row["requests"] = f"{row['requests_in']} in / {row['requests_out']} out"
    print_rows("peers", rows, ["node_id", "address", "direction", "rtt_ms", "age", "requests"])


@cli.command()
@json_option
@click.pass_obj
def plugins(state: CliState, as_json: bool) -> None:
    """List plugins: the running node's, or the installed ones if no node runs."""
    source = "running node"
    try:
        rows = state.client().get_json("/plugins")["plugins"]
    except ApiUnavailable as exc:
        source = "installed; no running node"
        log.debug("no running node: %s", exc)
        rows = plugin_table(state.catalog)
    if as_json:
        print_json({"source": source, "plugins": rows})
        return
    columns = ["name", "version", "kind", "status", "description"]
    if rows and "enabled" in rows[0]:
        columns.insert(3, "enabled")
    print_rows(f"plugins ({source})", rows, columns)
    for row in rows:
        if row["status"] != "ok":
            err_console.print(
                f"[red]plugin {row['name']!r} is broken:[/] {row['error']}", highlight=False
            )


@cli.command()
@click.argument("peer")
@click.option("--count", "-c", default=1, show_default=True, type=click.IntRange(1, 1000))
@json_option
@click.pass_obj
def ping(state: CliState, peer: str, count: int, as_json: bool) -> None:
    """Ping PEER (a node id, or <node id>@<address>) through the running node."""
    client = state.client()
    results = []
    for _ in range(count):
        answer = client.post_json("/peers/ping", {"peer": peer})
        results.append(answer)
        if not as_json:
            console.print(f"{answer['node_id'][:8]}: rtt {answer['rtt_ms']:.2f} ms")
    if as_json:
        print_json(results if count > 1 else results[0])


@cli.command()
@click.argument("peer")
@json_option
@click.pass_obj
def connect(state: CliState, peer: str, as_json: bool) -> None:
    """Connect the running node to PEER (<node id>@<address>, or an address to learn its id)."""
    answer = state.client().post_json("/peers/connect", {"peer": peer})
    if as_json:
        print_json(answer)
    else:
        console.print(f"connected to {answer['node_id']} at {answer['address']}")


@cli.group()
def dht() -> None:
    """Use the running node's DHT: records, providers, nodes."""


@dht.command("put")
@click.argument("name")
@click.argument("value")
@click.option("--ttl", default=86400, show_default=True, type=click.IntRange(1, 7 * 86400))
@json_option
@click.pass_obj
def dht_put(state: CliState, name: str, value: str, ttl: int, as_json: bool) -> None:
    """Publish VALUE as kv:<this node>/NAME (only this node can update it)."""
    answer = state.client().post_json("/dht/records", {"name": name, "value": value, "ttl": ttl})
    if as_json:
        print_json(answer)
    else:
        console.print(f"stored {answer['key']} on {answer['acks']} nodes{_pending(answer)}")


@dht.command("get")
@click.argument("key")
@json_option
@click.pass_obj
def dht_get(state: CliState, key: str, as_json: bool) -> None:
    """Look up KEY (e.g. kv:<node id>/greeting, service:vpn_exit)."""
    from urllib.parse import quote

    rows = state.client().get_json(f"/dht/records?key={quote(key)}")["records"]
    if as_json:
        print_json(rows)
    elif not rows:
        err_console.print(f"no record for {key}")
        sys.exit(1)
    else:
        print_rows(key, rows, ["value", "publisher", "seq", "ttl"])


@dht.command("provide")
@click.argument("key")
@json_option
@click.pass_obj
def dht_provide(state: CliState, key: str, as_json: bool) -> None:
    """Announce this node as a provider of KEY (service:... or provider:...)."""
    answer = state.client().post_json("/dht/providers", {"key": key})
    if as_json:
        print_json(answer)
    else:
        stored = f"stored on {answer['acks']} nodes{_pending(answer)}"
        console.print(f"providing {answer['key']} ({stored})")


@dht.command("providers")
@click.argument("key")
@json_option
@click.pass_obj
def dht_providers(state: CliState, key: str, as_json: bool) -> None:
    """Nodes that provide KEY."""
    from urllib.parse import quote

    rows = state.client().get_json(f"/dht/providers?key={quote(key)}")["providers"]
    if as_json:
        print_json(rows)
    else:
        print_rows(f"providers of {key}", rows, ["node_id", "addresses"])


@dht.command("find-node")
@click.argument("node_id")
@json_option
@click.pass_obj
def dht_find_node(state: CliState, node_id: str, as_json: bool) -> None:
    """The nodes closest to NODE_ID, found by an iterative lookup."""
    rows = state.client().get_json(f"/dht/nodes?id={node_id}")["nodes"]
    if as_json:
        print_json(rows)
    else:
        print_rows(f"closest to {node_id[:8]}", rows, ["node_id", "addresses", "distance_bits"])


@dht.command("stats")
@json_option
@click.pass_obj
def dht_stats(state: CliState, as_json: bool) -> None:
    """Routing table, store and lookup counters."""
    data = state.client().get_json("/dht")
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False, title="dht", title_justify="left")
    for section in ("routing", "store", "lookups", "handled"):
        for key, value in (data.get(section) or {}).items():
            table.add_row(f"{section}.{key}", _cell(value))
    table.add_row("role", str(data.get("role")))
    console.print(table)


@cli.group()
def sim() -> None:
    """Simulate large networks in one process (virtual clock, real protocol code)."""


@sim.command("dht")
@click.option("--nodes", "-n", default=1000, show_default=True, type=click.IntRange(2, 100_000))
@click.option(
    "--churn",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 0.9),
    help="Fraction of nodes that fail at once after the healthy phase.",
)
@click.option(
    "--adversarial",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 0.9),
    help="Fraction of nodes returning nothing, garbage or colluding.",
)
@click.option(
    "--disjoint",
    default=1,
    show_default=True,
    type=click.IntRange(1, 8),
    help="S/Kademlia disjoint lookup paths.",
)
@click.option("--lookups", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--values", default=200, show_default=True, type=click.IntRange(0, 100_000))
@click.option(
    "--latency",
    default=0.025,
    show_default=True,
    type=click.FloatRange(0, 10),
    help="One-way latency between nodes, seconds (virtual).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
def sim_dht(nodes: int, churn: float, adversarial: float, disjoint: int, lookups: int,
            values: int, latency: float, seed: int, as_json: bool) -> None:  # fmt: skip
    """Kademlia lookups and retrievals at scale, before and after churn or adversaries."""
    from zeone.sim import SimSettings, simulate

    result = simulate(
        SimSettings(
            nodes=nodes,
            churn=churn,
            adversarial=adversarial,
            disjoint_paths=disjoint,
            lookups=lookups,
            values=values,
            latency=latency,
            seed=seed,
        )
    )
    if as_json:
        print_json(result)
        return
    table = Table(title=f"DHT simulation: {nodes} nodes", title_justify="left")
    table.add_column("metric")
    for phase in result["phases"]:
        table.add_column(phase)
    names = {
        "lookup_success": ("lookups reaching the closest honest node", "{:.1%}"),
        "values_retrievable": ("stored values retrievable", "{:.1%}"),
        "hops_p50": ("hops p50", "{:.0f}"),
        "hops_p95": ("hops p95", "{:.0f}"),
        "hops_p99": ("hops p99", "{:.0f}"),
        "latency_p50_ms": ("lookup latency p50 (ms)", "{:.0f}"),
        "latency_p95_ms": ("lookup latency p95 (ms)", "{:.0f}"),
        "latency_p99_ms": ("lookup latency p99 (ms)", "{:.0f}"),
    }
    for key, (label, fmt) in names.items():
        table.add_row(label, *(fmt.format(p[key]) for p in result["phases"].values()))
    console.print(table)
    console.print(
        f"churn {churn:.0%}, adversarial {adversarial:.0%}, disjoint paths {disjoint}; "
        f"built in {result['build_seconds']} s, {result['memory_per_node_kib']} KiB per node, "
        f"stores reached {result['store_acks_mean']:.1f} nodes on average, "
        f"{result['rpcs']} RPCs, {result['cpu_seconds_lookups']} s CPU for the lookups"
    )


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("packages", nargs=-1, required=True)
@click.option("--upgrade", "-U", is_flag=True, help="Upgrade the packages if installed.")
@click.option("--editable", "-e", is_flag=True, help="Install a local directory in editable mode.")
def install(packages: tuple[str, ...], upgrade: bool, editable: bool) -> None:
    """Install plugins (from PyPI or a directory) into the environment zeone runs in."""
    args = ["install", *(["--upgrade"] if upgrade else [])]
    for package in packages:
        args += ["-e", package] if editable else [package]
    _pip(args)


@cli.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation.")
def uninstall(packages: tuple[str, ...], yes: bool) -> None:
    """Uninstall plugins from the environment zeone runs in."""
    _pip(["uninstall", *packages, *(["--yes"] if yes else [])])


def _pip(args: list[str]) -> None:
    """Run pip of *this* interpreter, so plugins land where zeone looks for them."""
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        raise ZeoneError(
            f"pip is not available in {sys.prefix}; install plugins with your environment's "
            f"tool instead (for a uv project: `uv pip install --python {sys.executable} ...`)"
        )
    result = subprocess.run([sys.executable, "-m", "pip", *args], check=False)
    if result.returncode != 0:
        raise ZeoneError(f"pip {args[0]} failed (exit code {result.returncode})")


# -- devnet --------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--nodes",
    "-n",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="How many nodes.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("devnet"),
    show_default=True,
    help="Where the node directories go.",
)
@click.option(
    "--base-port",
    default=4100,
    show_default=True,
    type=click.IntRange(1024, 65000),
    help="First node's P2P port.",
)
@click.option(
    "--api-base-port",
    default=8800,
    show_default=True,
    type=click.IntRange(1024, 65000),
    help="First node's API port.",
)
@click.option(
    "--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C)."
)
@click.option("--fresh", is_flag=True, help="Delete the devnet directory first.")
@click.pass_obj
def devnet(
    state: CliState,
    nodes: int,
    directory: Path,
    base_port: int,
    api_base_port: int,
    duration: float | None,
    fresh: bool,
) -> None:
    """Start a local network of real node processes on loopback and watch it.

    Every installed plugin is enabled unless --enable says otherwise.
    """
    from zeone.devnet import Devnet

    setup_logging(state.log_level or "info")
    net = Devnet(
        directory=directory.absolute(),
        nodes=nodes,
        enable=state.enable if state.enable is not None else state.catalog.healthy_plugins(),
        base_port=base_port,
        api_base_port=api_base_port,
        catalog=state.catalog,
    )
    if fresh:
        net.wipe()
    net.prepare()
    code = trio.run(net.run, duration)
    sys.exit(code)


# -- plugin subcommands --------------------------------------------------------------------------


def add_plugin_commands(
    group: click.Group, catalog: Catalog, report: Callable[[str], None]
) -> None:
    """Let each healthy installed plugin add subcommands; report and skip those that fail."""
    for name, plugin in sorted(catalog.plugins.items()):
        if not plugin.ok:
            continue
        hook = getattr(plugin.obj, "zeone_register_commands", None)
        if hook is None:
            continue
        try:
            hook(group)
        except Exception as exc:
            report(f"plugin {name!r} failed to add its commands: {type(exc).__name__}: {exc}")


def build_cli() -> tuple[click.Group, Catalog]:
    catalog = Catalog.discover()

    def report(message: str) -> None:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False)

    add_plugin_commands(cli, catalog, report)
    return cli, catalog


def main(argv: Sequence[str] | None = None) -> None:
    group, catalog = build_cli()
    group.main(args=argv, prog_name="zeone", obj=CliState(catalog))


def _pending(answer: dict[str, Any]) -> str:
    pending = answer.get("pending", 0)
    return f", {pending} more in progress" if pending else ""
