"""The shared content model: ids, signed manifests, Merkle proofs, streaming import and verified
export, a durable chunk store, DHT provider records and the `/zeone/content/1` transfer protocol.

Used by the storage and CDN plugins; see docs/content.md.
"""

from zeone.content.cid import ContentId
from zeone.content.errors import ChunkVerificationError, ContentError, ContentNotFound
from zeone.content.importer import (
    BuiltContent,
    build_directory_manifest,
    build_manifest,
    scan_directory,
)
from zeone.content.manifest import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    Entry,
    Manifest,
    check_path,
)
from zeone.content.merkle import MerkleTree, merkle_root, root_from_proof, verify_proof
from zeone.content.protocol import (
    PROTOCOL,
    ContentServer,
    fetch_chunk,
    fetch_leaves,
    fetch_manifest,
    peer_fetch,
    query_have,
    register_content_protocol,
    request_chunk,
)
from zeone.content.providers import announce, content_provider_key, find_holders, stop_announcing
from zeone.content.store import ContentStore, StoredContent
from zeone.content.verify import Fetch, export_to_file, stream_verified, verify_chunk

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "PROTOCOL",
    "BuiltContent",
    "ChunkVerificationError",
    "ContentError",
    "ContentId",
    "ContentNotFound",
    "ContentServer",
    "ContentStore",
    "Entry",
    "Fetch",
    "Manifest",
    "MerkleTree",
    "StoredContent",
    "announce",
    "build_directory_manifest",
    "build_manifest",
    "check_path",
    "content_provider_key",
    "export_to_file",
    "fetch_chunk",
    "fetch_leaves",
    "fetch_manifest",
    "find_holders",
    "merkle_root",
    "peer_fetch",
    "query_have",
    "register_content_protocol",
    "request_chunk",
    "root_from_proof",
    "scan_directory",
    "stop_announcing",
    "stream_verified",
    "verify_chunk",
    "verify_proof",
]
