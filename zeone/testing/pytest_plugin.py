"""pytest fixtures for ZEONE (registered through the ``pytest11`` entry point).

Tests need pytest-trio (``trio_mode = true`` in your pytest config, or mark tests with
``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from zeone.testing.network import TestNetwork, open_network
from zeone.testing.processes import NodeProcesses


@pytest.fixture
async def zeone_network(tmp_path: Path) -> AsyncIterator[TestNetwork]:
    """An empty in-memory network; add nodes with ``await zeone_network.add_node(...)``."""
    async with open_network(data_root=tmp_path) as network:
        yield network


@pytest.fixture
def zeone_processes(tmp_path: Path) -> Iterator[NodeProcesses]:
    """Real ``zeone run`` processes on loopback: ``zeone_processes.make(2, enable=["hello"])``.

    Processes still running when the test ends are stopped (SIGTERM, then SIGKILL).
    """
    processes = NodeProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.close()
