"""Keys as text, where identities come from, encryption plans, and sealed manifests."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import require_binary

from dbbackup import keys, secrets_store
from dbbackup.backupset import DatabaseEntry, Manifest, StoredObject
from dbbackup.config.kinds import DatabaseRecipients, FrozenTables
from dbbackup.errors import ConfigError, DataError, PermissionDeniedError
from dbbackup.pipeline.crypto import X25519Identity
from dbbackup.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(60)

SOME_IDENTITY = keys.format_identity(X25519Identity.generate())


@dataclass(frozen=True)
class Encryption:
    """The shape of ``settings.encryption`` (see dbbackup.config.model)."""

    recipients: tuple[str, ...] = ()
    identity_file: str = ""
    passphrase_file: str = ""
    require: bool = False
    databases: FrozenTables = field(default_factory=lambda: FrozenTables({}))


def test_identities_and_recipients_match_age_keygen(tmp_path: Path) -> None:
    age_keygen = require_binary("age-keygen", "age")
    path = tmp_path / "id.txt"
    subprocess.run([str(age_keygen), "-o", str(path)], capture_output=True, timeout=30, check=True)
    expected = subprocess.run(
        [str(age_keygen), "-y", str(path)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    [identity] = keys.parse_identities(path.read_text(), source=str(path))
    assert keys.format_recipient(identity.recipient) == expected
    assert keys.parse_recipient(expected).public == identity.recipient.public
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("AGE-"))
    assert keys.format_identity(identity) == line


def test_text_forms_round_trip() -> None:
    identity = X25519Identity.generate()
    text = keys.format_identity(identity)
    assert text.startswith("AGE-SECRET-KEY-1") and text == text.upper()
    assert keys.parse_identity(text).secret == identity.secret
    with pytest.raises(PermissionDeniedError):
        keys.parse_identity(text.lower())  # age writes and reads identities upper case only
    recipient = keys.format_recipient(identity.recipient)
    assert recipient.startswith("age1") and len(recipient) == 62
    assert keys.parse_recipient(recipient) == identity.recipient
    assert keys.parse_identity(SOME_IDENTITY).recipient.fingerprint.startswith("x25519:")


@pytest.mark.parametrize(
    "text",
    [
        "age1",
        "age1qqqq",
        "AGE1" + "q" * 58,
        "agE1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq",
        "bc1xyz",
    ],
)
def test_bad_recipients_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        keys.parse_recipient(text)


def test_a_bad_identity_line_is_named_but_never_repeated() -> None:
    secret = SOME_IDENTITY[:-1] + ("Q" if SOME_IDENTITY[-1] != "Q" else "P")
    with pytest.raises(PermissionDeniedError) as caught:
        keys.parse_identities(f"# comment\n\n{secret}\n", source="id.txt")
    assert "id.txt:3" in caught.value.message
    assert secret not in str(caught.value)
    with pytest.raises(PermissionDeniedError, match="holds no age identity"):
        keys.parse_identities("# only a comment\n", source="empty.txt")


def test_identity_file_readable_by_everyone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.txt"
    path.write_text(keys.format_identity(X25519Identity.generate()) + "\n")
    path.chmod(0o644)
    with pytest.raises(PermissionDeniedError, match="accessible to every user"):
        keys.read_private_text(path, "identity file")
    with pytest.raises(PermissionDeniedError, match="does not exist"):
        keys.read_private_text(tmp_path / "missing", "identity file")


def test_recipients_come_inline_and_from_files(tmp_path: Path) -> None:
    one, two = X25519Identity.generate(), X25519Identity.generate()
    listing = tmp_path / "recipients.txt"
    listing.write_text(
        f"# team\n{keys.format_recipient(two.recipient)}\n\n{keys.format_recipient(one.recipient)}\n"
    )
    found = keys.resolve_recipients([keys.format_recipient(one.recipient), str(listing)], setting="x")
    assert [r.fingerprint for r in found] == [one.fingerprint, two.fingerprint]  # duplicates dropped
    (tmp_path / "empty.txt").write_text("# nobody\n")
    with pytest.raises(ConfigError, match="holds no recipient"):
        keys.resolve_recipients([str(tmp_path / "empty.txt")], setting="x")
    with pytest.raises(ConfigError, match="cannot read"):
        keys.resolve_recipients([str(tmp_path / "nope.txt")], setting="encryption.recipients")


def _plan(**kwargs: Any) -> keys.EncryptionPlan:
    return keys.EncryptionPlan.from_settings(Encryption(**kwargs))


def test_plan_groups_databases_by_their_recipients() -> None:
    default, special = X25519Identity.generate(), X25519Identity.generate()
    r_default, r_special = keys.format_recipient(default.recipient), keys.format_recipient(special.recipient)
    plan = _plan(
        recipients=(r_default,),
        databases=FrozenTables(
            {"hr": DatabaseRecipients((r_special,)), "same": DatabaseRecipients((r_default,))}
        ),
    )
    assert plan.for_database("app") is plan.default
    assert plan.for_database("same") is plan.default  # identical recipients share one group
    hr = plan.for_database("hr")
    assert hr is not None and hr.fingerprints == (special.fingerprint,)


def test_require_refuses_what_would_be_stored_in_clear() -> None:
    recipient = keys.format_recipient(X25519Identity.generate().recipient)
    plan = _plan(require=True, databases=FrozenTables({"app": DatabaseRecipients((recipient,))}))
    plan.check_required(["app"], whole_cluster=False)
    with pytest.raises(ConfigError, match="other") as caught:
        plan.check_required(["app", "other"], whole_cluster=False)
    assert caught.value.exit_code == 78
    with pytest.raises(ConfigError, match="every database"):
        plan.check_required([], whole_cluster=True)
    _plan(require=False).check_required(["x"], whole_cluster=True)


def test_passphrase_and_recipients_exclude_each_other(tmp_path: Path) -> None:
    passphrase = tmp_path / "pp"
    passphrase.write_text("a long passphrase\n")
    passphrase.chmod(0o600)
    plan = _plan(passphrase_file=str(passphrase))
    assert plan.default is not None and plan.default.fingerprints == ("passphrase",)
    recipient = keys.format_recipient(X25519Identity.generate().recipient)
    with pytest.raises(ConfigError, match="exclude each other"):
        _plan(passphrase_file=str(passphrase), recipients=(recipient,))


# --------------------------------------------------------------------------- sealed manifests


def _manifest(plan: keys.EncryptionPlan, databases: dict[str, int]) -> Manifest:
    manifest = Manifest(
        id="20261127T120000+0000-full-0123abcd",
        instance="main",
        engine="postgres",
        kind="full",
        started_at="2026-11-27T12:00:00+00:00",
        finished_at="2026-11-27T12:01:00+00:00",
        timezone="utc",
        server_version="16.4",
        server_host="db",
        compression="zstd",
        compression_level=3,
        cluster=False,
    )
    for name, size in databases.items():
        group = plan.for_database(name)
        obj = StoredObject(
            key=f"{name}/data/t.zst",
            role="table-data",
            stored_bytes=size,
            plain_bytes=size * 3,
            sha256="ab" * 32,
            compression="zstd",
            encryption=group.describe() if group else None,
        )
        manifest.databases.append(DatabaseEntry(name=name, directory=name, objects=[obj]))
    manifest.encrypted = all(o.encryption for o in manifest.all_objects())
    return manifest


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[LocalStorage, Manifest, X25519Identity, X25519Identity]:
    main, hr = X25519Identity.generate(), X25519Identity.generate()
    plan = _plan(
        recipients=(keys.format_recipient(main.recipient),),
        databases=FrozenTables({"hr": DatabaseRecipients((keys.format_recipient(hr.recipient),))}),
    )
    manifest = _manifest(plan, {"app": 100, "hr": 200})
    storage = LocalStorage(tmp_path / "repo")
    storage.prepare(f"main/{manifest.id}")
    keys.write_sealed_manifest(storage, manifest, plan)
    return storage, manifest, main, hr


def _path(storage: LocalStorage, manifest: Manifest) -> Path:
    return storage.root / "main" / manifest.id / "manifest.json"


def test_a_sealed_manifest_opens_with_any_of_its_groups_keys(
    sealed: tuple[LocalStorage, Manifest, X25519Identity, X25519Identity],
) -> None:
    storage, manifest, main, hr = sealed
    data = json.loads(_path(storage, manifest).read_text())
    assert len(data["authentication"]["keys"]) == 2
    app, hr_objects = manifest.databases[0].objects, manifest.databases[1].objects
    assert keys.unlock_set(storage, manifest, app, [main], need_identities=True, require_encryption=True)
    assert keys.unlock_set(storage, manifest, hr_objects, [hr], need_identities=True, require_encryption=True)
    with pytest.raises(PermissionDeniedError) as caught:
        keys.unlock_set(storage, manifest, hr_objects, [main], need_identities=True, require_encryption=False)
    assert hr.fingerprint in caught.value.message and main.fingerprint in caught.value.message
    # Without need (verify without keys): nothing authenticated, nothing refused.
    assert not keys.unlock_set(storage, manifest, app, [], need_identities=False, require_encryption=False)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["databases"][0]["objects"][0].update(sha256="cd" * 32),
        lambda d: d["databases"].pop(),
        lambda d: d.update(server_host="elsewhere"),
        lambda d: d["authentication"]["keys"][0].update(mac="00" * 32),
        lambda d: d["authentication"]["keys"].reverse(),
        lambda d: d["authentication"]["keys"][1].update(
            wrapped_key=d["authentication"]["keys"][0]["wrapped_key"]
        ),
        lambda d: d.pop("authentication"),
        lambda d: d["authentication"].update(format="other-1"),
    ],
    ids=["checksum", "database removed", "host", "mac", "order", "wrapped key", "seal removed", "format"],
)
def test_any_edit_of_a_sealed_manifest_is_data_error(
    sealed: tuple[LocalStorage, Manifest, X25519Identity, X25519Identity], edit: Any
) -> None:
    storage, manifest, main, hr = sealed
    data = json.loads(_path(storage, manifest).read_text())
    edit(data)
    _path(storage, manifest).write_text(json.dumps(data))
    edited = Manifest.from_json(_path(storage, manifest).read_bytes(), where="x")
    stored = edited.all_objects()
    with pytest.raises(DataError) as caught:
        keys.unlock_set(storage, edited, stored, [main, hr], need_identities=True, require_encryption=False)
    assert caught.value.exit_code == 65
    assert "manifest.json" in caught.value.message


def test_require_refuses_an_unsealed_clear_set(tmp_path: Path) -> None:
    plan = _plan()
    manifest = _manifest(plan, {"app": 10})
    storage = LocalStorage(tmp_path / "repo")
    storage.prepare(f"main/{manifest.id}")
    with storage.writer(f"main/{manifest.id}/manifest.json") as handle:
        handle.write(manifest.to_json())
    assert not keys.unlock_set(storage, manifest, [], [], need_identities=True, require_encryption=False)
    with pytest.raises(DataError, match="not encrypted"):
        keys.unlock_set(storage, manifest, [], [], need_identities=True, require_encryption=True)


# --------------------------------------------------------------------------- identity sources


def test_identities_come_from_file_credential_and_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = pytest.importorskip("keyring")
    plaintext = pytest.importorskip("keyrings.alt.file")
    backend = plaintext.PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    monkeypatch.setattr(keyring.core, "_keyring_backend", backend)
    from_file, from_credential, from_keyring = (X25519Identity.generate() for _ in range(3))
    path = tmp_path / "id.txt"
    path.write_text(keys.identity_file_text(from_file, "now"))
    path.chmod(0o600)
    credentials = tmp_path / "creds"
    credentials.mkdir(mode=0o700)
    (credentials / "age-identity").write_text(keys.format_identity(from_credential) + "\n")
    (credentials / "age-identity").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    secrets_store.store("main", "age-identity", keys.format_identity(from_keyring))
    found = keys.load_identities(Encryption(identity_file=str(path)), instance="main")
    fingerprints = [i.fingerprint for i in found]
    assert fingerprints[:3] == [from_file.fingerprint, from_credential.fingerprint, from_keyring.fingerprint]
    assert fingerprints[3] == "passphrase"  # asked for only when a set needs one
    assert secrets_store.lookup("other", "age-identity") is None
    assert secrets_store.delete("main", "age-identity")
    assert secrets_store.lookup("main", "age-identity") is None


def test_a_missing_passphrase_is_exit_77_not_a_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(secrets_store, "lookup", lambda instance, name: None)
    from dbbackup.pipeline import crypto

    sealed = crypto.encrypt_bytes(
        b"x", crypto.RecipientGroup([crypto.ScryptRecipient(b"pw", work_factor=10)])
    )
    with pytest.raises(PermissionDeniedError, match="passphrase"):
        crypto.decrypt_bytes(sealed, [keys.PromptedPassphrase("", "main")], name="x")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "pw")
    assert crypto.decrypt_bytes(sealed, [keys.PromptedPassphrase("", "main")], name="x") == b"x"
