"""The web UI in Debian's headless Chromium, clicked through as a user would."""

import os
import shutil

import pytest
import trio
from forum_helpers import FAST
from zeone_forum.service import state

from zeone.api.auth import read_token

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = '<script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2"> **still bold**'


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed")
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")


async def test_user_clicks_through_the_ui(zeone_network):
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    a = await zeone_network.add_node(enable=["forum"], settings=FAST, api=True)
    b = await zeone_network.add_node(enable=["forum"], settings=FAST)
    await zeone_network.connect_all()
    thread, _ = state(b).new_thread("Hostile thread", HOSTILE)
    with trio.fail_after(30):
        while not state(a).store.thread_exists(thread.id):  # noqa: ASYNC110 - polling state shared by several nodes
            await trio.sleep(0.05)
    url = f"{a.api_url}/forum/ui/login?token={read_token(a.config.token_file)}"

    def remote_reply():
        state(b).reply(thread.id, "live from **node b**")

    def browse():
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            assert page.url.endswith("/forum/ui")
            expect(page.locator("#live")).to_have_text("live")
            # the list, then the thread
            page.click("text=Hostile thread")
            expect(page.locator("#t-title")).to_have_text("Hostile thread")
            body = page.locator("li.message .body").first
            expect(body).to_contain_text("<script>window.pwned = 1</script>")
            assert body.locator("strong").inner_text() == "still bold"
            assert page.evaluate("window.pwned") is None
            assert body.locator("script, img").count() == 0
            # reply through the form
            page.fill("#reply-content", "a reply typed in the *browser*")
            page.click("#reply-submit")
            expect(page.locator("li.message")).to_have_count(2)
            expect(page.locator("li.message em")).to_have_text("browser")
            # vote on the first post
            page.locator("li.message .vote-up").first.click()
            expect(page.locator("li.message .vote-up").first).to_have_text("▲ 1")
            # a post written on another node appears without reloading
            trio.from_thread.run_sync(remote_reply)
            expect(page.locator("li.message")).to_have_count(3, timeout=20000)
            expect(page.locator("li.message strong").last).to_have_text("node b")
            # compose a new thread from the list
            page.click("#home")
            page.click("#new-thread-btn")
            page.fill("#nt-title", "Made in Chromium")
            page.fill("#nt-content", "hello")
            page.click("#nt-submit")
            expect(page.locator("#t-title")).to_have_text("Made in Chromium")
            assert page.evaluate("window.pwned") is None
            assert errors == []
            browser.close()

    await trio.to_thread.run_sync(browse)
    with trio.fail_after(30):  # the thread made in the browser replicated to b
        while state(b).store.counts()["threads"] < 2:  # noqa: ASYNC110 - polling state shared by several nodes
            await trio.sleep(0.05)
