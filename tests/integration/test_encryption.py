"""Encrypted backup sets end to end: the age CLI reads them, keys per database, require.

Every test runs the real ``dbbackup`` program against the session's PostgreSQL
server; the sets are checked from the outside (files, the ``age`` tool).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import fill_tiny
from harness import PostgresServer, require_binary

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(180)


def new_key(cli_dir: Path, name: str) -> tuple[Path, str]:
    """A fresh identity file made by ``dbbackup key generate``, and its recipient."""
    from conftest import run_cli

    path = cli_dir / f"{name}.key"
    done = run_cli("key", "generate", "-o", path, timeout=30)
    assert done.returncode == 0, done.stderr
    return path, done.stdout.strip()


def manifest_of(cli: Cli, set_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cli.set_dir(set_id) / "manifest.json").read_text(encoding="utf-8"))
    return data


def table_object(manifest: dict[str, Any], database: str) -> dict[str, Any]:
    entry = next(db for db in manifest["databases"] if db["name"] == database)
    obj: dict[str, Any] = next(o for o in entry["objects"] if o["role"] == "table-data")
    return obj


@pytest.fixture
def keyed_cli(make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path) -> tuple[Cli, Path, str]:
    identity, recipient = new_key(tmp_path, "main")
    cli = make_cli(pg_server, encryption={"recipients": [recipient], "identity_file": str(identity)})
    return cli, identity, recipient


def test_key_generate_writes_a_private_identity_and_prints_its_recipient(tmp_path: Path) -> None:
    identity, recipient = new_key(tmp_path, "k")
    assert recipient.startswith("age1") and len(recipient) == 62
    assert identity.stat().st_mode & 0o777 == 0o600
    text = identity.read_text(encoding="ascii")
    assert f"# public key: {recipient}" in text
    age_keygen = require_binary("age-keygen", "age")
    derived = subprocess.run(
        [str(age_keygen), "-y", str(identity)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    assert derived == recipient


def test_key_generate_never_replaces_a_file_or_follows_a_link(tmp_path: Path) -> None:
    from conftest import run_cli

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "planted.key"
    link.symlink_to(victim)
    done = run_cli("key", "generate", "-o", link, timeout=30)
    assert done.returncode == 73, done.stderr
    assert "symbolic link" in done.stderr
    assert victim.read_text() == "precious\n"
    done = run_cli("key", "generate", "-o", victim, timeout=30)
    assert done.returncode == 73
    assert victim.read_text() == "precious\n"


def test_encrypted_set_decrypts_with_the_age_cli_and_matches_what_restore_loads(
    keyed_cli: tuple[Cli, Path, str], pg_server: PostgresServer, tiny_db: str, scratch_names: Any
) -> None:
    cli, identity, _recipient = keyed_cli
    age = require_binary("age", "age")
    zstd = require_binary("zstd", "zstd")
    made = cli.backup("--database", tiny_db)
    assert made["encrypted"] is True
    manifest = manifest_of(cli, made["id"])
    obj = table_object(manifest, tiny_db)
    assert obj["encryption"]["format"] == "age"
    assert obj["key"].endswith(".zst.age")
    stored = cli.set_dir(made["id"]) / obj["key"]
    assert stored.read_bytes().startswith(b"age-encryption.org/v1\n")
    plain = subprocess.run(
        f"{age} -d -i {identity} {stored} | {zstd} -d -c",
        shell=True,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    assert len(plain) == obj["plain_bytes"]

    target = scratch_names("decrypted")
    cli.ok("restore", made["id"], "--database", tiny_db, "--target-db", target)
    with pg_server.connect(target) as conn, conn.cursor() as cur, cur.copy("COPY public.t TO STDOUT") as copy:
        loaded = b"".join(bytes(chunk) for chunk in copy)
    assert sorted(loaded.splitlines()) == sorted(plain.splitlines())
    assert len(loaded.splitlines()) == 50


def test_manifest_names_recipients_by_fingerprint_only(
    keyed_cli: tuple[Cli, Path, str], tiny_db: str
) -> None:
    cli, _identity, recipient = keyed_cli
    made = cli.backup("--database", tiny_db)
    text = (cli.set_dir(made["id"]) / "manifest.json").read_text(encoding="utf-8")
    assert recipient not in text
    assert "AGE-SECRET-KEY" not in text
    manifest = json.loads(text)
    fingerprints = {
        tuple(o["encryption"]["recipients"]) for db in manifest["databases"] for o in db["objects"]
    }
    assert len(fingerprints) == 1
    [group] = fingerprints
    assert len(group) == 1 and group[0].startswith("x25519:")
    assert manifest["encrypted"] is True
    assert manifest["authentication"]["keys"][0]["recipients"] == list(group)


def test_per_database_recipients_keep_databases_apart(
    make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path, scratch_names: Any
) -> None:
    first, second = scratch_names("enc_a"), scratch_names("enc_b")
    for name in (first, second):
        pg_server.create_database(name)
        fill_tiny(pg_server, name)
    key_a, recipient_a = new_key(tmp_path, "a")
    key_b, recipient_b = new_key(tmp_path, "b")
    cli = make_cli(pg_server, encryption={"recipients": [recipient_a]})
    cli.sections[f"encryption.databases.{second}"] = {"recipients": [recipient_b]}
    cli.write_config()
    made = cli.backup("--database", first, "--database", second)
    manifest = manifest_of(cli, made["id"])
    group_a = table_object(manifest, first)["encryption"]["recipients"]
    group_b = table_object(manifest, second)["encryption"]["recipients"]
    assert group_a != group_b

    # Key A opens the first database but not the second.
    target = scratch_names("restored_a")
    env_a = {"DBBACKUP_ENCRYPTION_IDENTITY_FILE": str(key_a)}
    done = cli.run("restore", made["id"], "--database", first, "--target-db", target, env=env_a)
    assert done.returncode == 0, cli.describe(done)
    refused = scratch_names("refused_b")
    done = cli.run("restore", made["id"], "--database", second, "--target-db", refused, env=env_a)
    assert done.returncode == 77, cli.describe(done)
    assert group_b[0] in done.stderr
    assert (
        pg_server.query("SELECT count(*) FROM pg_database WHERE datname = %s", params=(refused,))[0][0] == 0
    )
    # Key B alone opens the second.
    env_b = {"DBBACKUP_ENCRYPTION_IDENTITY_FILE": str(key_b)}
    done = cli.run("restore", made["id"], "--database", second, "--target-db", refused, env=env_b)
    assert done.returncode == 0, cli.describe(done)


def test_restore_without_an_identity_says_so_and_exits_77(
    keyed_cli: tuple[Cli, Path, str], tiny_db: str, pg_server: PostgresServer, scratch_names: Any
) -> None:
    cli, _identity, _recipient = keyed_cli
    made = cli.backup("--database", tiny_db)
    target = scratch_names("no_key")
    done = cli.run(
        "restore",
        made["id"],
        "--database",
        tiny_db,
        "--target-db",
        target,
        env={"DBBACKUP_ENCRYPTION_IDENTITY_FILE": ""},
    )
    assert done.returncode == 77, cli.describe(done)
    assert "no identity" in done.stderr
    assert "identity_file" in done.stderr  # the hint names where an identity can come from
    assert pg_server.query("SELECT count(*) FROM pg_database WHERE datname = %s", params=(target,))[0][0] == 0


def test_require_refuses_a_clear_backup_before_anything_is_written(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, encryption={"require": True})
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == 78, cli.describe(done)
    assert "encryption.require" in done.stderr
    assert not cli.repo.exists()


def test_require_is_met_by_per_database_recipients(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path
) -> None:
    _key, recipient = new_key(tmp_path, "only")
    cli = make_cli(pg_server, encryption={"require": True})
    cli.sections[f"encryption.databases.{tiny_db}"] = {"recipients": [recipient]}
    cli.write_config()
    made = cli.backup("--database", tiny_db)
    assert made["encrypted"] is True
    done = cli.run("backup", "--all")
    assert done.returncode == 78, cli.describe(done)


def test_a_clear_backup_warns_once_per_run(
    dbbackup_cli: Cli, tiny_db: str, pg_server: PostgresServer
) -> None:
    other = f"{tiny_db}_2"
    pg_server.create_database(other)
    try:
        done = dbbackup_cli.ok("--log-format", "json", "backup", "--database", tiny_db, "--database", other)
    finally:
        pg_server.drop_database(other)
    events = [json.loads(line).get("event") for line in done.stderr.splitlines() if line.startswith("{")]
    assert events.count("backup_unencrypted") == 1


def test_passphrase_sets_open_with_the_passphrase_only(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path, scratch_names: Any
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    cli = make_cli(pg_server, encryption={"passphrase_file": str(passphrase)})
    made = cli.backup("--database", tiny_db)
    manifest = manifest_of(cli, made["id"])
    assert table_object(manifest, tiny_db)["encryption"]["recipients"] == ["passphrase"]
    target = scratch_names("by_passphrase")
    wrong = {"DBBACKUP_ENCRYPTION_PASSPHRASE_FILE": "", "DBBACKUP_PASSPHRASE": "wrong horse"}
    done = cli.run("restore", made["id"], "--database", tiny_db, "--target-db", target, env=wrong)
    assert done.returncode == 77, cli.describe(done)
    right = {"DBBACKUP_ENCRYPTION_PASSPHRASE_FILE": "", "DBBACKUP_PASSPHRASE": "correct horse battery staple"}
    done = cli.run("restore", made["id"], "--database", tiny_db, "--target-db", target, env=right)
    assert done.returncode == 0, cli.describe(done)
    assert pg_server.query("SELECT count(*) FROM t", dbname=target)[0][0] == 50


def test_identity_from_a_systemd_credential(
    keyed_cli: tuple[Cli, Path, str], tiny_db: str, tmp_path: Path, scratch_names: Any
) -> None:
    cli, identity, _recipient = keyed_cli
    made = cli.backup("--database", tiny_db)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "age-identity").write_bytes(identity.read_bytes())
    (credentials / "age-identity").chmod(0o400)
    env = {"DBBACKUP_ENCRYPTION_IDENTITY_FILE": "", "CREDENTIALS_DIRECTORY": str(credentials)}
    done = cli.run("verify", made["id"], "--deep", env=env)
    assert done.returncode == 0, cli.describe(done)
    target = scratch_names("by_credential")
    done = cli.run("restore", made["id"], "--database", tiny_db, "--target-db", target, env=env)
    assert done.returncode == 0, cli.describe(done)


def test_identity_from_the_keyring(
    keyed_cli: tuple[Cli, Path, str], tiny_db: str, tmp_path: Path, scratch_names: Any
) -> None:
    pytest.importorskip("keyrings.alt")
    cli, identity, _recipient = keyed_cli
    made = cli.backup("--database", tiny_db)
    env = {
        "DBBACKUP_ENCRYPTION_IDENTITY_FILE": "",
        "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    stored = subprocess.run(
        [*cli.argv("secret", "set", "age-identity")],
        input=identity.read_text(),
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, **cli.env, **env},
        check=False,
    )
    assert stored.returncode == 0, stored.stderr
    target = scratch_names("by_keyring")
    done = cli.run("restore", made["id"], "--database", tiny_db, "--target-db", target, env=env)
    assert done.returncode == 0, cli.describe(done)
    deleted = cli.run("secret", "delete", "age-identity", env=env)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    done = cli.run("verify", made["id"], "--deep", env=env)
    assert done.returncode == 77, cli.describe(done)
