"""Encryption stage in the age file format (age-encryption.org/v1).

An age file is a text header followed by a binary payload::

    age-encryption.org/v1
    -> X25519 <ephemeral share>          one stanza per recipient: the file key, wrapped
    <wrapped file key>
    --- <HMAC of the header>
    <16-byte nonce><64 KiB chunks, each ChaCha20-Poly1305 sealed, the last one flagged>

Every chunk is authenticated on its own and carries its position and whether it
is the last, so the payload streams with flat memory in both directions, and a
flipped byte, a reordered chunk or a cut at any point fails the read. The files
written here decrypt with the ``age`` command-line tool and the files it writes
decrypt here. Recipients are X25519 keys or one passphrase (scrypt).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dbbackup.errors import DataError, PermissionDeniedError
from dbbackup.pipeline.age_recipients import DAMAGED_HINT as _DAMAGED_HINT
from dbbackup.pipeline.age_recipients import (
    FILE_KEY_SIZE,
    MAX_SCRYPT_WORK_FACTOR,
    PASSPHRASE_FINGERPRINT,
    SCRYPT_WORK_FACTOR,
    TAG_SIZE,
    Identity,
    Recipient,
    ScryptIdentity,
    ScryptRecipient,
    Stanza,
    X25519Identity,
    X25519Recipient,
    b64_decode,
    b64_encode,
    hkdf,
    x25519_fingerprint,
)
from dbbackup.pipeline.stream import CHUNK_SIZE, ByteSink, ByteSource, read_chunk, write_all

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "FILE_KEY_SIZE",
    "MAX_SCRYPT_WORK_FACTOR",
    "PASSPHRASE_FINGERPRINT",
    "SCRYPT_WORK_FACTOR",
    "TAG_SIZE",
    "Identity",
    "NoMatchingIdentity",
    "Recipient",
    "RecipientGroup",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "armor",
    "dearmor",
    "decrypt_bytes",
    "decrypting_reader",
    "encrypt_bytes",
    "encrypting_writer",
    "x25519_fingerprint",
]

VERSION_LINE = b"age-encryption.org/v1"
PAYLOAD_CHUNK = 64 * 1024
NONCE_SIZE = 16
MAX_HEADER = 1 << 20

_ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_END = "-----END AGE ENCRYPTED FILE-----"


class NoMatchingIdentity(PermissionDeniedError):
    """None of the identities given can open the file (exit 77)."""


# --------------------------------------------------------------------------- header


def _header_mac(file_key: bytes, header_without_mac: bytes) -> bytes:
    return hmac.new(hkdf(file_key, b"", b"header"), header_without_mac, hashlib.sha256).digest()


class RecipientGroup:
    """The recipients one object is encrypted to, and the header that says so.

    Each object gets a fresh random file key, except for a passphrase: scrypt is
    deliberately slow, so all objects of a run share one file key and header,
    and only the payload nonce (16 random bytes, which also keys the payload)
    differs. Object swaps inside a set are caught by the manifest's checksums.
    """

    def __init__(self, recipients: Sequence[Recipient]) -> None:
        if not recipients:
            raise ValueError("no recipients")
        if len(recipients) > 1 and any(isinstance(r, ScryptRecipient) for r in recipients):
            raise ValueError("a passphrase cannot be combined with other recipients")
        self.recipients = tuple(recipients)
        self.fingerprints = tuple(sorted({r.fingerprint for r in recipients}))
        self._reuse = isinstance(recipients[0], ScryptRecipient)
        self._shared: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, object]:
        """What the manifest records for an object: the format and fingerprints, never keys."""
        return {"format": "age", "recipients": list(self.fingerprints)}

    def new_header(self) -> tuple[bytes, bytes]:
        """A file key and the complete header that carries it to every recipient."""
        if not self._reuse:
            return self._make_header()
        with self._lock:
            if self._shared is None:
                self._shared = self._make_header()
            return self._shared

    def _make_header(self) -> tuple[bytes, bytes]:
        file_key = os.urandom(FILE_KEY_SIZE)
        parts = [VERSION_LINE + b"\n", *(r.wrap(file_key).encode() for r in self.recipients), b"---"]
        head = b"".join(parts)
        return file_key, head + b" " + b64_encode(_header_mac(file_key, head)).encode("ascii") + b"\n"


@dataclass(frozen=True)
class _Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    signed: bytes  # the header up to and including "---"


def _parse_header(data: bytes, name: str) -> _Header:
    """Parse a complete header (ending in its MAC line); raise :class:`DataError` if malformed."""
    lines = data.split(b"\n")
    if lines[0] != VERSION_LINE:
        raise DataError(f"{name}: not an age file (or its header is damaged)", hint=_DAMAGED_HINT)
    stanzas: list[Stanza] = []
    index = 1
    try:
        while lines[index].startswith(b"-> "):
            args = lines[index][3:].decode("ascii").split(" ")
            if not all(arg and all(33 <= ord(c) <= 126 for c in arg) for arg in args):
                raise ValueError("bad stanza arguments")
            body_lines: list[bytes] = []
            while True:
                index += 1
                body_lines.append(lines[index])
                if len(lines[index]) > 64:
                    raise ValueError("body line too long")
                if len(lines[index]) < 64:
                    break
            index += 1
            body = b64_decode(b"".join(body_lines).decode("ascii"))
            stanzas.append(Stanza(args[0], tuple(args[1:]), body))
        footer = lines[index]
        if not footer.startswith(b"--- ") or index != len(lines) - 2 or lines[-1] != b"":
            raise ValueError("no MAC line")
        mac = b64_decode(footer[4:].decode("ascii"))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: the age header is malformed ({exc})", hint=_DAMAGED_HINT) from exc
    if not stanzas or len(mac) != 32:
        raise DataError(f"{name}: the age header is malformed", hint=_DAMAGED_HINT)
    signed = data[: len(data) - len(footer) - 1 + 3]
    return _Header(tuple(stanzas), mac, signed)


def _open_header(header: _Header, identities: Sequence[Identity], name: str) -> bytes:
    for identity in identities:
        file_key = identity.unwrap(header.stanzas)
        if file_key is not None:
            break
    else:
        tried = ", ".join(sorted({i.fingerprint for i in identities})) or "none"
        raise NoMatchingIdentity(
            f"{name}: none of the available identities can decrypt it (identities tried: {tried})",
            hint="give the identity the set was encrypted to: encryption.identity_file, "
            "`dbbackup secret set age-identity`, or the systemd credential age-identity",
        )
    if len(file_key) != FILE_KEY_SIZE or not hmac.compare_digest(
        _header_mac(file_key, header.signed), header.mac
    ):
        raise DataError(f"{name}: the age header fails its authentication", hint=_DAMAGED_HINT)
    return file_key


def _payload_cipher(file_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# --------------------------------------------------------------------------- writing


class _EncryptingRaw(io.RawIOBase):
    """Seals 64 KiB chunks into ``sink``; a full chunk is held back until it is known not to be the last."""

    def __init__(self, sink: ByteSink, group: RecipientGroup) -> None:
        super().__init__()
        self._sink = sink
        file_key, header = group.new_header()
        nonce = os.urandom(NONCE_SIZE)
        self._cipher = _payload_cipher(file_key, nonce)
        self._pending = bytearray()
        self._counter = 0
        write_all(sink, header + nonce)

    def writable(self) -> bool:
        return True

    def _seal(self, chunk: ReadableBuffer, *, last: bool) -> None:
        write_all(self._sink, self._cipher.encrypt(_chunk_nonce(self._counter, last), bytes(chunk), None))
        self._counter += 1

    def write(self, data: ReadableBuffer, /) -> int:
        if self.closed:
            raise ValueError("write to a closed encrypting writer")
        with memoryview(data) as whole:
            view = whole.cast("B")
            size, position = len(view), 0
            if not size:
                return 0
            pending = self._pending
            if len(pending) == PAYLOAD_CHUNK:
                self._seal(pending, last=False)
                pending.clear()
            elif pending:
                position = min(PAYLOAD_CHUNK - len(pending), size)
                pending += view[:position]
                if position == size:
                    return size
                self._seal(pending, last=False)
                pending.clear()
            while size - position > PAYLOAD_CHUNK:
                self._seal(view[position : position + PAYLOAD_CHUNK], last=False)
                position += PAYLOAD_CHUNK
            pending += view[position:]
            return size

    def finish(self) -> None:
        """Seal the last chunk (empty only for an empty file) and flush ``sink``."""
        self._seal(self._pending, last=True)
        self._pending.clear()
        sink_flush = getattr(self._sink, "flush", None)
        if callable(sink_flush):
            sink_flush()


@contextmanager
def encrypting_writer(sink: ByteSink, group: RecipientGroup) -> Iterator[BinaryIO]:
    """Yield a writable file object whose bytes reach ``sink`` as an age file.

    On normal exit the last chunk is sealed and ``sink`` flushed, not closed. If
    the block raises, the file is left without its last chunk, so any reader
    reports it as truncated.
    """
    raw = _EncryptingRaw(sink, group)
    buffered = io.BufferedWriter(raw, buffer_size=CHUNK_SIZE)
    try:
        yield buffered
        buffered.flush()
        raw.finish()
    finally:
        raw.close()
        buffered.close()


# --------------------------------------------------------------------------- reading


class _DecryptingRaw(io.RawIOBase):
    """Opens each chunk as it is read; reaching EOF proves the file whole and unaltered."""

    def __init__(self, source: ByteSource, identities: Sequence[Identity], name: str) -> None:
        super().__init__()
        self._source = source
        self._identities = identities
        self._name = name
        self._buffer = b""
        self._offset = 0
        self._source_done = False
        self._cipher: ChaCha20Poly1305 | None = None
        self._counter = 0
        self._plain = b""
        self._plain_offset = 0
        self._finished = False

    def readable(self) -> bool:
        return True

    def _available(self) -> int:
        return len(self._buffer) - self._offset

    def _fill(self, wanted: int) -> None:
        """Buffer at least ``wanted`` unread bytes, or everything left in the source."""
        while self._available() < wanted and not self._source_done:
            data = read_chunk(self._source, max(wanted - self._available(), 256 * 1024))
            if not data:
                self._source_done = True
                break
            self._buffer = self._buffer[self._offset :] + data
            self._offset = 0

    def _take(self, size: int) -> bytes:
        data = self._buffer[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    def _start(self) -> None:
        self._fill(len(VERSION_LINE) + 1)
        if self._buffer[: len(VERSION_LINE) + 1] != VERSION_LINE + b"\n":
            raise DataError(f"{self._name}: not an age file (or its header is damaged)", hint=_DAMAGED_HINT)
        end = -1
        while end < 0:
            end = self._buffer.find(b"\n---", self._offset)
            if end >= 0:
                end = self._buffer.find(b"\n", end + 4)
            if end < 0:
                if self._source_done or self._available() > MAX_HEADER:
                    raise DataError(f"{self._name}: no complete age header", hint=_DAMAGED_HINT)
                self._fill(self._available() + 4096)
        header = _parse_header(self._take(end + 1 - self._offset), self._name)
        file_key = _open_header(header, self._identities, self._name)
        self._fill(NONCE_SIZE)
        nonce = self._take(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise DataError(f"{self._name}: the age payload is truncated", hint=_DAMAGED_HINT)
        self._cipher = _payload_cipher(file_key, nonce)

    def _next_chunk(self) -> None:
        if self._cipher is None:
            self._start()
        assert self._cipher is not None
        sealed_size = PAYLOAD_CHUNK + TAG_SIZE
        self._fill(sealed_size + 1)  # one byte more tells whether this chunk is the last
        last = self._available() <= sealed_size
        sealed = self._take(sealed_size)
        if len(sealed) < TAG_SIZE:
            raise DataError(f"{self._name}: the age payload is truncated", hint=_DAMAGED_HINT)
        try:
            plain = self._cipher.decrypt(_chunk_nonce(self._counter, last), sealed, None)
        except InvalidTag:
            what = "is truncated or damaged" if last else "is damaged"
            raise DataError(
                f"{self._name}: encrypted chunk {self._counter} {what} (authentication failed)",
                hint=_DAMAGED_HINT,
            ) from None
        if last and not plain and self._counter > 0:
            raise DataError(f"{self._name}: the age payload ends with an empty chunk", hint=_DAMAGED_HINT)
        self._counter += 1
        self._finished = last
        self._plain, self._plain_offset = plain, 0

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self.closed:
            raise ValueError("read from a closed decrypting reader")
        with memoryview(buffer) as whole:
            view = whole.cast("B")
            while self._plain_offset >= len(self._plain):
                if self._finished or not len(view):
                    return 0
                self._next_chunk()
            count = min(len(view), len(self._plain) - self._plain_offset)
            view[:count] = self._plain[self._plain_offset : self._plain_offset + count]
            self._plain_offset += count
            return count


def decrypting_reader(
    source: ByteSource, identities: Sequence[Identity], *, name: str = "encrypted stream"
) -> io.BufferedReader:
    """A readable file object with the plaintext of the age file in ``source``.

    Raises :class:`NoMatchingIdentity` (exit 77) when no identity opens it, and
    :class:`DataError` (exit 65) when it is damaged, altered or truncated.
    ``source`` is not closed.
    """
    return io.BufferedReader(_DecryptingRaw(source, identities, name), buffer_size=CHUNK_SIZE)


def encrypt_bytes(data: bytes, group: RecipientGroup) -> bytes:
    out = io.BytesIO()
    with encrypting_writer(out, group) as writer:
        writer.write(data)
    return out.getvalue()


def decrypt_bytes(data: bytes, identities: Sequence[Identity], *, name: str) -> bytes:
    with decrypting_reader(io.BytesIO(data), identities, name=name) as reader:
        return reader.read()


def armor(data: bytes) -> str:
    """The ASCII form of an age file (``age -a``)."""
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([_ARMOR_BEGIN, *lines, _ARMOR_END]) + "\n"


def dearmor(text: str, *, name: str) -> bytes:
    lines = text.strip().split("\n")
    if len(lines) < 2 or lines[0].strip() != _ARMOR_BEGIN or lines[-1].strip() != _ARMOR_END:
        raise DataError(f"{name}: not an armored age file", hint=_DAMAGED_HINT)
    try:
        return base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except binascii.Error as exc:
        raise DataError(f"{name}: the armored age file is damaged ({exc})", hint=_DAMAGED_HINT) from exc
