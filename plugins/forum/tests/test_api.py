"""The local API routes, the cookie login, the CLI against a running node, and rendering."""

import json

import httpx
import trio
from click.testing import CliRunner
from forum_helpers import FAST
from zeone_forum.api import render_markdown
from zeone_forum.service import state

from zeone.api.auth import read_token
from zeone.cli import build_cli

HOSTILE = (
    '<script>window.pwned = 1</script>\n\n<img src=x onerror="window.pwned = 2">\n\n'
    '[click](javascript:window.pwned=3) <a href="javascript:alert(1)">x</a>'
)


def _elements(html):
    from html.parser import HTMLParser

    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect().feed(html)
    return found


def test_rendering_never_emits_active_content():
    html = render_markdown(HOSTILE + "\n\n**bold** `code` [ok](https://example.org)")
    tags = _elements(html)
    assert {tag for tag, _ in tags} <= {"p", "strong", "code", "a"}
    assert all(not name.startswith("on") for _, attrs in tags for name, _ in attrs)
    assert [dict(attrs).get("href") for tag, attrs in tags if tag == "a"] == ["https://example.org"]
    assert "&lt;script&gt;" in html  # shown as text
    assert "<strong>bold</strong>" in html
    assert 'href="https://example.org"' in html and 'rel="noopener noreferrer nofollow"' in html


async def test_api_routes_login_cookie_and_origin_checks(zeone_network):
    a = await zeone_network.add_node(enable=["forum"], settings=FAST, api=True)
    token = read_token(a.config.token_file)
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=a.api_url) as client:
        assert (await client.get("/forum/threads")).status_code == 401
        made = await client.post(
            "/forum/threads",
            headers=auth,
            json={"title": "API", "content": "via the API", "tags": ["x"]},
        )
        assert made.status_code == 201
        tid = made.json()["thread"]
        thread = (await client.get(f"/forum/threads/{tid}", headers=auth)).json()
        assert thread["messages"][0]["html"] == "<p>via the API</p>\n"
        bad = await client.post("/forum/threads", headers=auth, json={"title": 5})
        assert bad.status_code == 400 and "title" in bad.json()["error"]
        missing = await client.post(
            f"/forum/threads/{'0' * 64}/reply", headers=auth, json={"content": "into the void"}
        )
        assert missing.status_code == 404 and missing.json()["error"] == "no such thread"
        big = await client.post(
            f"/forum/threads/{tid}/reply", headers=auth, json={"content": "x" * 20000}
        )
        assert big.status_code == 400 and "bytes" in big.json()["error"]
        # the Jupyter-style login: token in the URL once, then an HttpOnly SameSite cookie
        assert (await client.get("/forum/ui/login?token=wrong")).status_code == 401
        login = await client.get(f"/forum/ui/login?token={token}")
        assert login.status_code == 303 and login.headers["location"] == "/forum/ui"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        async with httpx.AsyncClient(base_url=a.api_url) as fresh:  # ?token= only on login
            assert (await fresh.get("/forum/threads?token=" + token)).status_code == 401
        page = await client.get("/forum/ui")  # the cookie jar now carries the token
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )
        # a cookie-authenticated write from another origin is refused
        evil = await client.post(
            "/forum/vote",
            json={"target": tid, "value": 1},
            headers={"Origin": "http://127.0.0.1:1"},
        )
        assert evil.status_code == 403
        ok = await client.post(
            "/forum/vote", json={"target": tid, "value": 1}, headers={"Origin": a.api_url}
        )
        assert ok.status_code == 201
        found = (await client.get("/forum/search?q=API")).json()["results"]
        assert found and found[0]["thread"] == tid


async def test_cli_commands_against_a_running_node(zeone_network, tmp_path):
    a = await zeone_network.add_node(enable=["forum"], settings=FAST, api=True)
    (a.config.data_dir / "node.json").write_text(json.dumps({"api_url": a.api_url}))
    config = tmp_path / "zeone.toml"
    config.write_text(f'[node]\ndata_dir = "{a.config.data_dir}"\n')
    cli, _ = build_cli()

    def run(*args, input=None):
        result = CliRunner().invoke(cli, ["--config", str(config), "forum", *args], input=input)
        assert result.exit_code == 0, result.output
        return result.output

    async def cli_run(*args, input=None):
        return await trio.to_thread.run_sync(lambda: run(*args, input=input))

    tid = (await cli_run("post", "From the CLI", "first post", "--tag", "cli")).strip()
    assert len(tid) == 64
    pid = (await cli_run("reply", tid, "-", input="reply from stdin\n")).strip()
    await cli_run("vote", pid)
    listed = json.loads(await cli_run("threads", "--json"))
    assert listed[0]["title"] == "From the CLI"
    text = await cli_run("read", tid)
    assert "reply from stdin" in text and "(+1/-0)" in text
    assert json.loads(await cli_run("search", "stdin", "--json"))[0]["id"] == pid
    url = (await cli_run("ui")).strip()
    assert url.startswith(a.api_url + "/forum/ui/login?token=")
    assert state(a).store.counts()["posts"] == 2
