"""Streaming one object into or out of a backup set.

Write: plaintext -> compress -> encrypt (age, optional) -> sha256 + size -> atomic storage writer.
Read: storage -> sha256 + size -> decrypt -> decompress -> plaintext, and the checksum is
compared with the manifest the moment the stored stream ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dbbackup.backupset import StoredObject, TableRef
from dbbackup.errors import DataError, PermissionDeniedError
from dbbackup.pipeline.checksum import HashingReader, HashingWriter
from dbbackup.pipeline.compress import compressing_writer, decompressing_reader
from dbbackup.pipeline.crypto import (
    VERSION_LINE,
    Identity,
    RecipientGroup,
    decrypting_reader,
    encrypting_writer,
)
from dbbackup.storage.base import Storage

CHUNK = 1 << 20


@dataclass(frozen=True)
class Compression:
    algorithm: str
    level: int
    threads: int = 1


class ObjectSink:
    """Where a producer writes plaintext; counts what it is given."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.plain_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._stream.write(data)
        self.plain_bytes += len(data)
        return len(data)


@contextlib.contextmanager
def object_writer(
    storage: Storage,
    key: str,
    *,
    relative_key: str,
    role: str,
    compression: Compression,
    table: TableRef | None = None,
    encryption: RecipientGroup | None = None,
) -> Iterator[tuple[ObjectSink, list[StoredObject]]]:
    """Yield a sink for plaintext and a list that receives the finished object.

    The object is only stored (and the list filled) when the block ends
    without an exception; otherwise no partial object is left under ``key``.
    With ``encryption`` the compressed stream is encrypted to that group.
    """
    done: list[StoredObject] = []
    with storage.writer(key) as raw, contextlib.ExitStack() as stages:
        hashing = HashingWriter(raw)
        stored: BinaryIO | HashingWriter = hashing
        if encryption is not None:
            stored = stages.enter_context(encrypting_writer(hashing, encryption))
        # Closed first (stages unwind in reverse), so the compressor's end is encrypted too.
        compressed = stages.enter_context(
            compressing_writer(compression.algorithm, compression.level, stored, threads=compression.threads)
        )
        sink = ObjectSink(compressed)
        yield sink, done
        stages.close()
        done.append(
            StoredObject(
                key=relative_key,
                role=role,
                stored_bytes=hashing.size,
                plain_bytes=sink.plain_bytes,
                sha256=hashing.sha256_hex,
                compression=compression.algorithm,
                table=table,
                encryption=encryption.describe() if encryption is not None else None,
            )
        )


def store_stream(
    storage: Storage,
    key: str,
    source: BinaryIO,
    *,
    relative_key: str,
    role: str,
    compression: Compression,
    table: TableRef | None = None,
    progress: Callable[[int], None] | None = None,
) -> StoredObject:
    """Copy a plaintext stream (a child's stdout) into a new object."""
    with object_writer(
        storage, key, relative_key=relative_key, role=role, compression=compression, table=table
    ) as (sink, done):
        while chunk := source.read(CHUNK):
            sink.write(chunk)
            if progress is not None:
                progress(len(chunk))
    return done[0]


def store_bytes(
    storage: Storage,
    key: str,
    data: bytes,
    *,
    relative_key: str,
    role: str,
    compression: Compression,
) -> StoredObject:
    with object_writer(storage, key, relative_key=relative_key, role=role, compression=compression) as (
        sink,
        done,
    ):
        sink.write(data)
    return done[0]


class VerifiedReader:
    """Plaintext of a stored object; reaching EOF proves its checksum.

    An encrypted object needs ``identities`` that open it (else exit 77).
    """

    def __init__(
        self, storage: Storage, key: str, obj: StoredObject, *, identities: Sequence[Identity] = ()
    ) -> None:
        if obj.encryption is not None and not identities:
            raise PermissionDeniedError(
                f"{key} is encrypted, and no identity was given to open it",
                hint="set encryption.identity_file (see docs/security.md)",
            )
        self._raw = storage.reader(key)
        self._hashing = HashingReader(self._raw)
        compressed: BinaryIO | HashingReader = self._hashing
        if obj.encryption is not None:
            compressed = decrypting_reader(self._hashing, identities, name=key)
        self._plain = decompressing_reader(obj.compression, compressed)
        self._obj = obj
        self._key = key
        self.verified = False
        self.plain_bytes = 0

    def read(self, size: int = CHUNK) -> bytes:
        try:
            data = self._plain.read(size)
        except DataError as exc:
            if exc.message.startswith(self._key):
                raise
            # The decompressor knows what broke, not which object it was reading.
            raise DataError(f"{self._key}: {exc.message}", hint=exc.hint) from exc
        if data:
            self.plain_bytes += len(data)
            return data
        self.finish()
        return b""

    def finish(self) -> None:
        """Drain what is left of the stored bytes and compare the checksum."""
        if self.verified:
            return
        while self._hashing.read(CHUNK):
            pass
        self._hashing.verify(
            expected_sha256=self._obj.sha256, expected_size=self._obj.stored_bytes, name=self._key
        )
        if self.plain_bytes != self._obj.plain_bytes:
            raise DataError(
                f"{self._key}: decompressed to {self.plain_bytes} bytes, the manifest says "
                f"{self._obj.plain_bytes}",
                hint="the set is damaged; verify it and restore from another set",
            )
        self.verified = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._plain.close()
        self._raw.close()

    def __enter__(self) -> VerifiedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all_verified(
    storage: Storage, key: str, obj: StoredObject, *, identities: Sequence[Identity] = ()
) -> bytes:
    """A small object, whole and verified (DDL, sequence values)."""
    parts = []
    with VerifiedReader(storage, key, obj, identities=identities) as reader:
        while chunk := reader.read(CHUNK):
            parts.append(chunk)
        reader.finish()
    return b"".join(parts)


def verify_stored(
    storage: Storage, key: str, obj: StoredObject, *, deep: bool, identities: Sequence[Identity] = ()
) -> None:
    """Check an object's stored bytes (and with ``deep`` its decryption and decompression)."""
    if deep:
        with VerifiedReader(storage, key, obj, identities=identities) as reader:
            while reader.read(CHUNK):
                pass
            reader.finish()
        return
    with storage.reader(key) as raw:
        hashing = HashingReader(raw)
        if obj.encryption is None and hashing.read(CHUNK).startswith(VERSION_LINE + b"\n"):
            # Only an edited manifest calls an age file plaintext.
            raise DataError(
                f"{key} is encrypted, but the manifest says it is not: the manifest was altered",
                hint="the set cannot be trusted; restore from another set",
            )
        while hashing.read(CHUNK):
            pass
        hashing.verify(expected_sha256=obj.sha256, expected_size=obj.stored_bytes, name=key)
