"""``zeone vpn status``: what the running node's VPN is doing, through its local API."""

from __future__ import annotations

from typing import Any

import click


def _rate(bps: float) -> str:
    for unit in ("B/s", "KB/s", "MB/s", "GB/s"):
        if bps < 1000 or unit == "GB/s":
            return f"{bps:.1f} {unit}"
        bps /= 1000
    return ""


def add_commands(cli: click.Group) -> None:
    from zeone.cli import CliState, print_json, print_rows

    @cli.group()
    def vpn() -> None:
        """SOCKS5 proxy through ZEONE exit nodes."""

    @vpn.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def status(state: CliState, as_json: bool) -> None:
        """Active flows, known exits and throughput of the running node."""
        data: dict[str, Any] = state.client().get_json("/vpn/status")
        if as_json:
            print_json(data)
            return
        entry, exit = data.get("entry"), data.get("exit")
        summary = [
            {"what": "SOCKS5 proxy", "value": (entry or {}).get("socks") or "off"},
            {"what": "exit node", "value": "yes" if exit else "no"},
            {"what": "active flows", "value": len(data["flows"])},
            {"what": "bytes sent / received",
             "value": f"{data['bytes_sent']} / {data['bytes_received']}"},
            {"what": "throughput out / in",
             "value": f"{_rate(data['throughput']['sent_bps'])} / "
                      f"{_rate(data['throughput']['received_bps'])}"},
        ]  # fmt: skip
        if exit:
            summary.append({"what": "exit policy", "value": "; ".join(exit["policy"])})
        print_rows("vpn", summary, ["what", "value"])
        if data["exits"]:
            rows = [dict(e, node_id=e["node_id"][:16]) for e in data["exits"]]
            print_rows("exits", rows, ["node_id", "up", "rtt_ms", "load", "failures"])
        if data["flows"]:
            rows = [dict(f, peer=f["peer"][:16]) for f in data["flows"]]
            print_rows("flows", rows, ["id", "role", "kind", "target", "peer", "sent",
                                       "received", "age_s"])  # fmt: skip
