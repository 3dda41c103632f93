"""VPN benchmark: ZEONE's SOCKS5 entry + exit vs direct, ssh -D, microsocks and dante, one run.

    python3 -m uv run python benchmarks/vpn.py [--quick]

Everything on loopback, in this one run, with the same client (curl) and the same HTTP server:

- throughput of one large download (1 GB; 200 MB with --quick), via each path;
- time to first byte (curl's time_starttransfer: proxy handshake + connect + request + first
  byte) of a tiny object, sequential requests, p50/p99, and the overhead over direct;
- 100 concurrent downloads: aggregate throughput, fairness (Jain's index of per-flow rates) and
  the peak resident memory of the proxy's processes.

ZEONE runs as two real node processes (`zeone run`) over the TCP transport with Noise: an exit
(`exit = true`, policy opening 127.0.0.1) and an entry whose SOCKS5 port curl uses, so a flow
crosses one ZEONE hop (entry -> exit). ssh -D uses a private sshd on a high port with a
throw-away key; microsocks and dante (danted) are Debian's. A peer that is not installed is
reported as skipped. Writes results/vpn.json and results/vpn.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, percentile, write_results

BLOCK = 8 * 1024 * 1024
STREAM_WINDOW = 0
"""``[network] stream_window`` for the ZEONE nodes (0: the kernel's default); --stream-window."""


# -- the origin server: minimal HTTP/1.1, sendfile from a random block ------------------------


def serve_http(port_holder: list[int], block_path: Path, ready: threading.Event) -> None:
    """GET /<n> answers n bytes. A thread per connection; the kernel copies (sendfile)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port_holder.append(listener.getsockname()[1])
    ready.set()

    def handle(conn: socket.socket) -> None:
        with conn, open(block_path, "rb") as block:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            size = int(request.split(b" ", 2)[1].strip(b"/") or b"0")
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size
            )
            left = size
            try:
                while left:
                    sent = os.sendfile(
                        conn.fileno(),
                        block.fileno(),
                        (size - left) % BLOCK,
                        min(left, BLOCK - (size - left) % BLOCK),
                    )
                    if sent == 0:
                        return
                    left -= sent
            except OSError:
                return

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# -- proxies ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


class Proxy:
    name = "?"
    processes: list[subprocess.Popen]

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes = []
        self.port = free_port()

    def start(self) -> None:
        raise NotImplementedError

    def curl_args(self) -> list[str]:
        return ["--socks5-hostname", f"127.0.0.1:{self.port}"]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Direct(Proxy):
    name = "direct"

    def start(self) -> None:
        pass

    def curl_args(self) -> list[str]:
        return []


class Zeone(Proxy):
    name = "ZEONE (entry + exit)"
    hops = 1

    def _node(self, name: str, vpn: dict[str, Any]) -> Path:
        directory = self.work / f"hops{self.hops}" / name
        subprocess.run(
            [
                sys.executable,
                "-m",
                "zeone",
                "--enable",
                "vpn",
                "init",
                "--dir",
                str(directory),
                "--listen",
                "tcp://127.0.0.1:0",
                "--api-bind",
                "127.0.0.1:0",
            ],
            check=True,
            capture_output=True,
            env=self.env,
        )
        config = directory / "zeone.toml"
        data = tomllib.loads(config.read_text())
        data["plugins"]["vpn"].update(vpn)
        data["node"]["log_level"] = "warning"
        if STREAM_WINDOW:
            data["network"]["stream_window"] = STREAM_WINDOW
        config.write_text(tomli_w.dumps(data))
        return directory

    def _run(self, directory: Path, *flags: str) -> dict[str, Any]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zeone",
                "--config",
                str(directory / "zeone.toml"),
                "run",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "stderr.log").open("w"),
            env=self.env,
        )
        self.processes.append(process)
        runtime = directory / "node.json"
        deadline = time.monotonic() + 30
        while not runtime.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((directory / "stderr.log").read_text())
            time.sleep(0.05)
        return json.loads(runtime.read_text())

    def start(self) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
        exit_dir = self._node(
            "exit", {"exit": True, "entry": False, "policy": ["allow 127.0.0.1/32:*", "allow *:*"]}
        )
        entry_settings: dict[str, Any] = {"socks_bind": f"127.0.0.1:{self.port}"}
        if self.hops > 1:
            entry_settings["hops"] = 2
        entry_dir = self._node("entry", entry_settings)
        seed = self._run(exit_dir)
        bootstrap = f"{seed['node_id']}@{seed['listen'][0]}"
        if self.hops > 1:
            self._run(
                self._node("relay", {"relay": True, "entry": False}), "--bootstrap", bootstrap
            )
        self._run(entry_dir, "--bootstrap", bootstrap)
        info = json.loads((entry_dir / "node.json").read_text())
        token = (entry_dir / "api.token").read_text().strip()
        deadline = time.monotonic() + 60
        while True:  # until the entry has found and probed the exit
            request = urllib.request.Request(
                info["api_url"] + "/vpn/status", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                status = json.loads(response.read())
            if self.hops == 1 and any(e["rtt_ms"] is not None for e in status["exits"]):
                break
            if (
                self.hops > 1
                and status["exits"]
                and any(r["rtt_ms"] is not None for r in status["relays"])
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the entry found no exit")
            time.sleep(0.2)


class Zeone2(Zeone):
    name = "ZEONE 2 hops (entry + relay + exit)"
    hops = 2


class SshD(Proxy):
    name = "ssh -D (OpenSSH)"

    def start(self) -> None:
        sshd, ssh = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh")
        if not Path(sshd).exists() or ssh is None:
            raise FileNotFoundError("sshd/ssh (apt-get install -y openssh-server)")
        d = self.work / "ssh"
        d.mkdir()
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
            )
        (d / "authorized_keys").write_text((d / "client.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd_port = free_port()
        (d / "sshd_config").write_text(
            f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
            "AllowTcpForwarding yes\n"
        )
        self.processes.append(
            subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(d / "sshd_config")], stderr=(d / "sshd.log").open("w")
            )
        )
        wait_port(sshd_port)
        user = (
            os.environ.get("USER")
            or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        )
        self.processes.append(
            subprocess.Popen(
                [
                    ssh,
                    "-N",
                    "-D",
                    f"127.0.0.1:{self.port}",
                    "-p",
                    str(sshd_port),
                    "-i",
                    str(d / "client"),
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "LogLevel=ERROR",
                    f"{user}@127.0.0.1",
                ],
                stdin=subprocess.DEVNULL,
            )
        )
        wait_port(self.port)
        time.sleep(0.5)  # the login completes after the local port is open

    def pids(self) -> list[int]:
        # the sshd serving the session is a child of the listening sshd
        pids = super().pids()
        out = subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        for child in list(children):
            more = subprocess.run(["pgrep", "-P", str(child)], capture_output=True, text=True)
            children += [int(p) for p in more.stdout.split()]
        return pids + children


class Microsocks(Proxy):
    name = "microsocks"

    def start(self) -> None:
        binary = shutil.which("microsocks")
        if binary is None:
            raise FileNotFoundError("microsocks (apt-get install -y microsocks)")
        self.processes.append(
            subprocess.Popen(
                [binary, "-i", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(self.port)


class Dante(Proxy):
    name = "dante (danted)"

    def start(self) -> None:
        binary = shutil.which("danted") or (
            "/usr/sbin/danted" if Path("/usr/sbin/danted").exists() else None
        )
        if binary is None:
            raise FileNotFoundError("danted (apt-get install -y dante-server)")
        config = self.work / "danted.conf"
        config.write_text(
            f"logoutput: {self.work / 'danted.log'}\n"
            f"internal: 127.0.0.1 port = {self.port}\nexternal: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: none\nuser.privileged: root\n"
            "user.unprivileged: nobody\n"
            "client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n"
            "socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n"
        )
        self.processes.append(
            subprocess.Popen(
                [binary, "-f", str(config), "-N", "1", "-p", str(self.work / "danted.pid")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(self.port)

    def pids(self) -> list[int]:
        pids = super().pids()
        out = subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True, text=True)
        return pids + [int(p) for p in out.stdout.split()]


# -- measurements -------------------------------------------------------------------------------

CURL_FORMAT = "%{time_starttransfer} %{time_total} %{size_download} %{speed_download}\n"


def curl(proxy: Proxy, url: str) -> list[float]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "600",
            *proxy.curl_args(),
            "-o",
            "/dev/null",
            "-w",
            CURL_FORMAT,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in out.stdout.split()]


class RssSampler:
    """Peak RSS (KiB) of a process set, sampled every 50 ms in a thread."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.peak = 0
        self.idle = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if values else 0.0


def measure(proxy: Proxy, base: str, big: int, ttfb_n: int, flows: int, flow_size: int):
    result: dict[str, Any] = {}
    curl(proxy, f"{base}/1000")  # warm-up: connections, caches
    ttfb = [curl(proxy, f"{base}/100")[0] for _ in range(ttfb_n)]
    result["ttfb"] = {
        "p50_ms": round(percentile(ttfb, 50) * 1000, 3),
        "p99_ms": round(percentile(ttfb, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(ttfb) * 1000, 3),
    }
    with RssSampler(proxy.pids) as rss:
        _, total, size, _ = curl(proxy, f"{base}/{big}")
    assert int(size) == big, f"{proxy.name}: got {size} of {big} bytes"
    result["throughput_MBps"] = round(big / total / 1e6, 1)
    result["rss_single_kib"] = rss.peak
    started = time.perf_counter()
    with RssSampler(proxy.pids) as rss:
        procs = [
            subprocess.Popen(
                [
                    "curl",
                    "-sS",
                    "--max-time",
                    "600",
                    *proxy.curl_args(),
                    "-o",
                    "/dev/null",
                    "-w",
                    CURL_FORMAT,
                    f"{base}/{flow_size}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(flows)
        ]
        outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - started
    rates, done = [], 0
    for out in outputs:
        fields = out.split()
        if len(fields) == 4 and int(float(fields[2])) == flow_size:
            done += 1
            rates.append(float(fields[3]))
    result["concurrent"] = {
        "flows": flows,
        "completed": done,
        "aggregate_MBps": round(done * flow_size / wall / 1e6, 1),
        "jain": round(jain(rates), 3),
        "min_MBps": round(min(rates) / 1e6, 2) if rates else None,
        "max_MBps": round(max(rates) / 1e6, 2) if rates else None,
        "rss_idle_kib": rss.idle,
        "rss_peak_kib": rss.peak,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller transfers for a smoke run")
    parser.add_argument(
        "--stream-window",
        type=int,
        default=0,
        help="[network] stream_window of the ZEONE nodes (default: kernel's)",
    )
    parser.add_argument("--only", default="", help="comma-separated path names to measure")
    args = parser.parse_args()
    global STREAM_WINDOW
    STREAM_WINDOW = args.stream_window
    big = 200_000_000 if args.quick else 1_000_000_000
    ttfb_n = 20 if args.quick else 100
    flows, flow_size = 100, (2_000_000 if args.quick else 10_000_000)

    with tempfile.TemporaryDirectory(prefix="zeone-vpn-bench-") as tmp:
        work = Path(tmp)
        block = work / "block.bin"
        block.write_bytes(os.urandom(BLOCK))
        port: list[int] = []
        ready = threading.Event()
        threading.Thread(target=serve_http, args=(port, block, ready), daemon=True).start()
        ready.wait()
        base = f"http://127.0.0.1:{port[0]}"

        results: dict[str, Any] = {}
        for cls in (Direct, Zeone, Zeone2, SshD, Microsocks, Dante):
            if args.only and cls is not Direct and cls.__name__.lower() not in args.only.split(","):
                continue
            proxy = cls(work)
            try:
                proxy.start()
            except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as exc:
                print(f"skipping {cls.name}: {exc}", file=sys.stderr)
                results[cls.name] = {"skipped": str(exc)}
                proxy.stop()
                continue
            try:
                print(f"measuring {proxy.name} ...", file=sys.stderr)
                results[proxy.name] = measure(proxy, base, big, ttfb_n, flows, flow_size)
                print(json.dumps(results[proxy.name]), file=sys.stderr)
            finally:
                proxy.stop()

    direct = results["direct"]
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, "skipped", "", "", "", "", ""])
            continue
        c = r["concurrent"]
        overhead = r["ttfb"]["p50_ms"] - direct["ttfb"]["p50_ms"]
        rows.append(
            [
                name,
                r["throughput_MBps"],
                f"{r['ttfb']['p50_ms']} / {r['ttfb']['p99_ms']}",
                "" if name == "direct" else f"{overhead:+.2f}",
                f"{c['aggregate_MBps']} ({c['completed']}/{c['flows']})",
                c["jain"],
                ""
                if name == "direct"
                else f"{c['rss_idle_kib'] // 1024} -> {c['rss_peak_kib'] // 1024}",
            ]
        )
    table = markdown_table(
        [
            "path",
            f"1 flow, {big // 1_000_000} MB (MB/s)",
            "TTFB p50 / p99 (ms)",
            "TTFB overhead p50 (ms)",
            f"{flows} flows x {flow_size // 1_000_000} MB (MB/s)",
            "Jain fairness",
            "proxy RSS idle -> peak (MiB)",
        ],
        rows,
    )
    zeone, ssh = results.get("ZEONE (entry + exit)", {}), results.get("ssh -D (OpenSSH)", {})
    notes = []
    if "throughput_MBps" in zeone and "throughput_MBps" in ssh:
        ratio = zeone["throughput_MBps"] / ssh["throughput_MBps"]
        notes.append(f"ZEONE / ssh -D single-flow throughput: {ratio:.2f}x (target >= 1x).")
    if "ttfb" in zeone:
        overhead = zeone["ttfb"]["p50_ms"] - direct["ttfb"]["p50_ms"]
        notes.append(
            f"ZEONE TTFB overhead p50: {overhead:.2f} ms for one ZEONE hop (entry -> exit), "
            "target <= 2 ms per hop."
        )
    two = results.get(Zeone2.name, {})
    if "ttfb" in two:
        overhead = two["ttfb"]["p50_ms"] - direct["ttfb"]["p50_ms"]
        notes.append(
            f"ZEONE 2-hop TTFB overhead p50: {overhead:.2f} ms ({overhead / 2:.2f} ms per hop)."
        )
    if args.stream_window:
        notes.append(f"ZEONE nodes ran with [network] stream_window = {args.stream_window}.")
    text = table + "\n\n" + "\n".join(notes)
    print(text)
    if args.only:
        return  # partial runs are not recorded
    name = "vpn" + (f"-window{args.stream_window}" if args.stream_window else "")
    write_results(
        name + ("-quick" if args.quick else ""),
        {"quick": args.quick, "stream_window": args.stream_window or None, "results": results},
        text,
    )


if __name__ == "__main__":
    main()
