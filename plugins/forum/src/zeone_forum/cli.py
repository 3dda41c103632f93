"""`zeone forum ...`: the CLI talks to the running node's `/forum/...` API routes."""

from __future__ import annotations

import sys
import urllib.parse
from typing import Any

import click


def _read_content(content: str | None) -> str:
    text = sys.stdin.read() if content is None or content == "-" else content
    if not text.strip():
        raise click.UsageError("the post is empty")
    return text


def add_commands(cli: click.Group) -> None:
    from zeone.cli import CliState, print_json, print_rows

    @cli.group()
    def forum() -> None:
        """The decentralized forum: read, post, vote, search, open the web UI."""

    @forum.command()
    @click.option("--order", type=click.Choice(["popular", "recent", "new"]), default="popular")
    @click.option("--tag", default=None, help="Only threads with this tag.")
    @click.option("--category", default=None)
    @click.option("--limit", type=click.IntRange(1, 500), default=50)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def threads(
        state: CliState,
        order: str,
        tag: str | None,
        category: str | None,
        limit: int,
        as_json: bool,
    ) -> None:
        """List threads this node knows, most popular first."""
        query = {"order": order, "limit": limit}
        if tag:
            query["tag"] = tag
        if category:
            query["category"] = category
        rows = state.client().get_json("/forum/threads?" + urllib.parse.urlencode(query))
        rows = rows["threads"]
        if as_json:
            print_json(rows)
            return
        for row in rows:
            row["short"] = row["id"][:12]
        print_rows("threads", rows, ["short", "title", "posts", "score", "holders", "tags"])

    @forum.command()
    @click.argument("thread")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def read(state: CliState, thread: str, as_json: bool) -> None:
        """Print a thread (THREAD is its 64-hex-digit id)."""
        data = state.client().get_json(f"/forum/threads/{urllib.parse.quote(thread)}")
        if as_json:
            print_json(data)
            return
        click.echo(f"# {data['title']}  [{data['category']}] {' '.join(data['tags'])}")
        for message in data["messages"]:
            author = message["nick"] or message["author"][:8]
            votes = message["votes"]
            click.echo(f"\n--- {message['id'][:12]} by {author} (+{votes['up']}/-{votes['down']})")
            click.echo(message["content"])

    @forum.command()
    @click.argument("title")
    @click.argument("content", required=False)
    @click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
    @click.option("--category", default="general")
    @click.pass_obj
    def post(
        state: CliState, title: str, content: str | None, tags: tuple[str, ...], category: str
    ) -> None:
        """Start a thread TITLE with CONTENT (markdown; '-' or nothing reads stdin)."""
        body = {
            "title": title,
            "content": _read_content(content),
            "tags": list(tags),
            "category": category,
        }
        made = state.client().post_json("/forum/threads", body)
        click.echo(made["thread"])

    @forum.command()
    @click.argument("thread")
    @click.argument("content", required=False)
    @click.option("--parent", default=None, help="Id of the post this answers.")
    @click.option("--anon", is_flag=True, help="Sign with a ring signature instead of your key.")
    @click.pass_obj
    def reply(
        state: CliState, thread: str, content: str | None, parent: str | None, anon: bool
    ) -> None:
        """Reply to THREAD with CONTENT (markdown; '-' or nothing reads stdin)."""
        body: dict[str, Any] = {"content": _read_content(content), "anonymous": anon}
        if parent:
            body["parent"] = parent
        made = state.client().post_json(f"/forum/threads/{urllib.parse.quote(thread)}/reply", body)
        click.echo(made["id"])

    @forum.command()
    @click.argument("target")
    @click.option("--down", is_flag=True, help="Vote down instead of up.")
    @click.option("--withdraw", is_flag=True, help="Withdraw your vote.")
    @click.option("--reaction", default="", help="An optional reaction (emoji or word).")
    @click.option("--anon", is_flag=True, help="Vote anonymously (one such vote per thread).")
    @click.pass_obj
    def vote(
        state: CliState, target: str, down: bool, withdraw: bool, reaction: str, anon: bool
    ) -> None:
        """Vote on a thread or post TARGET."""
        value = 0 if withdraw else (-1 if down else 1)
        body = {"target": target, "value": value, "reaction": reaction, "anonymous": anon}
        made = state.client().post_json("/forum/vote", body)
        click.echo(made["id"])

    @forum.command()
    @click.argument("target")
    @click.pass_obj
    def delete(state: CliState, target: str) -> None:
        """Delete your own post or thread TARGET everywhere (a signed tombstone)."""
        click.echo(state.client().post_json("/forum/delete", {"target": target})["id"])

    @forum.command()
    @click.argument("query")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def search(state: CliState, query: str, as_json: bool) -> None:
        """Full-text search of the posts this node holds."""
        rows = state.client().get_json("/forum/search?" + urllib.parse.urlencode({"q": query}))
        rows = rows["results"]
        if as_json:
            print_json(rows)
            return
        for row in rows:
            row["thread_id"] = row["thread"][:12]
        print_rows("results", rows, ["thread_id", "title", "snippet"])

    @forum.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def sync(state: CliState, as_json: bool) -> None:
        """Synchronise with every connected forum peer now."""
        client = state.client()
        client.timeout = 300
        data = client.post_json("/forum/sync", {})
        if as_json:
            print_json(data)
            return
        rows = [{"peer": peer[:12], **result} for peer, result in data["peers"].items()]
        print_rows("sync", rows, ["peer", "pulled", "fetched", "pushed", "rounds", "error"])

    @forum.command()
    @click.pass_obj
    def ui(state: CliState) -> None:
        """Print the URL that opens the web UI (it logs the browser in with the API token)."""
        client = state.client()
        token = urllib.parse.quote(client.token, safe="")
        click.echo(f"{client.url}/forum/ui/login?token={token}")
