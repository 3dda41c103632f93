"""Networking: transports, the in-memory network, the Noise channel and connection management."""
