"""The age encryption stage: round trips, the age CLI both ways, damage of every kind, flat memory."""

from __future__ import annotations

import io
import os
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import require_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from dbbackup import keys
from dbbackup.errors import DataError, PermissionDeniedError
from dbbackup.pipeline import crypto
from dbbackup.pipeline.crypto import (
    PAYLOAD_CHUNK,
    RecipientGroup,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
)

pytestmark = pytest.mark.timeout(120)

SEALED = PAYLOAD_CHUNK + 16
SIZES = [0, 1, PAYLOAD_CHUNK - 1, PAYLOAD_CHUNK, PAYLOAD_CHUNK + 1, 2 * PAYLOAD_CHUNK, 3 * PAYLOAD_CHUNK + 7]


@pytest.fixture(scope="module")
def identity() -> X25519Identity:
    return X25519Identity.generate()


@pytest.fixture(scope="module")
def group(identity: X25519Identity) -> RecipientGroup:
    return RecipientGroup([identity.recipient])


@pytest.fixture
def age_files(tmp_path: Path, identity: X25519Identity) -> Iterator[tuple[Path, Path, str]]:
    """(age binary, identity file, recipient) for the age command-line tool."""
    age = require_binary("age", "age")
    path = tmp_path / "id.txt"
    path.write_text(keys.identity_file_text(identity, "2026-11-27T00:00:00+00:00"))
    path.chmod(0o600)
    yield age, path, keys.format_recipient(identity.recipient)


def _header_end(data: bytes) -> int:
    """Offset of the payload nonce: just past the header's MAC line."""
    return data.index(b"\n", data.index(b"\n---") + 1) + 1


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_at_chunk_boundaries(size: int, group: RecipientGroup, identity: X25519Identity) -> None:
    data = os.urandom(size)
    sealed = crypto.encrypt_bytes(data, group)
    payload = len(sealed) - _header_end(sealed) - 16
    chunks = max(1, -(-size // PAYLOAD_CHUNK))
    assert (
        payload == size + 16 * chunks
    )  # one tag per chunk, a full last chunk is not followed by an empty one
    assert crypto.decrypt_bytes(sealed, [identity], name="x") == data


@given(pieces=st.lists(st.integers(min_value=0, max_value=3 * PAYLOAD_CHUNK), max_size=6))
@settings(max_examples=25, deadline=None)
def test_any_write_pattern_gives_the_same_plaintext(pieces: list[int]) -> None:
    identity = X25519Identity.generate()
    chunks = [os.urandom(n) for n in pieces]
    out = io.BytesIO()
    with crypto.encrypting_writer(out, RecipientGroup([identity.recipient])) as writer:
        for chunk in chunks:
            writer.write(chunk)
    reader = crypto.decrypting_reader(io.BytesIO(out.getvalue()), [identity], name="x")
    got = b"".join(iter(lambda: reader.read(7919), b""))
    assert got == b"".join(chunks)


@pytest.mark.parametrize("size", [0, 1, PAYLOAD_CHUNK, 5 * PAYLOAD_CHUNK + 3])
def test_the_age_cli_decrypts_what_we_write(
    size: int, group: RecipientGroup, age_files: tuple[Path, Path, str]
) -> None:
    age, identity_file, _recipient = age_files
    data = os.urandom(size)
    sealed = crypto.encrypt_bytes(data, group)
    done = subprocess.run(
        [str(age), "-d", "-i", str(identity_file)], input=sealed, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    armored = crypto.armor(sealed).encode()
    done = subprocess.run(
        [str(age), "-d", "-i", str(identity_file)], input=armored, capture_output=True, timeout=60
    )
    assert done.stdout == data


@pytest.mark.parametrize("size", [0, PAYLOAD_CHUNK, 2 * PAYLOAD_CHUNK + 1])
def test_we_decrypt_what_the_age_cli_writes(
    size: int, identity: X25519Identity, age_files: tuple[Path, Path, str]
) -> None:
    age, _identity_file, recipient = age_files
    data = os.urandom(size)
    other = keys.format_recipient(X25519Identity.generate().recipient)
    sealed = subprocess.run(
        [str(age), "-r", other, "-r", recipient], input=data, capture_output=True, timeout=60, check=True
    ).stdout
    assert crypto.decrypt_bytes(sealed, [identity], name="x") == data
    armored = subprocess.run(
        [str(age), "-a", "-r", recipient], input=data, capture_output=True, timeout=60, check=True
    ).stdout.decode()
    assert crypto.decrypt_bytes(crypto.dearmor(armored, name="x"), [identity], name="x") == data


def test_passphrase_round_trip_and_one_scrypt_per_header() -> None:
    group = RecipientGroup([ScryptRecipient(b"pass phrase", work_factor=10)])
    first, second = crypto.encrypt_bytes(b"one", group), crypto.encrypt_bytes(b"two", group)
    # A shared header (scrypt is slow by design), but payload nonces differ.
    assert first[: _header_end(first)] == second[: _header_end(second)]
    assert (
        first[_header_end(first) : _header_end(first) + 16]
        != second[_header_end(second) : _header_end(second) + 16]
    )
    opener = ScryptIdentity(b"pass phrase")
    assert crypto.decrypt_bytes(first, [opener], name="a") == b"one"
    assert crypto.decrypt_bytes(second, [opener], name="b") == b"two"
    with pytest.raises(PermissionDeniedError):
        crypto.decrypt_bytes(first, [ScryptIdentity(b"wrong")], name="a")


def test_passphrase_work_factor_is_bounded() -> None:
    sealed = crypto.encrypt_bytes(b"x", RecipientGroup([ScryptRecipient(b"pw", work_factor=12)]))
    with pytest.raises(DataError, match="work factor"):
        crypto.decrypt_bytes(sealed, [ScryptIdentity(b"pw", max_work_factor=11)], name="x")


def test_passphrase_cannot_join_other_recipients(identity: X25519Identity) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        RecipientGroup([ScryptRecipient(b"pw"), identity.recipient])


def test_a_stranger_identity_is_refused_with_exit_77(group: RecipientGroup) -> None:
    sealed = crypto.encrypt_bytes(b"secret rows", group)
    stranger = X25519Identity.generate()
    with pytest.raises(crypto.NoMatchingIdentity) as caught:
        crypto.decrypt_bytes(sealed, [stranger], name="db/data/t.zst")
    assert caught.value.exit_code == 77
    assert "db/data/t.zst" in caught.value.message
    assert stranger.fingerprint in caught.value.message


def _damaged(data: bytes, identity: X25519Identity) -> DataError:
    with pytest.raises(DataError) as caught:
        crypto.decrypt_bytes(data, [identity], name="obj")
    return caught.value


def test_every_flipped_byte_is_caught(group: RecipientGroup, identity: X25519Identity) -> None:
    sealed = crypto.encrypt_bytes(os.urandom(2 * PAYLOAD_CHUNK + 100), group)
    # Every byte of the header and nonce, and bytes spread over each chunk and each tag.
    offsets = list(range(_header_end(sealed) + 16)) + list(range(_header_end(sealed) + 16, len(sealed), 997))
    offsets.append(len(sealed) - 1)
    for offset in offsets:
        damaged = bytearray(sealed)
        damaged[offset] ^= 0x20
        try:
            crypto.decrypt_bytes(bytes(damaged), [identity], name="obj")
        except DataError:
            continue
        except PermissionDeniedError:
            continue  # a damaged stanza no longer opens: also a refusal
        pytest.fail(f"a flipped byte at offset {offset} went unnoticed")


@pytest.mark.parametrize("cut", ["last byte", "last chunk", "chunk boundary", "nonce", "header"])
def test_every_truncation_is_caught(cut: str, group: RecipientGroup, identity: X25519Identity) -> None:
    sealed = crypto.encrypt_bytes(os.urandom(3 * PAYLOAD_CHUNK + 5), group)
    start = _header_end(sealed) + 16
    length = {
        "last byte": len(sealed) - 1,
        "last chunk": start + 3 * SEALED,
        "chunk boundary": start + SEALED,
        "nonce": start - 3,
        "header": start - 40,
    }[cut]
    error = _damaged(sealed[:length], identity)
    assert "obj" in error.message


def test_appended_bytes_are_caught(group: RecipientGroup, identity: X25519Identity) -> None:
    sealed = crypto.encrypt_bytes(b"rows", group)
    assert "damaged" in _damaged(sealed + b"\x00", identity).message


def test_reordered_chunks_are_caught(group: RecipientGroup, identity: X25519Identity) -> None:
    sealed = crypto.encrypt_bytes(os.urandom(3 * PAYLOAD_CHUNK), group)
    start = _header_end(sealed) + 16
    first, second = sealed[start : start + SEALED], sealed[start + SEALED : start + 2 * SEALED]
    swapped = sealed[:start] + second + first + sealed[start + 2 * SEALED :]
    _damaged(swapped, identity)


def test_headers_of_two_files_do_not_mix(group: RecipientGroup, identity: X25519Identity) -> None:
    one, two = crypto.encrypt_bytes(b"a" * 100, group), crypto.encrypt_bytes(b"b" * 100, group)
    mixed = one[: _header_end(one)] + two[_header_end(two) :]
    _damaged(mixed, identity)


def test_not_an_age_file(identity: X25519Identity) -> None:
    assert "not an age file" in _damaged(b"\x28\xb5\x2f\xfd" + bytes(100), identity).message


def test_armor_round_trip_and_damage() -> None:
    data = os.urandom(300)
    assert crypto.dearmor(crypto.armor(data), name="x") == data
    with pytest.raises(DataError):
        crypto.dearmor(
            "-----BEGIN AGE ENCRYPTED FILE-----\n!!!\n-----END AGE ENCRYPTED FILE-----\n", name="x"
        )


def test_an_abandoned_writer_leaves_a_file_readers_reject(
    group: RecipientGroup, identity: X25519Identity
) -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), crypto.encrypting_writer(out, group) as writer:
        writer.write(os.urandom(3 * PAYLOAD_CHUNK))
        raise RuntimeError("the dump died")
    error = _damaged(out.getvalue(), identity)
    assert "truncated" in error.message


class _Zeros:
    """A source of ``size`` zero bytes that never holds them all at once."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        count = min(self.left, 1 << 20 if size < 0 else size)
        self.left -= count
        return bytes(count)


class _Count:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any, /) -> int:
        self.size += len(memoryview(data))
        return len(memoryview(data))


def test_memory_stays_flat_and_throughput_is_high(group: RecipientGroup, identity: X25519Identity) -> None:
    total = 256 << 20
    tracemalloc.start()
    try:
        begun = time.perf_counter()
        with crypto.encrypting_writer(_Count(), group) as writer:
            source = _Zeros(total)
            while chunk := source.read(1 << 20):
                writer.write(chunk)
        elapsed = time.perf_counter() - begun
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes while encrypting {total}"
    # Measured at several hundred MB/s to GB/s; far above what compressed dumps produce.
    assert total / elapsed > 50e6, f"{total / elapsed / 1e6:.0f} MB/s"


def test_decryption_streams_with_flat_memory(group: RecipientGroup, identity: X25519Identity) -> None:
    total = 64 << 20
    sealed = io.BytesIO()
    with crypto.encrypting_writer(sealed, group) as writer:
        source = _Zeros(total)
        while chunk := source.read(1 << 20):
            writer.write(chunk)
    sealed.seek(0)
    tracemalloc.start()
    try:
        reader = crypto.decrypting_reader(sealed, [identity], name="big")
        seen = 0
        while chunk := reader.read(1 << 20):
            seen += len(chunk)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    assert peak < 16 << 20, f"peak {peak} bytes while decrypting {total}"
