"""Helpers for the CDN tests: curl against a node's gateway."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio


def curl_path() -> str:
    found = shutil.which("curl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("curl is required in CI")
        pytest.skip("curl is not installed")
    return found


def token_of(node: Any) -> str:
    return Path(node.config.token_file).read_text().strip()


async def run_curl(
    node: Any, path: str, *args: str, auth: bool = True
) -> tuple[int, dict, bytes, int]:
    """Run curl against `node`'s API: (HTTP status, lower-cased headers, body, curl exit code)."""
    command = [curl_path(), "-s", "-D", "-", "--path-as-is", *args]
    if auth:
        command += ["-H", f"Authorization: Bearer {token_of(node)}"]
    command.append(node.api_url + path)
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    raw = result.stdout
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body, result.returncode
