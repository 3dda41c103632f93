"""ZEONE: a plugin-based peer-to-peer node on Trio."""
