"""`zeone cdn ...`: publish, list, pin/unpin and status, through the running node's API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

PUBLISH_TIMEOUT = 24 * 3600.0


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def add_commands(cli: click.Group) -> None:
    from zeone.cli import CliState, json_option, print_json, print_rows

    @cli.group()
    def cdn() -> None:
        """Publish and serve verified content through the HTTP gateway."""

    @cdn.command()
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    @click.option("--name", help="Name stored in the manifest (default: the file name).")
    @click.option("--type", "media_type", help="Media type (default: guessed from the name).")
    @click.option("--chunk-size", type=int, help="Chunk size in bytes (default 256 KiB).")
    @click.option("--no-pin", is_flag=True, help="Let the cache evict it like fetched content.")
    @json_option
    @click.pass_obj
    def publish(
        state: CliState,
        path: Path,
        name: str | None,
        media_type: str | None,
        chunk_size: int | None,
        no_pin: bool,
        as_json: bool,
    ) -> None:
        """Import FILE or DIR into the node, announce it, print its id and gateway URL."""
        client = state.client()
        client.timeout = PUBLISH_TIMEOUT
        body: dict[str, Any] = {"path": str(path.resolve())}
        if name:
            body["name"] = name
        if media_type:
            body["media_type"] = media_type
        if chunk_size:
            body["chunk_size"] = chunk_size
        if no_pin:
            body["pin"] = False
        answer = client.post_json("/cdn/api/publish", body)
        if as_json:
            print_json(answer)
            return
        click.echo(answer["id"])
        click.echo(answer["url"] or "(the node serves no HTTP API)")

    @cdn.command(name="ls")
    @json_option
    @click.pass_obj
    def ls(state: CliState, as_json: bool) -> None:
        """Contents held by the node, most recently used first."""
        rows = state.client().get_json("/cdn/api/contents")["contents"]
        if as_json:
            print_json(rows)
            return
        for row in rows:
            row["size"] = _size(row["size"])
            row["stored"] = _size(row["stored"])
        print_rows(
            "cdn contents",
            rows,
            ["id", "size", "stored", "complete", "pinned", "rate_per_hour", "audience", "score"],
        )

    @cdn.command()
    @click.argument("content_id")
    @json_option
    @click.pass_obj
    def pin(state: CliState, content_id: str, as_json: bool) -> None:
        """Keep CONTENT_ID forever (fetching it first if it is not held)."""
        answer = state.client().post_json("/cdn/api/pin", {"id": content_id})
        print_json(answer) if as_json else click.echo(
            f"pinned {answer['id']}" + ("" if answer["complete"] else " (fetching)")
        )

    @cdn.command()
    @click.argument("content_id")
    @json_option
    @click.pass_obj
    def unpin(state: CliState, content_id: str, as_json: bool) -> None:
        """Let the cache evict CONTENT_ID again."""
        answer = state.client().post_json("/cdn/api/unpin", {"id": content_id})
        print_json(answer) if as_json else click.echo(f"unpinned {answer['id']}")

    @cdn.command()
    @json_option
    @click.pass_obj
    def status(state: CliState, as_json: bool) -> None:
        """Cache usage and transfer counters."""
        answer = state.client().get_json("/cdn/api/status")
        if as_json:
            print_json(answer)
            return
        print_rows("cdn", [{"key": k, "value": v} for k, v in answer.items()], ["key", "value"])
