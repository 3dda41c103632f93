"""Verified content distribution on ZEONE with an HTTP gateway and a popularity-driven cache."""

__version__ = "0.1.0"
