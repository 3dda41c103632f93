"""Storage plugin benchmark: coding pipeline vs raw pyeclib and zfec, end-to-end put/get on a
10-node network, and a durability simulation with churn (repair on vs off).

    python3 -m uv run python benchmarks/storage.py [--quick]

1. Coding throughput (one process, same data, same run): raw `pyeclib` encode/decode of every
   backend, the plugin's pipeline (encrypt + encode + Merkle roots of every fragment, and back:
   verify k roots + decode + decrypt) on one thread and on two, and `zfec` (Tahoe-LAFS's coder,
   installed into ~/.cache/zeone-bench/zfec, run as a subprocess on identical bytes).
2. End to end: 10 real nodes on the in-memory network (zeone.testing), `put` of a 1 GB file
   (64 MB with --quick) from one node and `get` from another: wall time, peak RSS of the process
   holding all ten nodes, payload bytes sent/received vs file size.
3. Durability: a Monte-Carlo simulation of nodes leaving for good (and being replaced by empty
   ones) with the plugin's policy (k, m, repair threshold, audit period), repair on vs off.

Writes results/storage.json and results/storage.md (storage-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, rss_kib, write_results
from zeone_storage.codec import DEFAULT_EC_TYPE, EC_TYPES, Cipher, StripeCodec, fragment_root

MIB = 1024 * 1024
VENV = Path.home() / ".cache" / "zeone-bench" / "zfec"
ZFEC_SCRIPT = r"""
import json, random, sys, time
import zfec
from zfec import easyfec
size, stripe, k, m, seed = map(int, sys.argv[1:6])
rng = random.Random(seed)
data = b"".join(rng.randbytes(min(1 << 24, size - i)) for i in range(0, size, 1 << 24))
stripes = [data[i:i + stripe] for i in range(0, size, stripe)]
enc, dec = easyfec.Encoder(k, k + m), easyfec.Decoder(k, k + m)
t = time.perf_counter()
encoded = [enc.encode(s) for s in stripes]
e = time.perf_counter() - t
keep = [1, 2, 4, 5][:k] if k == 4 else list(range(m, k + m))
t = time.perf_counter()
for s, shares in zip(stripes, encoded):
    padlen = len(shares[0]) * k - len(s)
    out = dec.decode([shares[i] for i in keep], keep, padlen)
    assert out == s
d = time.perf_counter() - t
print(json.dumps({"version": zfec.__version__, "encode_s": e, "decode_s": d}))
"""


def seeded_bytes(seed: int, size: int) -> bytes:
    """The same bytes in this process and in the zfec subprocess (randbytes caps at 256 MiB)."""
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(1 << 24, size - i)) for i in range(0, size, 1 << 24))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mb_s(size: int, seconds: float) -> float:
    return round(size / MIB / seconds, 1)


# -- 1. coding throughput ------------------------------------------------------------------------


def coding(size: int, stripe: int, k: int, m: int, seed: int, rounds: int) -> dict[str, Any]:
    """Best of `rounds` interleaved runs of every variant: the machine is shared, so the best
    run of each is the fairest comparison between them."""
    data = seeded_bytes(seed, size)
    stripes = [data[i : i + stripe] for i in range(0, size, stripe)]
    keep = [1, 2, 4, 5]  # two data fragments lost: decoding must really reconstruct
    cipher = Cipher(os.urandom(32), os.urandom(16))
    local = threading.local()

    def codec_here(ec_type: str) -> StripeCodec:
        cache = local.__dict__.setdefault("codecs", {})
        if ec_type not in cache:
            cache[ec_type] = StripeCodec(k, m, ec_type)
        return cache[ec_type]

    def raw_encode(ec_type: str, index: int) -> list[bytes]:
        return codec_here(ec_type).encode(stripes[index])

    def raw_decode(ec_type: str, index: int, fragments: list[bytes]) -> None:
        assert codec_here(ec_type).decode([fragments[i] for i in keep]) == stripes[index]

    def put_one(encrypt: bool, index: int) -> tuple[list[bytes], list[bytes]]:
        plain = stripes[index]
        sealed = cipher.encrypt(index, plain) if encrypt else plain
        encoded = codec_here(DEFAULT_EC_TYPE).encode_stripe(sealed)
        return encoded.fragments, encoded.roots

    def get_one(encrypt: bool, index: int, out: tuple[list[bytes], list[bytes]]) -> None:
        fragments, roots = out
        chosen = [fragments[i] for i in keep]
        for i, fragment in zip(keep, chosen, strict=True):
            assert fragment_root(fragment) == roots[i]
        plain = codec_here(DEFAULT_EC_TYPE).decode(chosen)
        if encrypt:
            plain = cipher.decrypt(index, plain)
        assert plain == stripes[index]

    variants: dict[str, tuple[Any, Any, int]] = {}
    for ec_type in EC_TYPES:
        variants[f"raw pyeclib {ec_type}"] = (
            functools.partial(raw_encode, ec_type),
            functools.partial(raw_decode, ec_type),
            1,
        )
    for encrypt in (False, True):
        for threads in (1, 2):
            label = f"pipeline ({'encrypted' if encrypt else 'plain'}, {threads} thread"
            label += "s)" if threads > 1 else ")"
            variants[label] = (
                functools.partial(put_one, encrypt),
                functools.partial(get_one, encrypt),
                threads,
            )
    best: dict[str, dict[str, float]] = {}
    pools = {1: ThreadPoolExecutor(1), 2: ThreadPoolExecutor(2)}
    try:
        for _round in range(rounds):
            for label, (encode, decode, threads) in variants.items():
                pool = pools[threads]
                list(pool.map(encode, range(min(threads, len(stripes)))))  # warm up the threads
                t = time.perf_counter()
                outs = list(pool.map(encode, range(len(stripes))))
                enc = time.perf_counter() - t
                t = time.perf_counter()
                list(pool.map(decode, range(len(stripes)), outs))
                dec = time.perf_counter() - t
                mine = best.setdefault(label, {"encode_mb_s": 0.0, "decode_mb_s": 0.0})
                mine["encode_mb_s"] = max(mine["encode_mb_s"], mb_s(size, enc))
                mine["decode_mb_s"] = max(mine["decode_mb_s"], mb_s(size, dec))
        for label, value in best.items():
            log(f"{label}: {value}")
    finally:
        for pool in pools.values():
            pool.shutdown()
    zfec = {}
    for _round in range(rounds):
        one = run_zfec(size, stripe, k, m, seed)
        if "error" in one:
            zfec = one
            break
        zfec = {
            "version": one["version"],
            "encode_mb_s": max(zfec.get("encode_mb_s", 0), one["encode_mb_s"]),
            "decode_mb_s": max(zfec.get("decode_mb_s", 0), one["decode_mb_s"]),
        }
    return {
        "bytes": size, "stripe": stripe, "k": k, "m": m, "rounds": rounds,
        "variants": best, "zfec": zfec,
    }  # fmt: skip


def zfec_python() -> Path | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        log(f"setting up zfec in {VENV} ...")
        venv.EnvBuilder(with_pip=True).create(VENV)
        done = subprocess.run([python, "-m", "pip", "install", "-q", "zfec"], check=False)
        if done.returncode != 0:
            return None
    return python


def run_zfec(size: int, stripe: int, k: int, m: int, seed: int) -> dict[str, Any]:
    python = zfec_python()
    if python is None:
        return {"error": "zfec did not install"}
    args = [str(python), "-c", ZFEC_SCRIPT, str(size), str(stripe), str(k), str(m), str(seed)]
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    raw = json.loads(done.stdout)
    out = {
        "version": raw["version"],
        "encode_mb_s": mb_s(size, raw["encode_s"]),
        "decode_mb_s": mb_s(size, raw["decode_s"]),
    }
    log(f"zfec: {out}")
    return out


# -- 2. end to end -------------------------------------------------------------------------------


async def end_to_end(size: int, nodes: int) -> dict[str, Any]:
    from zeone_storage.plugin import storage_of

    from zeone.testing import TestNetwork

    peak = {"rss": rss_kib()}
    base_rss = peak["rss"]
    with tempfile.TemporaryDirectory(prefix="zeone-storage-bench-") as tmp:
        root = Path(tmp)
        source = root / "big.bin"
        with source.open("wb") as f:  # written in 16 MiB pieces: the generator is bounded too
            rng = random.Random(7)
            left = size
            while left:
                piece = min(left, 16 * MIB)
                f.write(rng.randbytes(piece))
                left -= piece
        async with trio.open_nursery() as nursery:

            async def sample() -> None:
                while True:
                    peak["rss"] = max(peak["rss"], rss_kib())
                    await trio.sleep(0.05)

            nursery.start_soon(sample)
            net = TestNetwork(nursery, root / "net")
            settings = {"plugins.storage.audit_interval": 0.0}
            members = await net.add_nodes(nodes, enable=["storage"], settings=settings)
            await net.connect_all()
            before_put = peak["rss"] = rss_kib()
            curve: dict[str, list[tuple[int, int]]] = {"put": [], "get": []}

            def tracker(phase: str) -> Any:
                done = [0]

                def progress(n: int) -> None:  # RSS every 64 MiB: flat means bounded
                    before = done[0] // (64 * MIB)
                    done[0] += n
                    if done[0] // (64 * MIB) != before:
                        curve[phase].append((done[0] // MIB, rss_kib() // 1024))

                return progress

            t = time.perf_counter()
            put = await storage_of(members[0]).put(source, progress=tracker("put"))
            put_s = time.perf_counter() - t
            put_peak = peak["rss"]
            log(f"put {size / MIB:.0f} MiB in {put_s:.1f} s")
            peak["rss"] = rss_kib()
            t = time.perf_counter()
            got = await storage_of(members[-1]).get(
                put["id"], root / "copy.bin", progress=tracker("get")
            )
            get_s = time.perf_counter() - t
            get_peak = peak["rss"]
            log(f"get in {get_s:.1f} s")
            same = await trio.to_thread.run_sync(_same_file, source, root / "copy.bin")
            for node in members:
                await storage_of(node).wait_announced()
            await net.stop()
            nursery.cancel_scope.cancel()
    return {
        "bytes": size,
        "nodes": nodes,
        "k": put["k"],
        "m": put["m"],
        "stripes": put["stripes"],
        "encrypted": put["encrypted"],
        "put_seconds": round(put_s, 2),
        "put_mb_s": mb_s(size, put_s),
        "get_seconds": round(get_s, 2),
        "get_mb_s": mb_s(size, get_s),
        "identical": same,
        "bytes_sent_put": put["bytes_sent"],
        "bytes_received_get": got["bytes_received"],
        "put_wire_ratio": round(put["bytes_sent"] / size, 3),
        "get_wire_ratio": round(got["bytes_received"] / size, 3),
        "rss_before_kib": base_rss,
        "rss_network_up_kib": before_put,
        "rss_peak_put_kib": put_peak,
        "rss_peak_get_kib": get_peak,
        "rss_mib_by_mib_done": curve,
    }


def e2e_subprocess(mib: int, nodes: int) -> dict[str, Any]:
    """The same run in a child with MALLOC_ARENA_MAX=2: separates glibc's per-thread arenas
    (freed 1 MiB buffers kept per thread) from memory the pipeline actually holds."""
    command = [sys.executable, __file__, "--e2e-only", "--e2e-mib", str(mib)]
    command += ["--nodes", str(nodes)]
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    return json.loads(done.stdout)


def _same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(16 * MIB), fb.read(16 * MIB)
            if x != y:
                return False
            if not x:
                return True


# -- 3. durability -------------------------------------------------------------------------------


def durability(
    *,
    nodes: int,
    files: int,
    stripes: int,
    k: int,
    m: int,
    threshold: int,
    lifetime_days: float,
    days: int,
    audit_hours: float,
    seed: int,
) -> dict[str, Any]:
    """Hourly steps; each node leaves for good with probability 1/lifetime and is replaced by an
    empty node. With repair, the publisher notices losses at its next audit (every
    `audit_hours`) and rebuilds stripes at or below `threshold` onto other live nodes."""
    n = k + m
    out: dict[str, Any] = {}
    modes = {"repair_on": audit_hours, "repair_on_hourly_audits": 1, "repair_off": 0}
    for mode, every in modes.items():
        repair = every > 0
        rng = random.Random(seed)
        # placement[f][s] = list of node slots (a slot's generation changes when its node leaves)
        generation = [0] * nodes
        placement = []
        for _ in range(files):
            placement.append(
                [[(slot, 0) for slot in rng.sample(range(nodes), n)] for _ in range(stripes)]
            )
        leave = 1 / (lifetime_days * 24)
        series = []
        repaired = 0
        for hour in range(1, days * 24 + 1):
            for slot in range(nodes):
                if rng.random() < leave:
                    generation[slot] += 1
            if repair and hour % every == 0:
                for f in placement:
                    for s, frags in enumerate(f):
                        alive = [(sl, g) for sl, g in frags if generation[sl] == g]
                        if k <= len(alive) <= threshold:
                            used = {sl for sl, _ in alive}
                            free = [sl for sl in range(nodes) if sl not in used]
                            new = rng.sample(free, n - len(alive))
                            f[s] = alive + [(sl, generation[sl]) for sl in new]
                            repaired += n - len(alive)
            if hour % 24 == 0:
                ok = sum(
                    all(sum(generation[sl] == g for sl, g in frags) >= k for frags in f)
                    for f in placement
                )
                series.append(round(ok / files, 4))
        out[mode] = {
            "recoverable_by_day": series,
            "fragments_rebuilt": repaired,
        }
    out.update(
        nodes=nodes, files=files, stripes_per_file=stripes, k=k, m=m, threshold=threshold,
        mean_node_lifetime_days=lifetime_days, days=days, audit_every_hours=audit_hours,
    )  # fmt: skip
    return out


# -- report --------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    c = results["coding"]
    raw = c["variants"][f"raw pyeclib {DEFAULT_EC_TYPE}"]
    rows = []
    for label, r in c["variants"].items():
        ratio = ""
        if label.startswith("pipeline"):
            ratio = (
                f"{r['encode_mb_s'] / raw['encode_mb_s']:.0%} / "
                f"{r['decode_mb_s'] / raw['decode_mb_s']:.0%}"
            )
        rows.append([label, r["encode_mb_s"], r["decode_mb_s"], ratio])
    z = c["zfec"]
    if "error" in z:
        rows.append(["zfec", "n/a", "n/a", z["error"][:80]])
    else:
        rows.append([f"zfec {z['version']} (Tahoe-LAFS)", z["encode_mb_s"], z["decode_mb_s"], ""])
    table = (
        f"### Coding, {c['bytes'] // MIB} MiB in {c['stripe'] // MIB} MiB stripes, "
        f"k={c['k']} m={c['m']} (decode with 2 data fragments lost), best of {c['rounds']}\n\n"
        + markdown_table(
            ["coder", "encode MB/s", "decode MB/s", f"enc / dec vs raw {DEFAULT_EC_TYPE}"], rows
        )
    )
    e = results["end_to_end"]
    table += (
        f"\n\n### End to end, {e['bytes'] // MIB} MiB on {e['nodes']} nodes (one process, "
        f"in-memory network), k={e['k']} m={e['m']}, encrypted={e['encrypted']}\n\n"
        + markdown_table(
            ["", "wall s", "MB/s", "payload bytes / file size", "peak RSS (all 10 nodes)"],
            [
                [
                    "put",
                    e["put_seconds"],
                    e["put_mb_s"],
                    e["put_wire_ratio"],
                    f"{e['rss_peak_put_kib'] // 1024} MiB",
                ],
                [
                    "get",
                    e["get_seconds"],
                    e["get_mb_s"],
                    e["get_wire_ratio"],
                    f"{e['rss_peak_get_kib'] // 1024} MiB",
                ],
            ],
        )
        + f"\n\nRSS with the network up, before the put: {e['rss_network_up_kib'] // 1024} MiB; "
        f"file identical after get: {e['identical']}. RSS (MiB) every 64 MiB of progress, "
        f"default glibc malloc: put {_curve(e, 'put')}; get {_curve(e, 'get')}."
    )
    a = results.get("end_to_end_arena_max_2", {})
    if "rss_peak_put_kib" in a:
        table += (
            f"\n\nSame run with MALLOC_ARENA_MAX=2: put {a['put_seconds']} s, peak RSS "
            f"{a['rss_peak_put_kib'] // 1024} MiB; get {a['get_seconds']} s, peak RSS "
            f"{a['rss_peak_get_kib'] // 1024} MiB; RSS every 64 MiB: put {_curve(a, 'put')}; "
            f"get {_curve(a, 'get')}."
        )
    d = results["durability"]
    days = d["days"]
    marks = sorted({1, days // 4, days // 2, 3 * days // 4, days})
    rows = []
    labels = {
        "repair_on": f"repair on, audits every {d['audit_every_hours']} h",
        "repair_on_hourly_audits": "repair on, hourly audits",
        "repair_off": "repair off",
    }
    for mode, name in labels.items():
        series = d[mode]["recoverable_by_day"]
        rows.append([name, *(f"{series[day - 1]:.1%}" for day in marks),
                     d[mode]["fragments_rebuilt"]])  # fmt: skip
    table += (
        f"\n\n### Durability: {d['files']} files x {d['stripes_per_file']} stripes on "
        f"{d['nodes']} nodes, mean node lifetime {d['mean_node_lifetime_days']} days, "
        f"k={d['k']} m={d['m']}, repair at <= {d['threshold']} alive, audits every "
        f"{d['audit_every_hours']} h\n\n"
        + markdown_table(
            ["files recoverable", *(f"day {day}" for day in marks), "fragments rebuilt"], rows
        )
    )
    return table


def _curve(run: dict[str, Any], phase: str) -> str:
    points = run["rss_mib_by_mib_done"][phase]
    return " ".join(str(rss) for _done, rss in points[:: max(1, len(points) // 8)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MB end to end, smaller runs")
    parser.add_argument("--coding-mib", type=int, default=256)
    parser.add_argument("--e2e-mib", type=int, default=1024)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end run")
    args = parser.parse_args()
    if args.quick:
        args.coding_mib, args.e2e_mib = 64, 64
    results: dict[str, Any] = {}
    if args.e2e_only:
        print(json.dumps(trio.run(end_to_end, args.e2e_mib * MIB, args.nodes), indent=1))
        return
    results["coding"] = coding(args.coding_mib * MIB, 4 * MIB, 4, 2, seed=1, rounds=args.rounds)
    results["end_to_end"] = trio.run(end_to_end, args.e2e_mib * MIB, args.nodes)
    results["end_to_end_arena_max_2"] = e2e_subprocess(args.e2e_mib, args.nodes)
    results["durability"] = durability(
        nodes=100, files=200 if args.quick else 500, stripes=8, k=4, m=2, threshold=5,
        lifetime_days=30, days=90 if args.quick else 365, audit_hours=6, seed=3,
    )  # fmt: skip
    table = report(results)
    path = write_results("storage-quick" if args.quick else "storage", results, table)
    print(table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
