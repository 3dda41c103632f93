"""Fixtures for the CDN tests (helpers live in cdn_helpers, importable from this directory)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cdn_helpers import curl_path, run_curl


@pytest.fixture
def curl():
    """`await curl(node, path, *curl args)` -> (status, headers, body, curl exit code)."""
    curl_path()
    return run_curl
