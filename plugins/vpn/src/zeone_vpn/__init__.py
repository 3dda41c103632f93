"""SOCKS5 entry and DHT-discovered exit nodes: route TCP and UDP through ZEONE."""

__version__ = "0.1.0"
