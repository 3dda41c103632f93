"""DHT benchmark: N real ZEONE nodes on loopback next to kademlia, OpenDHT and py-libp2p, one run.

    python3 -m uv run python benchmarks/dht.py [--quick] [--nodes 50] [--ops 200]
        [--only zeone,kademlia,opendht,libp2p] [--libp2p-python PATH]

What is measured, the same way for every implementation (N = 50 by default):

- join: nodes join one at a time, each bootstrapping from node 0 only; per node, the time from
  starting it until its bootstrap is done (ZEONE: the DHT join, i.e. the own-id lookup plus the
  refresh of the buckets further out; see each peer script for its definition); and the wall time
  to bring up all N;
- put / get: `--ops` sequential puts (publisher = node i mod N, its own `kv:` key), then one get
  of each key from a random other node; p50/p95 latency and success rate;
- churn: 25% of the nodes (rounded up) are stopped abruptly, then immediately every key stored
  before is read again from random survivors (8 gets in flight), then `--churn-puts` new puts;
- CPU seconds and RSS per node.

ZEONE runs as several OS processes (default 5, one `trio.run` each hosting its share of the nodes,
real TCP + Noise between all of them); the parent drives them through JSON lines on stdin/stdout
and times nothing itself: every latency is taken inside the worker around the `node.dht` call.
The churn kills one whole worker process (SIGKILL) that hosts exactly the 25%.

Diagnosis only (the table is not comparable then): `--churn-signal stop` freezes the victims
instead (SIGSTOP: their connections stay open and nothing answers, so only timeouts tell),
`--sync normal|off` runs the ZEONE record stores without fsync per commit, `--profile DIR` dumps
a cProfile per worker and phase.

The peers are measured by `peers/kademlia_dht.py`, `peers/opendht_dht.py` and
`peers/libp2p_dht.py`, each in its own virtualenv (created on first use under
~/.cache/zeone-bench/<name>), never importing ZEONE. Writes results/dht.json and results/dht.md.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_seconds, markdown_table, op_summary, percentile, rss_kib, write_results

from zeone.dht.namespaces import kv_key
from zeone.identity import Identity
from zeone.node import Node
from zeone.plugins import Catalog
from zeone.testing import make_config

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
VENVS = Path.home() / ".cache" / "zeone-bench"
PEERS = {
    # name: (pip requirement, script)
    "kademlia": ("kademlia", "kademlia_dht.py"),
    "opendht": ("opendht", "opendht_dht.py"),
    "libp2p": ("libp2p==0.8.1", "libp2p_dht.py"),
}
CHURN_FRACTION = 0.25
CHURN_CONCURRENCY = 8
TARGETS = {"get_p50_ms": 5.0, "put_p50_ms": 20.0, "join_p50_ms": 50.0, "churn_get_p95_ms": 2000.0}


# -- worker: one process, one trio.run, several ZEONE nodes ------------------------------------


class WorkerState:
    def __init__(self, root: Path, sync: str) -> None:
        self.root = root
        self.sync = sync
        self.catalog = Catalog.discover()
        self.nodes: dict[int, Any] = {}
        self.store_calls = 0
        self.store_seconds = 0.0
        self.profiler: cProfile.Profile | None = None
        self.profile_path = ""

    def reply(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def instrument(self, node: Any) -> None:
        """Count the time SQLite writes take on the event loop (every STORE and own put)."""
        store = node.dht_service.store
        if self.sync != "full":
            store._connect().execute(f"PRAGMA synchronous={self.sync.upper()}")
        put_detailed = store.put_detailed

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return put_detailed(*args, **kwargs)
            finally:
                self.store_calls += 1
                self.store_seconds += time.perf_counter() - started

        store.put_detailed = timed

    async def start(self, nursery: trio.Nursery, cmd: dict[str, Any]) -> dict[str, Any]:
        index = cmd["index"]
        started = time.perf_counter()
        settings: dict[str, Any] = {"network.listen": ["tcp://127.0.0.1:0"]}
        if cmd.get("bootstrap"):
            settings["network.bootstrap"] = [cmd["bootstrap"]]
        config = make_config(self.root / f"node{index}", settings=settings, catalog=self.catalog)
        node = Node(
            config, identity=Identity.generate(), catalog=self.catalog, write_runtime_file=False
        )
        self.instrument(node)
        # The DHT service runs its join (Dht.bootstrap through the seed) as a background task:
        # wrap it to learn when it is done.
        service = node.dht_service
        join = service._join
        joined = trio.Event()

        async def join_and_report() -> None:
            await join()
            joined.set()

        service._join = join_and_report
        await nursery.start(node.run)
        up = time.perf_counter()
        self.nodes[index] = node
        result = {
            "entry": f"{node.node_id}@{node.network.listen_addresses[0]}",
            "startup_s": up - started,
        }
        if cmd.get("bootstrap"):
            with trio.fail_after(cmd.get("timeout", 30)):
                await joined.wait()
            result["join_s"] = time.perf_counter() - started
            result["table"] = len(node.dht.table)
        return result

    async def put(self, cmd: dict[str, Any]) -> dict[str, Any]:
        node = self.nodes[cmd["index"]]
        key = kv_key(node.node_id, cmd["name"])
        value = bytes.fromhex(cmd["value"])
        started = time.perf_counter()
        with trio.fail_after(cmd.get("timeout", 30)):
            result = await node.dht.put(key, value)
        elapsed = time.perf_counter() - started
        return {
            "ok": result.acks > 0,
            "latency_s": elapsed,
            "key": key.hex(),
            "acks": result.acks,
            "attempted": result.attempted,
        }

    async def get(self, cmd: dict[str, Any]) -> dict[str, Any]:
        node = self.nodes[cmd["index"]]
        key = bytes.fromhex(cmd["key"])
        started = time.perf_counter()
        with trio.fail_after(cmd.get("timeout", 30)):
            records = await node.dht.get(key)
        elapsed = time.perf_counter() - started
        found = bool(records) and records[0].value.hex() == cmd["value"]
        return {"ok": found, "latency_s": elapsed}

    def profile(self, path: str | None) -> dict[str, Any]:
        """Diagnosis (--profile): stop and dump the running profile, start one for `path`."""
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(self.profile_path)
            self.profiler = None
        if path:
            self.profiler, self.profile_path = cProfile.Profile(), path
            self.profiler.enable()
        return {"ok": True}

    def stats(self) -> dict[str, Any]:
        return {
            "cpu_s": cpu_seconds(),
            "rss_kib": rss_kib(),
            "nodes": len(self.nodes),
            "tables": [len(n.dht.table) for n in self.nodes.values()],
            "connections": [len(n.network.connections) for n in self.nodes.values()],
            "store_calls": self.store_calls,
            "store_seconds": self.store_seconds,
            "rpcs": sum(n.dht.lookups.counters["rpcs"] for n in self.nodes.values()),
            "lookups": sum(n.dht.lookups.counters["lookups"] for n in self.nodes.values()),
        }


async def worker_main(root: Path, sync: str) -> None:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    state = WorkerState(root, sync)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))

    async def handle(nursery: trio.Nursery, cmd: dict[str, Any]) -> None:
        try:
            if cmd["cmd"] == "start":
                body = await state.start(nursery, cmd)
            elif cmd["cmd"] == "put":
                body = await state.put(cmd)
            elif cmd["cmd"] == "get":
                body = await state.get(cmd)
            elif cmd["cmd"] == "stats":
                body = state.stats()
            elif cmd["cmd"] == "profile":
                body = state.profile(cmd.get("path"))
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
        except Exception as exc:  # reported to the parent, which counts a failed operation
            body = {"ok": False, "error": repr(exc)[:300]}
        state.reply({"id": cmd["id"], **body})

    async with trio.open_nursery() as nursery:
        state.reply({"id": 0, "ready": True, "cpu_s": cpu_seconds(), "rss_kib": rss_kib()})
        buffer = b""
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                break  # the parent went away
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            commands = [json.loads(line) for line in lines if line.strip()]
            if any(c["cmd"] == "quit" for c in commands):
                break
            for cmd in commands:
                nursery.start_soon(handle, nursery, cmd)
        nursery.cancel_scope.cancel()


# -- parent: drives the worker processes ---------------------------------------------------------


class WorkerDied(Exception):
    pass


class Worker:
    def __init__(self, number: int, size: int, process: trio.Process, log: Path) -> None:
        self.number = number
        self.size = size
        self.process = process
        self.log = log
        self.ids = itertools.count(1)
        self.ready_slot: list[Any] = [trio.Event(), None]
        self.pending: dict[int, list[Any]] = {0: self.ready_slot}
        self.send_lock = trio.Lock()
        self.dead = False
        self.ready: dict[str, Any] = {}
        self.baseline_rss_kib = 0

    async def read_replies(self) -> None:
        buffer = b""
        while True:
            try:
                data = await self.process.stdout.receive_some(65536)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                data = b""
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                message = json.loads(line)
                slot = self.pending.pop(message.get("id"), None)
                if slot is not None:
                    slot[1] = message
                    slot[0].set()
        self.dead = True
        for slot in self.pending.values():
            slot[0].set()
        self.pending.clear()

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        slot = self.ready_slot
        with trio.fail_after(timeout):
            await slot[0].wait()
        if slot[1] is None:
            raise WorkerDied(f"worker {self.number} exited before it was ready: {self.tail()}")
        self.ready = slot[1]
        self.baseline_rss_kib = slot[1]["rss_kib"]
        return slot[1]

    async def call(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.dead:
            raise WorkerDied(f"worker {self.number} is gone")
        ident = next(self.ids)
        slot: list[Any] = [trio.Event(), None]
        self.pending[ident] = slot
        async with self.send_lock:
            await self.process.stdin.send_all((json.dumps({**cmd, "id": ident}) + "\n").encode())
        with trio.fail_after(timeout):
            await slot[0].wait()
        if slot[1] is None:
            raise WorkerDied(f"worker {self.number} died: {self.tail()}")
        return slot[1]

    def tail(self) -> str:
        try:
            return self.log.read_text()[-1500:]
        except OSError:
            return ""


def process_sizes(nodes: int, processes: int) -> list[int]:
    """The last process holds exactly the churn victims; the rest share the survivors."""
    victims = math.ceil(nodes * CHURN_FRACTION)
    survivors = nodes - victims
    others = max(1, processes - 1)
    sizes = [survivors // others + (1 if i < survivors % others else 0) for i in range(others)]
    return [*sizes, victims]


def join_order(sizes: list[int]) -> list[int]:
    """Which worker hosts node 0, 1, ...: round-robin, so the victims joined throughout."""
    left = list(sizes)
    order = []
    while any(left):
        for number, remaining in enumerate(left):
            if remaining:
                order.append(number)
                left[number] -= 1
    return order


async def gather_ops(
    calls: list[tuple[Worker, dict[str, Any]]], concurrency: int, timeout: float, budget: float
) -> tuple[list[tuple[bool, float]], int, list[dict[str, Any]], float]:
    """Run the calls, `concurrency` at a time; an error or a timeout is a failure. Returns the
    samples of the finished calls, how many the phase budget cut off, every reply, wall time."""
    results: list[dict[str, Any] | None] = [None] * len(calls)
    limiter = trio.CapacityLimiter(concurrency)
    started = time.perf_counter()

    async def one(i: int, worker: Worker, cmd: dict[str, Any]) -> None:
        async with limiter:
            t0 = time.perf_counter()
            try:
                results[i] = await worker.call({**cmd, "timeout": timeout}, timeout + 5)
            except (trio.TooSlowError, WorkerDied) as exc:
                elapsed = time.perf_counter() - t0
                results[i] = {"ok": False, "latency_s": elapsed, "error": repr(exc)}

    with trio.move_on_after(budget):
        async with trio.open_nursery() as nursery:
            for i, (worker, cmd) in enumerate(calls):
                nursery.start_soon(one, i, worker, cmd)
    wall = time.perf_counter() - started
    finished = [r for r in results if r is not None]
    samples = [(bool(r.get("ok")), float(r.get("latency_s", timeout))) for r in finished]
    filled = [r or {"ok": False, "error": "phase budget"} for r in results]
    return samples, len(results) - len(finished), filled, wall


async def profile(args: argparse.Namespace, workers: list[Worker], phase: str | None) -> None:
    """Diagnosis only (--profile DIR): one cProfile dump per worker and phase."""
    if args.profile:
        for worker in workers:
            path = f"{args.profile}/{phase}-worker{worker.number}.pstats" if phase else None
            await worker.call({"cmd": "profile", "path": path}, 30)


async def stats_of(workers: list[Worker]) -> dict[str, Any]:
    alive = [w for w in workers if not w.dead]
    replies = [await w.call({"cmd": "stats"}, 30) for w in alive]
    return {
        "cpu_s": sum(r["cpu_s"] for r in replies),
        "rss_kib": sum(r["rss_kib"] for r in replies),
        "baseline_rss_kib": sum(w.baseline_rss_kib for w in alive),
        "nodes": sum(r["nodes"] for r in replies),
        "tables": [t for r in replies for t in r["tables"]],
        "connections": [c for r in replies for c in r["connections"]],
        "store_calls": sum(r["store_calls"] for r in replies),
        "store_seconds": sum(r["store_seconds"] for r in replies),
        "rpcs": sum(r["rpcs"] for r in replies),
        "lookups": sum(r["lookups"] for r in replies),
    }


def _log_file(path: Path) -> Any:
    return path.open("wb")


async def zeone_bench(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="zeone-dht-bench-"))
    sizes = process_sizes(args.nodes, args.processes)
    workers: list[Worker] = []
    rng = random.Random(args.seed)
    try:
        async with trio.open_nursery() as nursery:
            for number, size in enumerate(sizes):
                log = root / f"worker{number}.log"
                stderr = _log_file(log)
                try:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, str(SCRIPT), "--worker", str(root), "--sync", args.sync],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                    )
                finally:
                    stderr.close()
                worker = Worker(number, size, process, log)
                workers.append(worker)
                nursery.start_soon(worker.read_replies)
            try:
                result = await _zeone_phases(args, workers, sizes, rng)
            finally:
                for worker in workers:
                    if not worker.dead:
                        with trio.move_on_after(2):
                            await worker.process.stdin.send_all(b'{"cmd": "quit"}\n')
                    elif worker.process.returncode is None:
                        worker.process.kill()  # a frozen churn victim
                with trio.move_on_after(10):
                    for worker in workers:
                        await worker.process.wait()
                nursery.cancel_scope.cancel()
        return result
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
        for worker in workers:
            with trio.move_on_after(5):
                await worker.process.wait()
        shutil.rmtree(root, ignore_errors=True)


async def _zeone_phases(
    args: argparse.Namespace, workers: list[Worker], sizes: list[int], rng: random.Random
) -> dict[str, Any]:
    for worker in workers:
        await worker.wait_ready(120)
    before_join = await stats_of(workers)
    await profile(args, workers, "join")

    # -- join, one node at a time, everyone bootstrapping from node 0 --------------------------
    owner: list[Worker] = []
    joins: list[float] = []
    startups: list[float] = []
    tables_at_join: list[int] = []
    seed_entry = None
    started = time.perf_counter()
    with trio.fail_after(args.phase_timeout):
        for index, number in enumerate(join_order(sizes)):
            worker = workers[number]
            reply = await worker.call(
                {"cmd": "start", "index": index, "bootstrap": seed_entry, "timeout": 30}, 40
            )
            if "entry" not in reply:
                raise RuntimeError(f"node {index} did not start: {reply.get('error')}")
            owner.append(worker)
            startups.append(reply["startup_s"])
            if seed_entry is None:
                seed_entry = reply["entry"]
            else:
                joins.append(reply["join_s"])
                tables_at_join.append(reply["table"])
    bootstrap_total = time.perf_counter() - started
    log(f"zeone: {args.nodes} nodes joined in {bootstrap_total:.2f} s")
    await profile(args, workers, None)
    after_join = await stats_of(workers)
    await trio.sleep(args.idle)
    after_idle = await stats_of(workers)

    # -- puts and gets, sequential ---------------------------------------------------------------
    n = args.nodes
    put_calls = []
    values = []
    for i in range(args.ops):
        value = os.urandom(32).hex()
        values.append(value)
        cmd = {"cmd": "put", "index": i % n, "name": f"bench-{i}", "value": value}
        put_calls.append((owner[i % n], cmd))
    await profile(args, workers, "put")
    put_samples, put_cut, put_replies, _ = await gather_ops(put_calls, 1, 30, args.phase_timeout)
    await profile(args, workers, "get")
    after_put = await stats_of(workers)
    log(f"zeone: put {op_summary(put_samples, put_cut)}")
    keys = [r.get("key") for r in put_replies]
    get_calls = []
    for i in range(args.ops):
        if keys[i] is None:
            continue
        getter = rng.choice([j for j in range(n) if j != i % n])
        cmd = {"cmd": "get", "index": getter, "key": keys[i], "value": values[i]}
        get_calls.append((owner[getter], cmd))
    get_samples, get_cut, _, _ = await gather_ops(get_calls, 1, 30, args.phase_timeout)
    await profile(args, workers, None)
    after_get = await stats_of(workers)
    log(f"zeone: get {op_summary(get_samples, get_cut)}")

    # -- churn: SIGKILL the process hosting 25% of the nodes, then read everything back ----------
    victim = workers[-1]
    killed = [i for i in range(n) if owner[i] is victim]
    victim.dead = True  # no more commands, no quit: it is killed (or frozen) now
    if args.churn_signal == "kill":
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
    else:  # frozen: its sockets stay open and silent, like a host that dropped off the net
        victim.process.send_signal(signal.SIGSTOP)
    churn_started = time.perf_counter()
    survivors = [i for i in range(n) if owner[i] is not victim]
    churn_get_calls = []
    for i in range(args.ops):
        if keys[i] is None:
            continue
        getter = rng.choice(survivors)
        cmd = {"cmd": "get", "index": getter, "key": keys[i], "value": values[i]}
        churn_get_calls.append((owner[getter], cmd))
    churn_get, churn_get_cut, _, churn_get_wall = await gather_ops(
        churn_get_calls, CHURN_CONCURRENCY, args.churn_op_timeout, args.phase_timeout
    )
    log(f"zeone: after churn get {op_summary(churn_get, churn_get_cut)}")
    churn_put_calls = []
    for i in range(args.churn_puts):
        publisher = survivors[i % len(survivors)]
        value = os.urandom(32).hex()
        cmd = {"cmd": "put", "index": publisher, "name": f"after-{i}", "value": value}
        churn_put_calls.append((owner[publisher], cmd))
    churn_put, churn_put_cut, _, churn_put_wall = await gather_ops(
        churn_put_calls, CHURN_CONCURRENCY, args.churn_op_timeout, args.phase_timeout
    )
    log(f"zeone: after churn put {op_summary(churn_put, churn_put_cut)}")
    churn_delay = time.perf_counter() - churn_started

    nodes = args.nodes
    store_calls = after_get["store_calls"] - after_join["store_calls"]
    store_seconds = after_get["store_seconds"] - after_join["store_seconds"]
    return {
        "implementation": "zeone",
        "nodes": nodes,
        "processes": len(workers),
        "nodes_per_process": sizes,
        "transport": "tcp 127.0.0.1 + Noise XX, one connection per peer pair",
        "store": f"SQLite WAL, synchronous={args.sync.upper()}, one commit per STORE",
        "join": {
            **latency_summary(joins),
            "startup_p50_ms": round(percentile(startups, 50) * 1000, 3),
            "table_at_join_p50": percentile(tables_at_join, 50),
            "definition": (
                "Node() construction + node.run() until the DHT service's join is done: "
                "Dht.bootstrap through node 0 (own-id lookup, then one lookup per bucket "
                "further out than the nearest neighbour); nodes join one at a time"
            ),
        },
        "bootstrap_total_s": round(bootstrap_total, 3),
        "put": {
            **op_summary(put_samples, put_cut),
            "acks_mean": _mean([r.get("acks", 0) for r in put_replies]),
            "definition": "node.dht.put(kv:<own id>/bench-i, 32 B): lookup + STORE on k=20, "
            "all acknowledged (durably committed); success = at least one ack",
        },
        "get": {
            **op_summary(get_samples, get_cut),
            "network": op_summary(get_samples, get_cut),
            "definition": "node.dht.get from a random other node (always a network lookup)",
        },
        "churn": {
            "killed": len(killed),
            "killed_fraction": round(len(killed) / nodes, 3),
            "how": (
                "SIGKILL of the worker process hosting them (the kernel closes their sockets)"
                if args.churn_signal == "kill"
                else "SIGSTOP of the worker process hosting them (connections stay open, "
                "nothing answers: only timeouts tell)"
            ),
            "get": {**op_summary(churn_get, churn_get_cut), "wall_s": round(churn_get_wall, 3)},
            "put": {**op_summary(churn_put, churn_put_cut), "wall_s": round(churn_put_wall, 3)},
            "concurrency": CHURN_CONCURRENCY,
            "op_timeout_s": args.churn_op_timeout,
            "seconds_after_kill": round(churn_delay, 3),
        },
        "cpu": cpu_section(
            [s["cpu_s"] for s in (before_join, after_join, after_idle, after_put, after_get)],
            nodes,
            args.idle,
            len(put_samples),
            len(get_samples),
        ),
        "rpcs": {
            "per_join": round((after_join["rpcs"] - before_join["rpcs"]) / len(joins), 1),
            "lookups_per_join": round(
                (after_join["lookups"] - before_join["lookups"]) / len(joins), 1
            ),
            "per_put": round((after_put["rpcs"] - after_idle["rpcs"]) / len(put_samples), 1),
            "per_get": round((after_get["rpcs"] - after_put["rpcs"]) / len(get_samples), 1),
            "note": "DHT RPCs sent (FIND_NODE/FIND_VALUE/STORE), all nodes; background "
            "lookups (PEX, refresh) included",
        },
        "rss": {
            "kib_per_node": round(after_get["rss_kib"] / nodes, 1),
            "kib_per_node_incremental": round(
                (after_get["rss_kib"] - after_get["baseline_rss_kib"]) / nodes, 1
            ),
            "process_baseline_kib": round(after_get["baseline_rss_kib"] / len(workers), 1),
        },
        "sqlite_writes": {
            "calls": store_calls,
            "mean_ms": round(store_seconds / max(1, store_calls) * 1000, 3),
            "per_put": round(store_calls / max(1, len(put_samples)), 2),
            "note": "time on the event loop in RecordStore.put_detailed (commit + fsync) "
            "during the put and get phases",
        },
        "routing_table_p50": percentile(after_get["tables"], 50),
        "connections_p50": percentile(after_get["connections"], 50),
    }


def latency_summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 3),
        "p95_ms": round(percentile(samples, 95) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
        "n": len(samples),
    }


def cpu_section(
    snapshots: Sequence[float], nodes: int, idle_s: float, puts: int, gets: int
) -> dict[str, Any]:
    """CPU seconds of all nodes at: start, joined, after the idle window, puts done, gets done."""
    before, joined, idle, put_done, done = snapshots
    return {
        "join_s_per_node": round((joined - before) / nodes, 4),
        "idle_pct_per_node": round((idle - joined) / idle_s / nodes * 100, 3),
        "ops_s_per_node": round((done - idle) / nodes, 4),
        "total_s_per_node": round((done - before) / nodes, 4),
        "put_ms_per_op": round((put_done - idle) / max(1, puts) * 1000, 3),
        "get_ms_per_op": round((done - put_done) / max(1, gets) * 1000, 3),
        "definition": "CPU (user + sys) of every node process; *_per_op = the whole "
        "network's CPU during that phase divided by the operations in it",
    }


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- peers -------------------------------------------------------------------------------------


def peer_python(name: str, explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    home = VENVS / name
    python = home / "bin" / "python"
    if not python.exists():
        log(f"setting up {name} in {home} ...")
        venv.EnvBuilder(with_pip=True).create(home)
        requirement = PEERS[name][0]
        result = subprocess.run([python, "-m", "pip", "install", "-q", requirement], check=False)
        if result.returncode != 0:
            shutil.rmtree(home, ignore_errors=True)
            return None
    return python


def run_peer(name: str, python: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        str(python),
        str(HERE / "peers" / PEERS[name][1]),
        "--nodes",
        str(args.nodes),
        "--ops",
        str(args.ops),
        "--seed",
        str(args.seed),
        "--idle",
        str(args.idle),
        "--churn-puts",
        str(args.churn_puts),
        "--churn-op-timeout",
        str(args.churn_op_timeout),
        "--timeout",
        str(args.peer_timeout),
    ]
    if name == "libp2p":
        command += ["--phase-budget", str(args.libp2p_phase_budget)]
    log(f"{name}: running {' '.join(command[1:])}")
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=args.peer_timeout + 60, check=False
        )
    except subprocess.TimeoutExpired:  # subprocess.run kills the child
        return {"error": f"killed after {args.peer_timeout + 60:.0f} s"}
    if result.returncode != 0 or not result.stdout.strip():
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-800:]}"}
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"error": "no JSON on stdout: " + result.stdout[-300:]}


# -- report ------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    names = ["zeone", *[p for p in PEERS if p in results]]
    ours = results["zeone"]

    def cell(data: dict, path: str) -> Any:
        if "error" in data:
            return "n/a"
        value: Any = data
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return "n/a"
            value = value[part]
        return "n/a" if value is None else value

    def ratio(path: str, target: str = "") -> str:
        mine = cell(ours, path)
        parts = []
        for peer in names[1:]:
            theirs = cell(results[peer], path)
            if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs:
                parts.append(f"{_times(mine / theirs)} {_title(peer, {})}")
        if target:
            parts.append(target)
        return "; ".join(parts)

    def target_text(path: str, limit: float, unit: str = "ms") -> str:
        mine = cell(ours, path)
        if not isinstance(mine, int | float):
            return f"target <= {limit:g} {unit}"
        verdict = "met" if mine <= limit else f"missed by {mine - limit:.3g} {unit}"
        return f"target <= {limit:g} {unit}: {verdict}"

    def success(data: dict, path: str) -> str:
        rate = cell(data, path + ".success_rate")
        if not isinstance(rate, int | float):
            return "n/a"
        text = f"{rate:.1%}".replace(".0%", "%")
        cut = cell(data, path + ".not_done")
        if isinstance(cut, int) and cut:
            total = cut + cell(data, path + ".n")
            text += f" ({cut} of {total} cut off by the phase budget)"
        return text

    rows = [
        (
            "join p50 / p95 (ms)",
            "join.p50_ms",
            "join.p95_ms",
            target_text("join.p50_ms", TARGETS["join_p50_ms"]),
        ),
        ("time to bootstrap N nodes (s)", "bootstrap_total_s", None, ""),
        (
            "put p50 / p95 (ms)",
            "put.p50_ms",
            "put.p95_ms",
            target_text("put.p50_ms", TARGETS["put_p50_ms"]),
        ),
        ("put success", "put", None, ""),
        (
            "get p50 / p95 (ms)",
            "get.p50_ms",
            "get.p95_ms",
            target_text("get.p50_ms", TARGETS["get_p50_ms"]),
        ),
        ("get success", "get", None, ""),
        (
            "get p50 / p95, network lookups only (ms)",
            "get.network.p50_ms",
            "get.network.p95_ms",
            "",
        ),
        (
            "after 25% churn: get p50 / p95 (ms)",
            "churn.get.p50_ms",
            "churn.get.p95_ms",
            target_text("churn.get.p95_ms", TARGETS["churn_get_p95_ms"]) + " (p95)",
        ),
        ("after churn: get success", "churn.get", None, "target 100%"),
        ("after churn: put p50 / p95 (ms)", "churn.put.p50_ms", "churn.put.p95_ms", ""),
        ("after churn: put success", "churn.put", None, ""),
        ("CPU per node, join (s)", "cpu.join_s_per_node", None, ""),
        ("CPU per node, idle (%)", "cpu.idle_pct_per_node", None, ""),
        ("CPU per put / per get, whole network (ms)", "cpu.put_ms_per_op", "cpu.get_ms_per_op", ""),
        ("RSS per node (KiB)", "rss.kib_per_node", None, ""),
        ("RSS per node beyond the interpreter (KiB)", "rss.kib_per_node_incremental", None, ""),
    ]
    table_rows = []
    for label, first, second, note in rows:
        row = [label]
        is_success = label.endswith("success")
        for name in names:
            data = results[name]
            text = success(data, first) if is_success else str(cell(data, first))
            if second:
                text += f" / {cell(data, second)}"
            row.append(text)
        row.append(note if is_success else ratio(first, note))
        table_rows.append(row)
    headers = ["metric", *[_title(n, results[n]) for n in names], "ZEONE / peer; target"]
    table = markdown_table(headers, table_rows)
    settings = results["settings"]
    table += (
        f"\n\nN = {settings['nodes']} nodes on 127.0.0.1, each joining through node 0 in turn; "
        f"{settings['ops']} puts, then a get of each key from a random other node, one at a "
        f"time; then {ours.get('churn', {}).get('killed', '?')} nodes "
        f"({CHURN_FRACTION:.0%}, rounded up) stopped and every key read back, "
        f"{CHURN_CONCURRENCY} gets in flight, then {settings['churn_puts']} new puts. "
        f"ZEONE: {ours.get('processes')} processes of {ours.get('nodes_per_process')} nodes, "
        f"churn = {settings['churn_signal'].upper()} of the last one. "
        "Ratios are ZEONE's value divided by the peer's."
    )
    missing = [f"{n}: {results[n]['error']}" for n in names if "error" in results[n]]
    if missing:
        table += "\n\nNot measured: " + "; ".join(missing)
    return table


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def _title(name: str, data: dict[str, Any]) -> str:
    labels = {"zeone": "ZEONE", "kademlia": "kademlia", "opendht": "OpenDHT", "libp2p": "py-libp2p"}
    version = data.get("version")
    return f"{labels[name]} {version}" if version else labels[name]


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 nodes, 30 ops: a smoke run")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--processes", type=int, default=5, help="ZEONE worker processes")
    parser.add_argument("--idle", type=float, default=5.0, help="idle CPU window (s)")
    parser.add_argument("--churn-puts", type=int, default=16, help="puts after the churn")
    parser.add_argument("--churn-op-timeout", type=float, default=30.0)
    parser.add_argument(
        "--churn-signal",
        choices=["kill", "stop"],
        default="kill",
        help="ZEONE churn: SIGKILL the victims (default) or SIGSTOP them (silent peers)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phase-timeout", type=float, default=150.0)
    parser.add_argument("--peer-timeout", type=float, default=360.0, help="per peer script")
    parser.add_argument(
        "--only", default="zeone,kademlia,opendht,libp2p", help="comma-separated subset"
    )
    parser.add_argument("--libp2p-python", help="python of a venv with libp2p 0.8.1")
    parser.add_argument(
        "--libp2p-phase-budget", type=float, default=45.0, help="py-libp2p: seconds per phase"
    )
    parser.add_argument(
        "--sync",
        default="full",
        choices=["full", "normal", "off"],
        help="diagnosis only: SQLite synchronous mode of the ZEONE stores (default full)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="diagnosis only: cProfile dumps of the ZEONE workers"
    )
    parser.add_argument("--worker", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.ops, args.idle, args.churn_puts = 12, 30, 2.0, 8
        args.libp2p_phase_budget = 20.0
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.worker:
        trio.run(worker_main, Path(args.worker), args.sync)
        return
    only = set(args.only.split(","))
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "worker"}}
    results["zeone"] = trio.run(zeone_bench, args)
    for name in PEERS:
        if name not in only:
            continue
        explicit = args.libp2p_python if name == "libp2p" else None
        python = peer_python(name, explicit)
        if python is None:
            results[name] = {"error": f"pip install {PEERS[name][0]} failed"}
            log(f"{name}: did not install; skipped")
            continue
        results[name] = run_peer(name, python, args)
        if "error" in results[name]:
            log(f"{name}: {results[name]['error']}")
    table = report(results)
    path = write_results("dht-quick" if args.quick else "dht", results, table)
    print(table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
