"""HTTP/WebSocket transport for ZEONE: a WebSocket on a secret path behind any reverse proxy."""

__version__ = "0.1.0"
