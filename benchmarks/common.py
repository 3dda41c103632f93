"""Shared helpers for benchmarks: percentiles, environment facts, JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 3),
        "p99_ms": round(percentile(samples, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
        "n": len(samples),
    }


def environment() -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def op_summary(samples: Sequence[tuple[bool, float]], not_done: int = 0) -> dict[str, Any]:
    """Latency percentiles of the successful operations, success rate over all of them."""
    ok = [t for success, t in samples if success]
    every = [t for _, t in samples]
    total = len(samples) + not_done  # operations a phase budget cut off count as failures
    return {
        "n": len(samples),
        "not_done": not_done,
        "success_rate": round(len(ok) / total, 4) if total else None,
        "p50_ms": round(percentile(ok, 50) * 1000, 3) if ok else None,
        "p95_ms": round(percentile(ok, 95) * 1000, 3) if ok else None,
        "max_ms": round(max(ok) * 1000, 3) if ok else None,
        "p95_all_ms": round(percentile(every, 95) * 1000, 3) if every else None,
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int | None = None) -> int:
    """Resident set size in KiB, from /proc."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in " + path)


def write_results(name: str, data: dict[str, Any], table: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **data}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
