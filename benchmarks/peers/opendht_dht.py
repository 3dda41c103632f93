"""OpenDHT (PyPI `opendht`: the C++ library with Python bindings) DHT benchmark, next to ZEONE's.

Standalone: run it with the interpreter of a venv that has ``opendht`` installed (it does not
import zeone)::

    ~/.cache/zeone-bench/opendht/bin/python benchmarks/peers/opendht_dht.py --nodes 50

N `opendht.DhtRunner`s in one process (each a C++ node with its own threads and UDP socket on
127.0.0.1). Rate limiting is off (`DhtConfig.setRateLimit(-1, -1)`): all nodes share one IP here,
which OpenDHT's per-IP limit would otherwise treat as one abusive peer. Same phases as
benchmarks/dht.py: sequential join through node 0, sequential puts and gets, then 25% of the
nodes stopped (`DhtRunner.join()`: threads stopped, socket closed, no goodbye) and every key read
back with 8 gets in flight, then fresh puts. Prints ONE JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# benchmarks/common.py has no dependency on zeone, so this venv can share its statistics.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import opendht
from common import cpu_seconds, op_summary, percentile, rss_kib

CHURN_FRACTION = 0.25
CHURN_CONCURRENCY = 8
HOST = "127.0.0.1"
GOOD = re.compile(r"\[good\]")


def good_nodes(runner: Any) -> int:
    return len(GOOD.findall(runner.getRoutingTablesLog(socket.AF_INET)))


def new_runner() -> Any:
    config = opendht.DhtConfig()
    config.setRateLimit(-1, -1)
    runner = opendht.DhtRunner()
    runner.run(port=0, ipv4=HOST, config=config)
    return runner


def put(runner: Any, key: str, value: bytes, timeout: float) -> tuple[bool, float]:
    done = threading.Event()
    outcome = [False]

    def on_done(ok: bool, _nodes: Any) -> None:
        outcome[0] = ok
        done.set()

    started = time.perf_counter()
    runner.put(opendht.InfoHash.get(key), opendht.Value(value), done_cb=on_done)
    finished = done.wait(timeout)
    return finished and outcome[0], time.perf_counter() - started


def get(runner: Any, key: str, expected: bytes, timeout: float) -> tuple[bool, float]:
    """Time to the first matching value (the callback stops the search there), like a lookup
    that stops at the first record; a search that ends without it is a failure."""
    done = threading.Event()
    found = [False]
    finished_at = [0.0]

    def on_value(value: Any) -> bool:
        if value.data == expected and not found[0]:
            found[0] = True
            finished_at[0] = time.perf_counter()
            done.set()
            return False
        return True

    def on_done(_ok: bool, _nodes: Any) -> None:
        if not found[0]:
            finished_at[0] = time.perf_counter()
        done.set()

    started = time.perf_counter()
    runner.get(opendht.InfoHash.get(key), get_cb=on_value, done_cb=on_done)
    if not done.wait(timeout):
        return False, time.perf_counter() - started
    return found[0], finished_at[0] - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n = args.nodes
    rss_before = rss_kib()
    cpu_before = cpu_seconds()
    runners: list[Any] = []
    stopped: set[int] = set()
    try:
        seed = new_runner()
        runners.append(seed)
        seed_port = str(seed.getBound().getPort())

        joins, tables = [], []
        started = time.perf_counter()
        for _ in range(1, n):
            t0 = time.perf_counter()
            runner = new_runner()
            runner.bootstrap(HOST, seed_port)
            while good_nodes(runner) < 1:
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("a node did not connect within 30 s")
                time.sleep(0.0005)
            joins.append(time.perf_counter() - t0)
            tables.append(good_nodes(runner))
            runners.append(runner)
        bootstrap_total = time.perf_counter() - started
        cpu_joined = cpu_seconds()
        time.sleep(args.idle)
        cpu_idle = cpu_seconds()
        tables_after_idle = [good_nodes(r) for r in runners]

        keys, values, put_samples = [], [], []
        for i in range(args.ops):
            publisher = runners[i % n]
            key = f"{publisher.getNodeId()}/bench-{i}"
            value = os.urandom(32)
            put_samples.append(put(publisher, key, value, 30))
            keys.append(key)
            values.append(value)
        cpu_put = cpu_seconds()
        get_samples = []
        for i in range(args.ops):
            getter = runners[rng.choice([j for j in range(n) if j != i % n])]
            get_samples.append(get(getter, keys[i], values[i], 30))
        cpu_ops = cpu_seconds()
        rss_after = rss_kib()

        # -- churn ------------------------------------------------------------------------------
        victims = set(rng.sample(range(1, n), math.ceil(n * CHURN_FRACTION)))
        for index in victims:
            runners[index].join()
            stopped.add(index)
        survivors = [runners[i] for i in range(n) if i not in victims]
        churn_started = time.perf_counter()
        getters = [rng.choice(survivors) for _ in range(args.ops)]
        with ThreadPoolExecutor(CHURN_CONCURRENCY) as pool:
            t0 = time.perf_counter()
            churn_get_samples = list(
                pool.map(
                    lambda i: get(getters[i], keys[i], values[i], args.churn_op_timeout),
                    range(args.ops),
                )
            )
            churn_get_wall = time.perf_counter() - t0

            def churn_put(i: int) -> tuple[bool, float]:
                publisher = survivors[i % len(survivors)]
                key = f"{publisher.getNodeId()}/after-{i}"
                return put(publisher, key, os.urandom(32), args.churn_op_timeout)

            t0 = time.perf_counter()
            churn_put_samples = list(pool.map(churn_put, range(args.churn_puts)))
            churn_put_wall = time.perf_counter() - t0
        churn_delay = time.perf_counter() - churn_started
        routing_after = percentile([good_nodes(r) for r in survivors], 50)
    finally:
        for index, runner in enumerate(runners):
            if index not in stopped:
                runner.join()

    return {
        "implementation": "opendht",
        "version": importlib.metadata.version("opendht"),
        "nodes": n,
        "processes": 1,
        "transport": "UDP 127.0.0.1 (msgpack), no encryption; rate limit off",
        "store": "in-memory",
        "join": {
            "p50_ms": round(percentile(joins, 50) * 1000, 3),
            "p95_ms": round(percentile(joins, 95) * 1000, 3),
            "max_ms": round(max(joins) * 1000, 3),
            "n": len(joins),
            "table_at_join_p50": percentile(tables, 50),
            "table_after_idle_p50": percentile(tables_after_idle, 50),
            "definition": "DhtRunner.run() + bootstrap(node 0) until the routing table holds a "
            "good node, OpenDHT's own 'connected' state (its Python API reports no bootstrap "
            "completion); the table then fills lazily, over seconds; one node at a time",
        },
        "bootstrap_total_s": round(bootstrap_total, 3),
        "put": {
            **op_summary(put_samples),
            "definition": "DhtRunner.put(InfoHash.get(key), Value(32 B)) until done_cb(ok)",
        },
        "get": {
            **op_summary(get_samples),
            "definition": "DhtRunner.get from a random other node until the first matching "
            "value arrives (the callback then stops the search)",
        },
        "churn": {
            "killed": len(victims),
            "killed_fraction": round(len(victims) / n, 3),
            "how": "DhtRunner.join() (threads stopped, UDP socket closed, no goodbye)",
            "get": {**op_summary(churn_get_samples), "wall_s": round(churn_get_wall, 3)},
            "put": {**op_summary(churn_put_samples), "wall_s": round(churn_put_wall, 3)},
            "concurrency": CHURN_CONCURRENCY,
            "op_timeout_s": args.churn_op_timeout,
            "seconds_after_kill": round(churn_delay, 3),
        },
        "cpu": {
            "join_s_per_node": round((cpu_joined - cpu_before) / n, 4),
            "idle_pct_per_node": round((cpu_idle - cpu_joined) / args.idle / n * 100, 3),
            "ops_s_per_node": round((cpu_ops - cpu_idle) / n, 4),
            "total_s_per_node": round((cpu_ops - cpu_before) / n, 4),
            "put_ms_per_op": round((cpu_put - cpu_idle) / max(1, len(put_samples)) * 1000, 3),
            "get_ms_per_op": round((cpu_ops - cpu_put) / max(1, len(get_samples)) * 1000, 3),
        },
        "rss": {
            "kib_per_node": round(rss_after / n, 1),
            "kib_per_node_incremental": round((rss_after - rss_before) / n, 1),
            "process_baseline_kib": rss_before,
        },
        "routing_table_p50": routing_after,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--churn-puts", type=int, default=16)
    parser.add_argument("--churn-op-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=240.0, help="whole run (s)")
    args = parser.parse_args(argv)

    def watchdog(signum: int, frame: Any) -> None:
        sys.stderr.write(f"opendht_dht: watchdog fired after {args.timeout:.0f}s\n")
        os._exit(3)

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(int(args.timeout))
    started = time.perf_counter()
    try:
        results = run(args)
    except Exception as exc:
        sys.stderr.write(f"opendht_dht: FAILED: {exc!r}\n")
        return 1
    finally:
        signal.alarm(0)
    results["total_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
