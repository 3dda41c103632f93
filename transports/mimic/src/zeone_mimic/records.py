"""TLS 1.3-style record protection and the byte stream carried in application_data records.

Each record is what a TLS 1.3 stack emits for the suite the server chose (AES-GCM or
ChaCha20-Poly1305): header `17 03 03 len`, ciphertext of plaintext || inner content type,
nonce = IV xor sequence number, the header as associated data.
Records carry at most 2^14 bytes of plaintext, so bulk data goes out in 16,401-byte records just
like a browser download, and the Noise frames inside are never visible as lengths of their own
beyond what any TLS stream shows. One AEAD call per 16 KiB record: no per-byte Python.
"""

from __future__ import annotations

import struct

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from zeone_mimic import wire

TAG = 16
_HEADER = struct.Struct(">BHH")
CLOSE_NOTIFY = b"\x01\x00"
READ_SIZE = 1 << 17
_ROOM = wire.RECORD_HEADER + wire.MAX_CIPHERTEXT  # always room for one whole record
_BUFFER = READ_SIZE + _ROOM


class RecordError(trio.BrokenResourceError):
    """A record that does not decrypt or parse: the connection is unusable."""


class RecordProtection:
    """One direction's AEAD state: key, IV and the record sequence number."""

    __slots__ = ("_aead", "_iv", "seq")

    def __init__(self, key: bytes, iv: bytes, cipher_suite: int = 0x1301) -> None:
        self._aead = ChaCha20Poly1305(key) if cipher_suite == 0x1303 else AESGCM(key)
        self._iv = int.from_bytes(iv, "big")
        self.seq = 0

    def _nonce(self) -> bytes:
        nonce = (self._iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        return nonce

    def seal(self, inner_type: int, plaintext: bytes | memoryview) -> bytes:
        """A whole record (header included) protecting `plaintext` of at most 2^14 bytes."""
        header = _HEADER.pack(wire.APPLICATION_DATA, wire.LEGACY_VERSION, len(plaintext) + 1 + TAG)
        inner = bytes(plaintext) + bytes((inner_type,))
        return header + self._aead.encrypt(self._nonce(), inner, header)

    def seal_stream(self, data: memoryview, out: bytearray | None = None) -> memoryview:
        """Application data as consecutive full-size records, encrypted straight into `out`.

        `out` (grown if too small) is reused by the caller across sends: writing into memory
        that is already mapped and cached is measurably faster than a fresh buffer per send.
        """
        size = data.nbytes
        count = -(-size // wire.MAX_PLAINTEXT)
        total = size + count * (wire.RECORD_HEADER + 1 + TAG)
        if out is None:
            out = bytearray(total)
        elif len(out) < total:
            out.extend(bytes(total - len(out)))
        encrypt_into = self._aead.encrypt_into
        pos = 0
        with memoryview(out) as view:
            for start in range(0, size, wire.MAX_PLAINTEXT):
                chunk = data[start : start + wire.MAX_PLAINTEXT]
                n = chunk.nbytes
                length = n + 1 + TAG
                header = _HEADER.pack(wire.APPLICATION_DATA, wire.LEGACY_VERSION, length)
                view[pos : pos + wire.RECORD_HEADER] = header
                body = pos + wire.RECORD_HEADER
                # Plaintext || type is assembled where its ciphertext goes and encrypted in
                # place (OpenSSL's AEADs allow exactly overlapping input and output).
                view[body : body + n] = chunk
                out[body + n] = wire.APPLICATION_DATA
                encrypt_into(
                    self._nonce(), view[body : body + n + 1], header, view[body : body + length]
                )
                pos = body + length
        return memoryview(out)[:total]

    def open_into(self, header: memoryview, body: memoryview, out: memoryview) -> None:
        """Decrypt into `out` (exactly len(body) - 16 bytes): inner plaintext incl. type byte."""
        try:
            self._aead.decrypt_into(self._nonce(), body, header, out)
        except InvalidTag:
            raise RecordError("TLS record failed authentication") from None

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        """(inner content type, plaintext); RecordError if it was not sealed by the peer."""
        try:
            inner = self._aead.decrypt(self._nonce(), body, header)
        except InvalidTag:
            raise RecordError("TLS record failed authentication") from None
        if inner and inner[-1]:  # the usual case: no padding
            return inner[-1], inner[:-1]
        stripped = inner.rstrip(b"\x00")  # RFC 8446 §5.4 zero padding
        if not stripped:
            raise RecordError("TLS record has no inner content type")
        return stripped[-1], stripped[:-1]


class MimicStream(trio.abc.HalfCloseableStream):
    """A byte stream whose every byte travels inside protected application_data records.

    Inner handshake records (the fake NewSessionTickets a server sends) are skipped, a
    close_notify alert is end-of-file, and anything that fails to decrypt breaks the stream.
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        send: RecordProtection,
        receive: RecordProtection,
        buffered: bytes = b"",
    ) -> None:
        self.transport = transport
        self._send = send
        self._receive = receive
        # Received bytes live in one fixed buffer between _start and _end; the socket reads
        # straight into it (recv_into) and records are decrypted out of it in place.
        self._in = bytearray(max(_BUFFER, len(buffered) + _ROOM))
        self._in[: len(buffered)] = buffered
        self._start, self._end = 0, len(buffered)
        self._plain: bytes | bytearray = b""
        self._offset = 0
        self._eof_received = False
        self._pending_error: RecordError | None = None
        self._eof_sent = False
        self._sending = False
        self._receiving = False
        self._out = bytearray(_BUFFER)

    # -- sending --------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof() was called on this stream")
        self._sending = True
        try:
            view = memoryview(data)
            if not view.nbytes:
                await trio.lowlevel.checkpoint()
                return
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            records = self._send.seal_stream(view, self._out)
            try:
                await self.transport.send_all(records)
            finally:
                records.release()  # lets the buffer grow next time
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Send close_notify (the TLS way to end a stream) and half-close TCP if it can."""
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        self._eof_sent = True
        await self.transport.send_all(self._send.seal(wire.ALERT, CLOSE_NOTIFY))
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            await self.transport.send_eof()

    # -- receiving ------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            if max_bytes is not None and max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            while self._offset >= len(self._plain):
                if self._eof_received:
                    await trio.lowlevel.checkpoint()
                    return b""
                if self._pending_error is not None:
                    raise self._pending_error
                await self._fill()
            start, plain = self._offset, self._plain
            if start == 0 and (max_bytes is None or max_bytes >= len(plain)):
                self._plain, self._offset = b"", 0
                return plain
            end = len(plain) if max_bytes is None else min(len(plain), start + max_bytes)
            self._offset = end
            return plain[start:end]  # copies only what is returned, never the remainder
        finally:
            self._receiving = False

    async def _fill(self) -> None:
        """Wait for at least one whole record, then open every whole record buffered."""
        while True:
            available = self._end - self._start
            if available >= wire.RECORD_HEADER:
                _type, version, length = _HEADER.unpack_from(self._in, self._start)
                if length > wire.MAX_CIPHERTEXT or version != wire.LEGACY_VERSION:
                    raise RecordError(f"malformed TLS record header (length {length})")
                if available >= wire.RECORD_HEADER + length:
                    break
            if not await self._read_more():
                # TCP closed without close_notify: a truncation, but the layer above (Noise
                # frames) detects incomplete messages itself, so report a plain EOF.
                self._eof_received = True
                return
        self._plain, self._offset = self._open_buffered(), 0

    async def _read_more(self) -> bool:
        buf = self._in
        if len(buf) - self._end < _ROOM:  # move the partial record to the front
            size = self._end - self._start
            buf[:size] = buf[self._start : self._end]
            self._start, self._end = 0, size
        space = len(buf) - self._end
        transport = self.transport
        if isinstance(transport, trio.SocketStream):
            try:
                with memoryview(buf) as view:
                    n = await transport.socket.recv_into(view[self._end :], space)
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        else:
            data = await transport.receive_some(space)
            n = len(data)
            buf[self._end : self._end + n] = data
        self._end += n
        return n > 0

    def _open_buffered(self) -> bytearray:
        """Decrypt all complete records into one buffer, dropping inner type bytes in place.

        Record i is decrypted at the end of the plaintext so far, so its type byte is overwritten
        by record i+1: one AEAD call per record, no per-record copies.
        """
        buf = self._in
        spans: list[tuple[int, int, int]] = []
        pos, capacity, available = self._start, 0, self._end
        # Bad records are only an error once reached: bytes after a close_notify never count.
        error: RecordError | None = None
        while available - pos >= wire.RECORD_HEADER:
            content_type, version, length = _HEADER.unpack_from(buf, pos)
            if length > wire.MAX_CIPHERTEXT or version != wire.LEGACY_VERSION:
                error = RecordError(f"malformed TLS record header (length {length})")
                break
            if available - pos < wire.RECORD_HEADER + length:
                break
            if content_type == wire.APPLICATION_DATA:
                if length <= TAG:
                    error = RecordError("TLS record too short for its AEAD tag")
                    break
                capacity += length - TAG
            elif content_type != wire.CHANGE_CIPHER_SPEC or length != 1 or buf[pos + 5] != 1:
                error = RecordError(f"unexpected TLS record type {content_type} after handshake")
                break
            spans.append((content_type, pos, length))
            pos += wire.RECORD_HEADER + length
        out = bytearray(capacity)
        filled = 0
        consumed = self._start
        with memoryview(buf) as view, memoryview(out) as target:
            for content_type, start, length in spans:
                consumed = start + wire.RECORD_HEADER + length
                if content_type == wire.CHANGE_CIPHER_SPEC:
                    continue  # middlebox-compatibility CCS, meaningless in TLS 1.3
                size = length - TAG
                self._receive.open_into(
                    view[start : start + wire.RECORD_HEADER],
                    view[start + wire.RECORD_HEADER : consumed],
                    target[filled : filled + size],
                )
                inner_type = out[filled + size - 1]
                content = size - 1
                if inner_type == 0:  # RFC 8446 §5.4 zero padding: rare, so done simply
                    stripped = bytes(target[filled : filled + size]).rstrip(b"\x00")
                    if not stripped:
                        raise RecordError("TLS record has no inner content type")
                    inner_type, content = stripped[-1], len(stripped) - 1
                if inner_type == wire.APPLICATION_DATA:
                    filled += content
                elif inner_type == wire.ALERT:
                    self._eof_received = True  # close_notify; nothing after it counts
                    break
                elif inner_type != wire.HANDSHAKE:  # post-handshake tickets are skipped
                    raise RecordError(f"unexpected inner content type {inner_type}")
        self._start = consumed
        if self._start == self._end:
            self._start = self._end = 0
        del out[filled:]
        if error is not None and not self._eof_received:
            if filled:
                self._pending_error = error  # deliver the good data first
            else:
                raise error
        return out

    async def aclose(self) -> None:
        await self.transport.aclose()
