"""The GFW's published rules for fully encrypted traffic (Wu et al., USENIX Security 2023).

The paper infers that the Great Firewall inspects the first data packet a client sends and
*exempts* the connection from blocking if any of these hold; otherwise it may block it (in the
measurements, probabilistically, about a quarter of the time):

- Ex1: the average number of set bits per byte is <= 3.4 or >= 4.6 (random data is near 4);
- Ex2: the first six bytes are printable ASCII (0x20-0x7e);
- Ex3: more than half of the bytes are printable ASCII;
- Ex4: more than 20 contiguous bytes are printable ASCII;
- Ex5: the packet starts like TLS (0x16-0x17, 0x03, 0x00-0x09) or HTTP ("GET ", "PUT ",
  "POST ", "HEAD ").

`classify` applies them to one packet; `evaluate` summarises many. This is a model of the
published heuristics, not of the GFW itself, which may have changed since.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import attrs

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))
_PRINTABLE = bytes(range(0x20, 0x7F))
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{21,}")
_TLS = re.compile(rb"[\x16\x17]\x03[\x00-\x09]")
_HTTP = (b"GET ", b"PUT ", b"POST ", b"HEAD ")
POPCOUNT_LOW = 3.4
POPCOUNT_HIGH = 4.6


@attrs.frozen
class Verdict:
    """Which exemptions a first packet meets; `blocked` if none (the rule would fire)."""

    popcount: float
    exemptions: tuple[str, ...]

    @property
    def blocked(self) -> bool:
        return not self.exemptions


def classify(packet: bytes) -> Verdict:
    if not packet:
        raise ValueError("the rules apply to a non-empty first data packet")
    popcount = sum(packet.translate(_POPCOUNT)) / len(packet)
    printable = len(packet) - len(packet.translate(None, _PRINTABLE))
    exemptions = []
    if popcount <= POPCOUNT_LOW or popcount >= POPCOUNT_HIGH:
        exemptions.append("ex1-popcount")
    if len(packet) >= 6 and not packet[:6].translate(None, _PRINTABLE):
        exemptions.append("ex2-printable-prefix")
    if printable * 2 > len(packet):
        exemptions.append("ex3-mostly-printable")
    if _PRINTABLE_RUN.search(packet):
        exemptions.append("ex4-printable-run")
    if _TLS.match(packet) or packet.startswith(_HTTP):
        exemptions.append("ex5-protocol")
    return Verdict(round(popcount, 4), tuple(exemptions))


def evaluate(packets: Iterable[bytes]) -> dict[str, object]:
    """Share of packets the rule would block, and how often each exemption applied."""
    verdicts = [classify(p) for p in packets]
    if not verdicts:
        raise ValueError("no packets to evaluate")
    counts: Counter[str] = Counter(e for v in verdicts for e in v.exemptions)
    pops = sorted(v.popcount for v in verdicts)
    return {
        "packets": len(verdicts),
        "blocked": sum(v.blocked for v in verdicts),
        "blocked_share": round(sum(v.blocked for v in verdicts) / len(verdicts), 4),
        "exemptions": dict(sorted(counts.items())),
        "popcount_min": pops[0],
        "popcount_median": pops[len(pops) // 2],
        "popcount_max": pops[-1],
    }
