"""The decentralized forum of seed 004 on ZEONE's DHT, with CLI and web UI."""

__version__ = "0.1.0"
