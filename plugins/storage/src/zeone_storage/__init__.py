"""Erasure-coded, audited, self-repairing file storage on ZEONE."""

__version__ = "0.1.0"
