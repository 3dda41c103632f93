"""TLS 1.3 mimicry transport for ZEONE: looks like Chrome talking HTTPS, probers see a real site."""

__version__ = "0.1.0"
