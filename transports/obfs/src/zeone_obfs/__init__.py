"""Obfuscated transport for ZEONE: no fixed bytes on the wire, probe-resistant (obfs4-style)."""

__version__ = "0.1.0"
