"""Errors of the content layer: every problem with a manifest, id, chunk or store is one."""

from __future__ import annotations

from zeone.errors import ZeoneError


class ContentError(ZeoneError):
    """Malformed or unverifiable content: a bad id, manifest, proof, chunk or store request."""


class ContentNotFound(ContentError):
    """The content (or the chunk) is not held here."""


class ChunkVerificationError(ContentError):
    """A chunk did not match the manifest: names the chunk index and where it came from, so the
    caller can drop that source and retry the chunk elsewhere."""

    def __init__(self, index: int, source: str, reason: str) -> None:
        where = f" from {source}" if source else ""
        super().__init__(f"chunk {index}{where} is invalid: {reason}")
        self.index = index
        self.source = source
        self.reason = reason
