"""age recipients and identities: the stanzas that carry a file key to each reader.

X25519 (``age1...`` public keys, ``AGE-SECRET-KEY-1...`` secret keys, see
:mod:`dbbackup.keys` for the text forms) and scrypt (one passphrase), exactly
as the age specification (age-encryption.org/v1) defines them, so files are
interchangeable with the ``age`` tool. :mod:`dbbackup.pipeline.crypto` builds
headers and payloads from these.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dbbackup.errors import DataError

TAG_SIZE = 16
FILE_KEY_SIZE = 16
SCRYPT_WORK_FACTOR = 18
"""log2 of scrypt's N when writing: what ``age -p`` uses (about a second and 256 MiB)."""
MAX_SCRYPT_WORK_FACTOR = 22
"""Largest work factor accepted when reading, as the age tool does: a file cannot make us spin for hours."""
PASSPHRASE_FINGERPRINT = "passphrase"  # noqa: S105 - a label, not a secret

ZERO_NONCE = bytes(12)
DAMAGED_HINT = (
    "the object was altered or damaged after it was written: run `dbbackup verify` on the set "
    "and restore from another set"
)


def hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def b64_encode(data: bytes) -> str:
    """Unpadded standard base64, as age writes it."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64_encode`: padding or a non-canonical form is an error."""
    if "=" in text or "\n" in text:
        raise ValueError("padded or multi-line base64")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    if b64_encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


@dataclass(frozen=True)
class Stanza:
    """One recipient's line in the header: a type, arguments and the wrapped file key."""

    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        body = b64_encode(self.body)
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append("")  # the body ends with its first line shorter than 64 columns
        head = " ".join(("->", self.type, *self.args))
        return (head + "\n" + "\n".join(lines) + "\n").encode("ascii")


class Recipient(Protocol):
    """Someone a file is encrypted to; ``fingerprint`` names them without revealing the key."""

    @property
    def fingerprint(self) -> str: ...

    def wrap(self, file_key: bytes) -> Stanza: ...


class Identity(Protocol):
    """A key that may open files: returns the file key, or ``None`` when no stanza is for it."""

    @property
    def fingerprint(self) -> str: ...

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None: ...


def x25519_fingerprint(public: bytes) -> str:
    return "x25519:" + hashlib.sha256(public).hexdigest()[:16]


class X25519Recipient:
    def __init__(self, public: bytes) -> None:
        if len(public) != 32:
            raise ValueError("an X25519 public key has 32 bytes")
        self.public = public

    @property
    def fingerprint(self) -> str:
        return x25519_fingerprint(self.public)

    def wrap(self, file_key: bytes) -> Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = _raw_public(ephemeral)
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public))
        key = hkdf(shared, share + self.public, b"age-encryption.org/v1/X25519")
        body = ChaCha20Poly1305(key).encrypt(ZERO_NONCE, file_key, None)
        return Stanza("X25519", (b64_encode(share),), body)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other.public == self.public

    def __hash__(self) -> int:
        return hash(self.public)


def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class X25519Identity:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("an X25519 secret key has 32 bytes")
        self.secret = secret
        self._private = X25519PrivateKey.from_private_bytes(secret)
        self.recipient = X25519Recipient(_raw_public(self._private))

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @property
    def fingerprint(self) -> str:
        return self.recipient.fingerprint

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "X25519":
                continue
            if len(stanza.args) != 1 or len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
                raise DataError("malformed X25519 stanza in an age header", hint=DAMAGED_HINT)
            try:
                share = b64_decode(stanza.args[0])
                shared = self._private.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError as exc:
                raise DataError(f"bad X25519 stanza in an age header ({exc})", hint=DAMAGED_HINT) from exc
            key = hkdf(shared, share + self.recipient.public, b"age-encryption.org/v1/X25519")
            try:
                return ChaCha20Poly1305(key).decrypt(ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue  # wrapped for another recipient
        return None


def _scrypt_key(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=b"age-encryption.org/v1/scrypt" + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase)


class ScryptRecipient:
    """A passphrase. age allows no other recipient beside it in the same file."""

    reuses_header = True

    def __init__(self, passphrase: bytes, work_factor: int = SCRYPT_WORK_FACTOR) -> None:
        if not passphrase:
            raise ValueError("the passphrase is empty")
        self.passphrase = passphrase
        self.work_factor = work_factor

    @property
    def fingerprint(self) -> str:
        return PASSPHRASE_FINGERPRINT

    def wrap(self, file_key: bytes) -> Stanza:
        salt = os.urandom(16)
        key = _scrypt_key(self.passphrase, salt, self.work_factor)
        body = ChaCha20Poly1305(key).encrypt(ZERO_NONCE, file_key, None)
        return Stanza("scrypt", (b64_encode(salt), str(self.work_factor)), body)


class ScryptIdentity:
    """Opens passphrase-encrypted files; each distinct stanza costs one scrypt run, then it is remembered."""

    def __init__(self, passphrase: bytes, max_work_factor: int = MAX_SCRYPT_WORK_FACTOR) -> None:
        self.passphrase = passphrase
        self.max_work_factor = max_work_factor
        self._known: dict[Stanza, bytes | None] = {}
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return PASSPHRASE_FINGERPRINT

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        scrypt = [s for s in stanzas if s.type == "scrypt"]
        if not scrypt:
            return None
        if len(stanzas) != 1:
            raise DataError("an age header mixes a passphrase with other recipients", hint=DAMAGED_HINT)
        stanza = scrypt[0]
        with self._lock:
            if stanza not in self._known:
                self._known[stanza] = self._unwrap(stanza)
            return self._known[stanza]

    def _unwrap(self, stanza: Stanza) -> bytes | None:
        try:
            if len(stanza.args) != 2 or len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
                raise ValueError("wrong number of arguments or body size")
            salt = b64_decode(stanza.args[0])
            work = stanza.args[1]
            if len(salt) != 16 or not work.isdigit() or work.startswith("0"):
                raise ValueError("bad salt or work factor")
        except ValueError as exc:
            raise DataError(f"malformed scrypt stanza in an age header ({exc})", hint=DAMAGED_HINT) from exc
        if int(work) > self.max_work_factor:
            raise DataError(
                f"the passphrase work factor {work} is above the limit of {self.max_work_factor}",
                hint="the file was not written by dbbackup, or was altered",
            )
        key = _scrypt_key(self.passphrase, salt, int(work))
        try:
            return ChaCha20Poly1305(key).decrypt(ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            return None  # a wrong passphrase
