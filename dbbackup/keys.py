"""Encryption keys: recipients and identities as text, where they come from, and set seals.

Recipients are ``age1...`` public keys (given inline or in recipient files);
identities are ``AGE-SECRET-KEY-1...`` secret keys, found in this order and all
used: ``encryption.identity_file``, the systemd credential ``age-identity``
(``$CREDENTIALS_DIRECTORY``), the keyring entry ``age-identity``. A passphrase
(scrypt) replaces recipients when ``encryption.passphrase_file`` is set; to
open such sets it is taken from ``$DBBACKUP_PASSPHRASE``, that file, the
credential ``age-passphrase``, the keyring, or a prompt (``--ask-password``).

A set's manifest is sealed: per recipient group a random 32-byte key, wrapped
in an age file for the group's recipients, keys an HMAC over the whole
manifest. Editing a manifest (and so any checksum in it) without that key
fails :func:`unlock_set` with exit 65, before anything is restored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbbackup import backupset, credentials, secrets_store
from dbbackup.backupset import Manifest, StoredObject
from dbbackup.errors import ConfigError, DataError, PermissionDeniedError
from dbbackup.pipeline import crypto
from dbbackup.pipeline.crypto import (
    Identity,
    Recipient,
    RecipientGroup,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    X25519Recipient,
)
from dbbackup.storage.base import Storage

log = logging.getLogger("dbbackup.keys")

IDENTITY_CREDENTIAL = "age-identity"
PASSPHRASE_CREDENTIAL = "age-passphrase"  # noqa: S105 - a name, not a secret
PASSPHRASE_ENV = "DBBACKUP_PASSPHRASE"  # noqa: S105 - a name, not a secret
SEAL_FORMAT = "dbbackup-seal-1"
SEAL_FIELD = "authentication"

_RECIPIENT_HRP = "age"
_IDENTITY_HRP = "age-secret-key-"
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_IDENTITY_HINT = (
    "set encryption.identity_file, store the identity with `dbbackup secret set age-identity`, "
    "or load it as the systemd credential age-identity (see docs/security.md)"
)

# --------------------------------------------------------------------------- Bech32 text forms


def _polymod(values: Iterable[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                check ^= generator
    return check


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: Iterable[int], source_bits: int, target_bits: int, *, pad: bool) -> list[int]:
    accumulator, bits, out = 0, 0, []
    for value in data:
        accumulator = (accumulator << source_bits) | value
        bits += source_bits
        while bits >= target_bits:
            bits -= target_bits
            out.append((accumulator >> bits) & ((1 << target_bits) - 1))
    if pad and bits:
        out.append((accumulator << (target_bits - bits)) & ((1 << target_bits) - 1))
    elif not pad and (bits >= source_bits or (accumulator << (target_bits - bits)) & (1 << target_bits) - 1):
        raise ValueError("invalid padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    values = _regroup(data, 8, 5, pad=True)
    checksum = _polymod([*_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Split Bech32 ``text`` into its lower-case prefix and payload; ``ValueError`` if invalid."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    hrp, separator, rest = text.rpartition("1")
    if not separator or not hrp or len(rest) < 6 or any(c not in _CHARSET for c in rest):
        raise ValueError("not Bech32")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod([*_expand(hrp), *values]) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_regroup(values[:-6], 5, 8, pad=False))


def parse_recipient(text: str) -> X25519Recipient:
    try:
        hrp, data = bech32_decode(text.strip())
        if hrp != _RECIPIENT_HRP or text.strip() != text.strip().lower():
            raise ValueError("not an age recipient")
        return X25519Recipient(data)
    except ValueError as exc:
        raise ConfigError(
            f"{text.strip()[:80]!r} is not an age recipient ({exc})",
            hint="recipients look like age1...; `dbbackup key generate` prints one",
        ) from None


def format_recipient(recipient: X25519Recipient) -> str:
    return bech32_encode(_RECIPIENT_HRP, recipient.public)


def parse_identity(text: str) -> X25519Identity:
    """One ``AGE-SECRET-KEY-1...`` line; the error never repeats it."""
    try:
        hrp, data = bech32_decode(text.strip())
        if hrp != _IDENTITY_HRP or text.strip() != text.strip().upper():
            raise ValueError("not an age identity")
        return X25519Identity(data)
    except ValueError as exc:
        raise PermissionDeniedError(f"not a valid age identity ({exc})", hint=_IDENTITY_HINT) from None


def format_identity(identity: X25519Identity) -> str:
    return bech32_encode(_IDENTITY_HRP, identity.secret).upper()


def identity_file_text(identity: X25519Identity, created: str) -> str:
    """What ``age-keygen`` writes: comments with the public key, then the secret key."""
    return (
        f"# created: {created}\n# public key: {format_recipient(identity.recipient)}\n"
        f"{format_identity(identity)}\n"
    )


def parse_identities(text: str, *, source: str) -> list[X25519Identity]:
    """Every identity in an identity file's text (comments and blank lines skipped)."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            found.append(parse_identity(stripped))
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(f"{source}:{number}: {exc.message}", hint=exc.hint) from None
        credentials.register(stripped)
    if not found:
        raise PermissionDeniedError(f"{source} holds no age identity", hint=_IDENTITY_HINT)
    return found


def read_private_text(path: Path, what: str) -> str:
    """A secret file's text; refused (exit 77) when missing or readable by every user."""
    try:
        info = os.stat(path)
        if info.st_mode & stat.S_IRWXO:
            raise PermissionDeniedError(
                f"refusing to read {what} {path}: it is accessible to every user "
                f"(mode {stat.S_IMODE(info.st_mode):04o})",
                hint=f"chmod o-rwx {path}",
            )
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermissionDeniedError(f"{what} {path} does not exist", hint=_IDENTITY_HINT) from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise PermissionDeniedError(f"cannot read {what} {path}: {exc}", hint=_IDENTITY_HINT) from None


def first_line(text: str) -> str:
    return text.splitlines()[0].rstrip("\r\n") if text else ""


# --------------------------------------------------------------------------- recipients (backup side)


def resolve_recipients(entries: Sequence[str], *, setting: str) -> list[Recipient]:
    """``age1...`` strings and absolute paths of recipient files, in order, duplicates dropped."""
    found: dict[str, Recipient] = {}
    for entry in entries:
        if entry.startswith("/"):
            try:
                text = Path(entry).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{setting}: cannot read recipient file {entry}: {exc}") from None
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if not lines:
                raise ConfigError(f"{setting}: recipient file {entry} holds no recipient")
        else:
            lines = [entry]
        for line in lines:
            try:
                recipient = parse_recipient(line)
            except ConfigError as exc:
                raise ConfigError(f"{setting}: {exc.message}", hint=exc.hint) from None
            found.setdefault(recipient.fingerprint, recipient)
    return list(found.values())


@dataclass
class EncryptionPlan:
    """Which recipient group protects each database of a backup run (``None``: stored in clear)."""

    default: RecipientGroup | None
    overrides: dict[str, RecipientGroup]
    require: bool
    _keys: dict[RecipientGroup, bytes] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, encryption: Any) -> EncryptionPlan:
        recipients = resolve_recipients(encryption.recipients, setting="encryption.recipients")
        if encryption.passphrase_file:
            if recipients:
                raise ConfigError(
                    "encryption.recipients and encryption.passphrase_file exclude each other",
                    hint="age files are encrypted either to recipients or to one passphrase",
                )
            passphrase = first_line(read_private_text(Path(encryption.passphrase_file), "passphrase file"))
            if not passphrase:
                raise ConfigError(f"encryption.passphrase_file {encryption.passphrase_file} is empty")
            credentials.register(passphrase)
            recipients = [ScryptRecipient(passphrase.encode())]
        groups: dict[tuple[str, ...], RecipientGroup] = {}

        def group(members: list[Recipient]) -> RecipientGroup:
            made = RecipientGroup(members)
            return groups.setdefault(made.fingerprints, made)

        overrides = {
            name: group(resolve_recipients(db.recipients, setting=f"encryption.databases.{name}.recipients"))
            for name, db in encryption.databases.items()
        }
        return cls(group(recipients) if recipients else None, overrides, bool(encryption.require))

    def for_database(self, name: str) -> RecipientGroup | None:
        return self.overrides.get(name, self.default)

    def check_required(self, wanted: Sequence[str], *, whole_cluster: bool) -> None:
        """With ``require``, refuse (exit 78) a run that would store anything in clear."""
        if not self.require or self.default is not None:
            return
        clear = ["roles and tablespaces, and every database"] if whole_cluster else []
        clear += [db for db in wanted if db not in self.overrides]
        if clear:
            raise ConfigError(
                "encryption.require is true, but nothing encrypts " + ", ".join(clear),
                hint="set encryption.recipients (or passphrase_file); `dbbackup key generate` makes a key",
            )

    def seal(self, manifest: Manifest) -> bytes:
        """The manifest as stored, with a MAC per recipient group used in the set."""
        used = {tuple(o.encryption["recipients"]) for o in manifest.all_objects() if o.encryption}
        data = json.loads(manifest.to_json())
        entries: list[tuple[dict[str, Any], bytes]] = []
        for group in {g for g in [self.default, *self.overrides.values()] if g is not None}:
            if group.fingerprints not in used:
                continue
            key = self._keys.setdefault(group, os.urandom(32))
            wrapped = crypto.armor(crypto.encrypt_bytes(key, group))
            entries.append(({"recipients": list(group.fingerprints), "wrapped_key": wrapped}, key))
        entries.sort(key=lambda pair: tuple(pair[0]["recipients"]))
        data[SEAL_FIELD] = {"format": SEAL_FORMAT, "keys": [entry for entry, _ in entries]}
        message = _seal_message(data)
        for entry, key in entries:
            entry["mac"] = hmac.new(key, message, hashlib.sha256).hexdigest()
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _seal_message(data: Mapping[str, Any]) -> bytes:
    """What the MACs cover: the whole manifest, wrapped keys included, MACs excluded."""
    unsigned = dict(data)
    seal = dict(unsigned.get(SEAL_FIELD) or {})
    seal["keys"] = [{k: v for k, v in entry.items() if k != "mac"} for entry in seal.get("keys", [])]
    unsigned[SEAL_FIELD] = seal
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return SEAL_FORMAT.encode() + b"\n" + canonical.encode()


def write_sealed_manifest(storage: Storage, manifest: Manifest, plan: EncryptionPlan) -> None:
    """The commit point of an encrypted backup (see :func:`backupset.write_manifest`)."""
    payload = plan.seal(manifest)
    with storage.writer(backupset.object_key(manifest.instance, manifest.id, backupset.MANIFEST)) as handle:
        handle.write(payload)


# --------------------------------------------------------------------------- identities (restore side)


class PromptedPassphrase:
    """A passphrase identity whose passphrase is looked up only when a file needs one."""

    fingerprint = crypto.PASSPHRASE_FINGERPRINT

    def __init__(self, passphrase_file: str, instance: str) -> None:
        self._file = passphrase_file
        self._instance = instance
        self._identity: ScryptIdentity | None = None
        self._lock = threading.Lock()  # restore workers must not ask twice

    def unwrap(self, stanzas: Sequence[crypto.Stanza]) -> bytes | None:
        if not any(s.type == "scrypt" for s in stanzas):
            return None
        with self._lock:
            if self._identity is None:
                self._identity = ScryptIdentity(self._resolve().encode())
            identity = self._identity
        return identity.unwrap(stanzas)

    def _resolve(self) -> str:
        passphrase = os.environ.get(PASSPHRASE_ENV, "")
        if not passphrase and self._file:
            passphrase = first_line(read_private_text(Path(self._file), "passphrase file"))
        if not passphrase:
            passphrase = credentials.systemd_credential(PASSPHRASE_CREDENTIAL) or ""
        if not passphrase:
            passphrase = secrets_store.lookup(self._instance, PASSPHRASE_CREDENTIAL) or ""
        if not passphrase:
            passphrase = credentials.prompt_secret("Passphrase of the backup set: ") or ""
        if not passphrase:
            raise PermissionDeniedError(
                "the set is encrypted with a passphrase, and none was found",
                hint=f"give it through ${PASSPHRASE_ENV}, encryption.passphrase_file, the systemd "
                "credential age-passphrase, `dbbackup secret set age-passphrase`, or --ask-password",
            )
        credentials.register(passphrase)
        return passphrase


def load_identities(encryption: Any, *, instance: str) -> list[Identity]:
    """Every identity available to this run, from every source (see the module docs)."""
    identities: list[Identity] = []
    if encryption.identity_file:
        path = Path(encryption.identity_file)
        identities += parse_identities(read_private_text(path, "identity file"), source=str(path))
    credential = credentials.systemd_credential(IDENTITY_CREDENTIAL, whole=True)
    if credential:
        identities += parse_identities(credential, source=f"systemd credential {IDENTITY_CREDENTIAL}")
    stored = secrets_store.lookup(instance, IDENTITY_CREDENTIAL)
    if stored:
        identities += parse_identities(stored, source=f"keyring entry {IDENTITY_CREDENTIAL}")
    identities.append(PromptedPassphrase(encryption.passphrase_file, instance))
    return identities


# --------------------------------------------------------------------------- opening a sealed set


def _group_of(obj: StoredObject) -> tuple[str, ...]:
    assert obj.encryption is not None
    return tuple(obj.encryption.get("recipients") or ())


def unlock_set(
    storage: Storage,
    manifest: Manifest,
    stored: Sequence[StoredObject],
    identities: Sequence[Identity],
    *,
    need_identities: bool,
    require_encryption: bool,
) -> bool:
    """Authenticate ``manifest`` before any of ``stored`` is used; return whether it was.

    Exit 65 when the seal is missing, malformed or does not match (the manifest was
    edited), exit 77 when ``need_identities`` and no identity opens the objects.
    Returns ``False`` for a set without encryption, or when no identity was at hand
    and none was needed (verify without keys checks checksums only).
    """
    key = backupset.object_key(manifest.instance, manifest.id, backupset.MANIFEST)
    with storage.reader(key) as handle:
        raw = handle.read()
    try:
        data = json.loads(raw)
        seal = data.get(SEAL_FIELD)
        entries = {tuple(e["recipients"]): e for e in seal["keys"]} if seal is not None else {}
        if seal is not None and seal.get("format") != SEAL_FORMAT:
            raise ValueError(f"unknown seal format {seal.get('format')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{key}: the manifest's seal is malformed ({exc})", hint=_TAMPER_HINT) from None
    encrypted = manifest.encrypted or any(o.encryption for o in manifest.all_objects())
    if seal is None:
        if encrypted:
            raise DataError(f"{key}: the set holds encrypted objects but its seal is gone", hint=_TAMPER_HINT)
        if require_encryption:
            raise DataError(
                f"backup set {manifest.id} is not encrypted, and encryption.require is true",
                hint="if you trust this set, run with DBBACKUP_ENCRYPTION_REQUIRE=false",
            )
        return False
    needed = {_group_of(o): o for o in stored if o.encryption}
    stray = [o.key for g, o in needed.items() if g not in entries]
    if stray:
        raise DataError(
            f"{key}: object {stray[0]} names recipients the seal does not cover", hint=_TAMPER_HINT
        )
    message = _seal_message(data)
    checked = 0
    for group, entry in entries.items():
        try:
            wrapped = crypto.dearmor(str(entry["wrapped_key"]), name=f"{key} (seal)")
            group_key = crypto.decrypt_bytes(wrapped, identities, name=f"{key} (seal)")
        except crypto.NoMatchingIdentity:
            if need_identities and group in needed:
                raise _missing_identity(needed[group], group, identities) from None
            continue
        except PermissionDeniedError:
            # A passphrase that no source holds: fatal only where the objects must be opened.
            if need_identities and group in needed:
                raise
            continue
        mac = hmac.new(group_key, message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, str(entry.get("mac", ""))):
            raise DataError(
                f"{key}: the manifest of backup set {manifest.id} fails its authentication: it was edited",
                hint=_TAMPER_HINT,
            )
        checked += 1
    if checked and Manifest.from_json(raw, where=key).to_json() != manifest.to_json():
        raise DataError(f"{key}: the manifest changed while it was read", hint=_TAMPER_HINT)
    return checked > 0


_TAMPER_HINT = "the set was altered after it was written and cannot be trusted; restore from another set"


def _missing_identity(obj: StoredObject, group: tuple[str, ...], identities: Sequence[Identity]) -> Exception:
    held = sorted({i.fingerprint for i in identities if i.fingerprint != crypto.PASSPHRASE_FINGERPRINT})
    return PermissionDeniedError(
        f"{obj.key} is encrypted to {', '.join(group)}; no identity for it is available "
        f"(identities found: {', '.join(held) or 'none'})",
        hint=_IDENTITY_HINT,
    )
