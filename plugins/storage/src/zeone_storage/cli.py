"""`zeone store put|get|ls|status|audit`: talk to the running node's local API."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from zeone.errors import ZeoneError


class StoreError(ZeoneError):
    """A storage job failed (the node's message is shown as is)."""


def _wait(client: Any, job: str, label: str, quiet: bool) -> dict[str, Any]:
    """Poll the job, drawing a rich progress bar on a terminal."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = ("[bold]{task.description}", BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, disable=quiet, transient=False) as bar:
        task = bar.add_task(label, total=None)
        while True:
            state = client.get_json(f"/storage/jobs/{job}")
            bar.update(task, total=state["total"] or None, completed=state["done"])
            if state["state"] != "running":
                break
            time.sleep(0.2)
    if state["state"] == "failed":
        raise StoreError(state["error"])
    return state["result"]


@click.group()
def store() -> None:
    """Erasure-coded storage on the network (storage plugin)."""


@store.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--encrypt/--no-encrypt", default=None, help="Override [plugins.storage] encrypt.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def put(state: Any, file: Path, encrypt: bool | None, as_json: bool) -> None:
    """Store FILE: returns its id once every fragment is durable at its holder."""
    from zeone.cli import print_json

    client = state.client()
    body = {"path": str(file.resolve()), "encrypt": encrypt}
    job = client.post_json("/storage/put", body)["job"]
    result = _wait(client, job, f"put {file.name}", as_json)
    if as_json:
        print_json(result)
        return
    click.echo(result["id"])
    click.echo(
        f"{result['size']} bytes in {result['stripes']} stripes, {result['k']}+{result['m']} "
        f"fragments on {result['nodes']} nodes, {result['seconds']} s"
        + (" (encrypted: keep the whole id, it holds the key)" if result["encrypted"] else ""),
        err=True,
    )


@store.command()
@click.argument("ident", metavar="ID")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def get(state: Any, ident: str, output: Path | None, as_json: bool) -> None:
    """Fetch file ID (`<id>` or `<id>.<key>`) into OUTPUT (default: ./<id>)."""
    from zeone.cli import print_json

    client = state.client()
    target = (output or Path(ident.split(".")[0])).resolve()
    job = client.post_json("/storage/get", {"id": ident, "output": os.fspath(target)})["job"]
    result = _wait(client, job, f"get {target.name}", as_json)
    if as_json:
        print_json(result)
        return
    click.echo(f"{result['output']}: {result['size']} bytes in {result['seconds']} s")
    for bad in result["bad_fragments"]:
        click.echo(
            f"bad fragment {bad['index']} of stripe {bad['stripe']} at node {bad['node']}: "
            f"{bad['reason']} (reported for repair)",
            err=True,
        )


@store.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def ls(state: Any, as_json: bool) -> None:
    """Files this node published."""
    from zeone.cli import print_json, print_rows

    rows = state.client().get_json("/storage/files")["files"]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["fragments"] = f"{row['alive']}/{row['stripes'] * row['n']}"
    print_rows("stored files", rows, ["cid", "name", "size", "stripes", "fragments", "encrypted"])


@store.command()
@click.argument("ident", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(state: Any, ident: str, as_json: bool) -> None:
    """Health of file ID: fragments confirmed alive per stripe, asked of every holder now."""
    from zeone.cli import print_json

    info = state.client().get_json(f"/storage/status/{ident}")
    if as_json:
        print_json(info)
        return
    click.echo(f"{info['id']}  {info['name']}  {info['size']} bytes  {info['state']}")
    click.echo(
        f"k={info['k']} m={info['m']} repair at <= {info['repair_threshold']} alive; "
        f"worst stripe {info['min_alive']}/{info['k'] + info['m']}"
    )
    click.echo("alive per stripe: " + " ".join(str(n) for n in info["alive_per_stripe"]))


@store.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def audit(state: Any, as_json: bool) -> None:
    """Audit every holder of this node's files now and repair what is lost."""
    from zeone.cli import print_json

    client = state.client()
    result = _wait(client, client.post_json("/storage/audit")["job"], "audit", True)
    if as_json:
        print_json(result)
    else:
        click.echo(f"audit: {result['audit']}  repair: {result['repair']}")
