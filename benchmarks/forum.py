"""Forum benchmark: propagation, replication throughput, availability and sync bytes.

    python3 -m uv run python benchmarks/forum.py [--quick]

What is measured (real ZEONE nodes with the forum plugin on the in-memory network, real clock,
Noise + mux + router as in production; only the sockets are in-process):

- propagation: a 20-node network where each node connects to 4 random others (the forum's push
  relays records across hops); `--posts` posts from random nodes; per post, the time until it is
  readable (applied to the store) at every node; p50/p99. Links have 5 ms one-way latency.
- throughput: node A holds `--messages` posts; node B pulls them with incremental sync
  (watermark) and, separately, A pushes a fresh batch of the same size to B as it is written;
  messages/s applied at B (decode, signature check, proof-of-work check, SQLite WAL fsync'd
  commit per batch, FTS indexing). The bar is Secure Scuttlebutt's published ~200 msg/s between
  local peers (x10 = 2000 msg/s). Both nodes share one process and one core; best of `--repeat`
  runs, because on a shared machine contention only ever lowers the number (the load average is
  recorded).
- availability (real nodes): after every post has replicated, 30% and then 50% of the nodes are
  stopped at once; share of posts still readable on a survivor.
- availability (placement model): 1000 nodes, 10000 threads each placed on exactly the
  replication target (5 ordinary / 10 popular) random holders, as the maintenance loop keeps them,
  30% / 50% removed at once *before* any re-replication; Monte Carlo.
- sync bytes: two stores of 100k records that differ by 1% (500 unique on each side): bytes of
  range-based reconciliation messages (both directions) plus the 1000 differing records, against
  sending every id.

SSB has no Python implementation on PyPI to run side by side; its figure is the published one.
Writes results/forum.json and results/forum.md (or forum-quick.*).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio.lowlevel
from common import markdown_table, percentile, write_results
from zeone_forum.reconcile import SyncIndex, initiate, process
from zeone_forum.records import ForumRecord, PostBody, ThreadBody
from zeone_forum.service import state

from zeone.identity import Identity
from zeone.testing import open_network
from zeone.wire.frame import encode_cbor

SETTINGS = {
    "plugins.forum.pow_bits": 8,
    "plugins.forum.new_identity_rate": 1_000_000,
    "plugins.forum.identity_rate": 1_000_000,
    "plugins.forum.sync_interval": 600.0,
    "plugins.forum.maintenance_interval": 600.0,
}


async def propagation(
    nodes_n: int, posts: int, rng: random.Random, verbose: bool = False
) -> dict[str, Any]:
    async with open_network(0, latency=0.005, seed=1) as net:
        nodes = await net.add_nodes(nodes_n, enable=["forum"], settings=SETTINGS)
        for i, node in enumerate(nodes):
            for j in rng.sample([k for k in range(nodes_n) if k != i], 4):
                await node.network.connect(nodes[j].node_id)
        arrivals: dict[bytes, list[float]] = {}

        def listener(record: ForumRecord) -> None:
            arrivals.setdefault(record.id, []).append(time.perf_counter())

        for node in nodes:
            state(node).store.listeners.append(listener)
        await trio.sleep(2)  # initial reconciliations on the new connections settle
        thread, _ = state(nodes[0]).new_thread("bench", "propagation")
        with trio.fail_after(30):
            while len(arrivals.get(thread.id, [])) < nodes_n:  # noqa: ASYNC110 - polling state shared by several nodes
                await trio.sleep(0.01)
        samples = []
        for i in range(posts):
            author = rng.choice(nodes)
            started = time.perf_counter()
            post = state(author).reply(thread.id, f"post {i}")
            with trio.fail_after(30):
                while len(arrivals.get(post.id, [])) < nodes_n:  # noqa: ASYNC110 - polling state shared by several nodes
                    await trio.sleep(0.002)
            samples.append(max(arrivals[post.id]) - started)
            if verbose:
                print(sorted(round((x - started) * 1000) for x in arrivals[post.id]))
            await trio.sleep(0.02)
        return {
            "nodes": nodes_n,
            "posts": posts,
            "p50_ms": round(percentile(samples, 50) * 1000, 1),
            "p99_ms": round(percentile(samples, 99) * 1000, 1),
        }


def mint(thread: bytes, count: int, authors: int, start_ms: int, tag: str) -> list[bytes]:
    """`count` posts by `authors` identities, spaced so the default per-author rate limits
    (5 records a minute for an identity a node has just met) accept every one."""
    identities = [Identity.from_seed(f"{tag}{i}".encode().ljust(32, b"_")) for i in range(authors)]
    wires = []
    slots: dict[tuple[int, int], int] = {}
    for i in range(count):
        author = identities[i % authors]
        created = start_ms + (i // authors) * 13_000 + i % authors
        body = PostBody(thread=thread, content=f"message {i} " + "lorem ipsum " * 10)
        key = (i % authors, created // 60_000)
        slot = slots[key] = slots.get(key, -1) + 1
        wires.append(ForumRecord.create(author, body, pow_bits=8, created=created, slot=slot).wire)
    return wires


async def throughput(messages: int) -> dict[str, Any]:
    """Default rate limits; records minted beforehand by many authors (minting is not timed)."""
    settings = {
        "plugins.forum.pow_bits": 8,
        "plugins.forum.sync_interval": 600.0,
        "plugins.forum.maintenance_interval": 600.0,
    }
    async with open_network(0, seed=2) as net:
        a, b, c = await net.add_nodes(3, enable=["forum"], settings=settings)
        forum_a = state(a)
        thread = ForumRecord.create(
            a.identity,
            ThreadBody(title="bench"),
            pow_bits=8,
            created=int((time.time() - 3 * 86400) * 1000),
        )
        forum_a.ingest_from(None, [thread.wire])
        base = thread.created + 1000
        authors = max(50, messages // 100)
        wires = mint(thread.id, messages, authors, base, "a")
        for start in range(0, len(wires), 512):
            forum_a.ingest_from(None, wires[start : start + 512])
        assert forum_a.store.counts()["posts"] == messages
        await trio.sleep(0.5)  # let A's push queue drain (no peers yet) before B connects
        started = time.perf_counter()
        stats = await state(b).sync_with(a.node_id, reconcile=False)
        pull_s = time.perf_counter() - started
        assert state(b).store.counts()["posts"] == messages
        # push: records applied at A are pushed to C and applied there as they arrive
        await a.network.connect(c.node_id)
        await state(c).sync_with(a.node_id, reconcile=False)
        fresh = mint(thread.id, messages, authors, base + 7, "c")
        started = time.perf_counter()
        for start in range(0, len(fresh), 256):
            forum_a.ingest_from(None, fresh[start : start + 256])
            await trio.lowlevel.checkpoint()
        with trio.fail_after(300):
            while state(c).store.counts()["posts"] < 2 * messages:  # noqa: ASYNC110 - polling
                await trio.sleep(0.005)
        push_s = time.perf_counter() - started
        return {
            "messages": messages,
            "authors": authors,
            "pull_msgs_per_s": round(stats["pulled"] / pull_s),
            "push_msgs_per_s": round(messages / push_s),
        }


async def availability_real(nodes_n: int, posts: int, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fraction in (0.3, 0.5):
        async with open_network(0, seed=3) as net:
            nodes = await net.add_nodes(nodes_n, enable=["forum"], settings=SETTINGS)
            for i, node in enumerate(nodes):
                for j in rng.sample([k for k in range(nodes_n) if k != i], 4):
                    await node.network.connect(nodes[j].node_id)
            thread, _ = state(nodes[0]).new_thread("avail", "x")
            with trio.fail_after(30):
                while not all(state(n).store.thread_exists(thread.id) for n in nodes):  # noqa: ASYNC110 - polling state shared by several nodes
                    await trio.sleep(0.01)
            ids = [thread.id]
            for i in range(posts):
                ids.append(state(rng.choice(nodes)).reply(thread.id, f"p{i}").id)
            with trio.fail_after(60):
                while not all(state(n).store.has(x) for n in nodes for x in ids):  # noqa: ASYNC110 - polling state shared by several nodes
                    await trio.sleep(0.05)
            victims = rng.sample(nodes, round(fraction * nodes_n))
            for node in victims:
                node.stop()
            for node in victims:
                await node.stopped.wait()
            survivors = [n for n in nodes if n not in victims]
            readable = sum(any(state(n).store.has(x) for n in survivors) for x in ids)
            out[f"removed_{int(fraction * 100)}pct"] = round(readable / len(ids), 4)
    return out


def availability_model(rng: random.Random, nodes_n: int = 1000, threads: int = 10000) -> dict:
    out = {}
    for factor in (5, 10):
        for fraction in (0.3, 0.5):
            lost = 0
            for _ in range(threads):
                holders = rng.sample(range(nodes_n), factor)
                removed = rng.sample(range(nodes_n), round(fraction * nodes_n))
                if set(holders) <= set(removed):
                    lost += 1
            out[f"r{factor}_removed_{int(fraction * 100)}pct"] = round(1 - lost / threads, 5)
    return out


def sync_bytes(total: int, diff_fraction: float, rng: random.Random) -> dict[str, Any]:
    identity = Identity.from_seed(b"s" * 32)
    sample = [
        ForumRecord.create(identity, PostBody(thread=b"t" * 32, content="m" * rng.randint(40, 400)))
        for _ in range(200)
    ]
    avg_record = sum(len(r.wire) for r in sample) / len(sample)
    diff = int(total * diff_fraction)
    base = 1_700_000_000_000
    common = [
        (base + rng.randrange(7 * 86400 * 1000), rng.randbytes(32))
        for _ in range(total - diff // 2)
    ]
    only_a = [(base + rng.randrange(7 * 86400 * 1000), rng.randbytes(32)) for _ in range(diff // 2)]
    only_b = [(base + rng.randrange(7 * 86400 * 1000), rng.randbytes(32)) for _ in range(diff // 2)]
    a, b = SyncIndex(common + only_a), SyncIndex(common + only_b)
    started = time.perf_counter()
    message = initiate(a)
    sent = len(encode_cbor(message))
    received = 0
    rounds = 0
    need: set[bytes] = set()
    have: set[bytes] = set()
    while message:
        rounds += 1
        reply = process(b, message, initiator=False).reply
        received += len(encode_cbor(reply))
        if not reply:
            break
        outcome = process(a, reply, initiator=True)
        need |= outcome.need
        have |= outcome.have
        message = outcome.reply
        sent += len(encode_cbor(message)) if message else 0
    elapsed = time.perf_counter() - started
    assert len(need) == len(only_b) and len(have) == len(only_a)
    records = round(avg_record * (len(need) + len(have)))
    return {
        "records_each": total,
        "differing": len(need) + len(have),
        "round_trips": rounds,
        "reconcile_bytes": sent + received,
        "record_bytes": records,
        "total_bytes": sent + received + records,
        "all_ids_bytes": 32 * total,
        "cpu_s": round(elapsed, 3),
    }


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(42)
    results: dict[str, Any] = {}
    results["propagation"] = await propagation(20, args.posts, rng)
    print("propagation", results["propagation"], flush=True)
    # The machine is shared: CPU contention only ever lowers throughput, so report the best of
    # `--repeat` runs (all runs are kept in the JSON).
    runs = [await throughput(args.messages) for _ in range(args.repeat)]
    results["throughput"] = max(runs, key=lambda r: r["pull_msgs_per_s"])
    results["throughput"]["push_msgs_per_s"] = max(r["push_msgs_per_s"] for r in runs)
    results["throughput_runs"] = runs
    results["load_average"] = os.getloadavg()
    print("throughput", results["throughput"], flush=True)
    results["availability_real"] = await availability_real(20, 20, rng)
    print("availability", results["availability_real"], flush=True)
    results["availability_model"] = availability_model(rng, threads=args.model_threads)
    results["sync"] = sync_bytes(args.sync_records, 0.01, rng)
    print("sync", results["sync"], flush=True)
    p, t, s = results["propagation"], results["throughput"], results["sync"]
    ar, am = results["availability_real"], results["availability_model"]
    rows = [
        ["post readable at all 20 nodes, p50 / p99", f"{p['p50_ms']} / {p['p99_ms']} ms", "-"],
        [
            "replication A→B, incremental pull",
            f"{t['pull_msgs_per_s']} msg/s",
            f"{t['pull_msgs_per_s'] / 200:.1f}x SSB (~200 msg/s)",
        ],
        [
            "replication A→B, live push",
            f"{t['push_msgs_per_s']} msg/s",
            f"{t['push_msgs_per_s'] / 200:.1f}x SSB",
        ],
        [
            "available after removing 30% / 50% (20 real nodes)",
            f"{ar['removed_30pct']:.2%} / {ar['removed_50pct']:.2%}",
            "-",
        ],
        [
            "available after removing 30% / 50% (model, r=5)",
            f"{am['r5_removed_30pct']:.3%} / {am['r5_removed_50pct']:.3%}",
            "-",
        ],
        [
            "available after removing 30% / 50% (model, r=10)",
            f"{am['r10_removed_30pct']:.3%} / {am['r10_removed_50pct']:.3%}",
            "-",
        ],
        [
            f"sync of 2x{s['records_each']} records differing by 1%",
            f"{s['total_bytes'] / 1e3:.0f} kB ({s['reconcile_bytes'] / 1e3:.0f} kB reconciliation"
            f" + {s['record_bytes'] / 1e3:.0f} kB records, {s['round_trips']} round trips)",
            f"{s['all_ids_bytes'] / s['reconcile_bytes']:.1f}x fewer than all ids",
        ],
    ]
    table = markdown_table(["measure", "ZEONE forum", "vs"], rows)
    name = "forum-quick" if args.quick else "forum"
    write_results(name, {"args": vars(args), **results}, table)
    print(table)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer posts and messages")
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (best reported)")
    parser.add_argument("--sync-records", type=int, default=100_000)
    parser.add_argument("--model-threads", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.posts, args.messages, args.sync_records, args.model_threads = 20, 1000, 20_000, 5_000
        args.repeat = 1
    return args


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
