"""Tamper evidence of encrypted sets: any change fails verify and restore with exit 65.

Each case alters a freshly made encrypted set the way an attacker with write
access to the repository (but without the identity) could, then checks that
``verify`` and ``restore`` both exit 65 naming what was altered, and that the
restore target was never created.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import PostgresServer, require_binary

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(180)

CHUNK = 64 * 1024 + 16


def _key(tmp_path: Path) -> tuple[Path, str]:
    from conftest import run_cli

    path = tmp_path / "id.key"
    done = run_cli("key", "generate", "-o", path, timeout=30)
    assert done.returncode == 0, done.stderr
    return path, done.stdout.strip()


@pytest.fixture
def big_table_db(pg_server: PostgresServer, pg_database: str) -> str:
    """A table whose stored object spans several 64 KiB chunks, plus a small one."""
    pg_server.execute(
        "CREATE TABLE big (id int, payload text);"
        "INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 20000) g;"
        "CREATE TABLE small (id int); INSERT INTO small SELECT generate_series(1, 10);",
        dbname=pg_database,
    )
    return pg_database


class Sets:
    """Two encrypted sets of the same database in one repository."""

    def __init__(self, cli: Cli, database: str, recipient: str) -> None:
        self.cli = cli
        self.database = database
        self.recipient = recipient
        self.first = cli.backup("--database", database)["id"]
        self.second = cli.backup("--database", database)["id"]

    def manifest_path(self, set_id: str) -> Path:
        return self.cli.set_dir(set_id) / "manifest.json"

    def manifest(self, set_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_path(set_id).read_text(encoding="utf-8"))
        return data

    def objects(self, set_id: str) -> list[dict[str, Any]]:
        entry = self.manifest(set_id)["databases"][0]
        objects: list[dict[str, Any]] = entry["objects"]
        return objects

    def table(self, set_id: str, name: str) -> dict[str, Any]:
        return next(
            o for o in self.objects(set_id) if o["role"] == "table-data" and o["table"]["name"] == name
        )

    def path(self, set_id: str, obj: dict[str, Any]) -> Path:
        return self.cli.set_dir(set_id) / str(obj["key"])


@pytest.fixture
def sets(make_cli: MakeCli, pg_server: PostgresServer, big_table_db: str, tmp_path: Path) -> Sets:
    identity, recipient = _key(tmp_path)
    cli = make_cli(pg_server, encryption={"recipients": [recipient], "identity_file": str(identity)})
    made = Sets(cli, big_table_db, recipient)
    assert made.path(made.first, made.table(made.first, "big")).stat().st_size > 3 * CHUNK
    return made


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def flip_header(s: Sets) -> str:
    obj = s.table(s.first, "big")
    flip(s.path(s.first, obj), 40)
    return str(obj["key"])


def flip_middle(s: Sets) -> str:
    obj = s.table(s.first, "big")
    flip(s.path(s.first, obj), obj["stored_bytes"] // 2)
    return str(obj["key"])


def flip_last_byte(s: Sets) -> str:
    obj = s.table(s.first, "small")
    flip(s.path(s.first, obj), obj["stored_bytes"] - 1)
    return str(obj["key"])


def truncate_at_chunk(s: Sets) -> str:
    obj = s.table(s.first, "big")
    path = s.path(s.first, obj)
    data = path.read_bytes()
    header_end = data.index(b"\n---") + 48  # "--- " + 43 MAC characters + newline, then the nonce
    path.write_bytes(data[: header_end + 16 + 2 * CHUNK])
    return str(obj["key"])


def truncate_one_byte(s: Sets) -> str:
    obj = s.table(s.first, "small")
    path = s.path(s.first, obj)
    path.write_bytes(path.read_bytes()[:-1])
    return str(obj["key"])


def swap_within_set(s: Sets) -> str:
    big, small = s.table(s.first, "big"), s.table(s.first, "small")
    a, b = s.path(s.first, big), s.path(s.first, small)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    return str(big["key"])


def swap_between_sets(s: Sets) -> str:
    # The same table of the same database, backed up twice: same size, other ciphertext.
    obj = s.table(s.first, "small")
    shutil.copyfile(s.path(s.second, s.table(s.second, "small")), s.path(s.first, obj))
    return str(obj["key"])


def forge_object_and_checksum(s: Sets) -> str:
    """What an attacker who knows the public recipient can do: new data, consistent checksum."""
    age, zstd = require_binary("age", "age"), require_binary("zstd", "zstd")
    obj = s.table(s.first, "small")
    path = s.path(s.first, obj)
    forged = subprocess.run(
        f"{zstd} -q -c | {age} -r {s.recipient}",
        shell=True,
        input=b"666\n",
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    path.write_bytes(forged)
    import hashlib

    text = s.manifest_path(s.first).read_text(encoding="utf-8")
    text = text.replace(obj["sha256"], hashlib.sha256(forged).hexdigest())
    text = text.replace(f'"stored_bytes": {obj["stored_bytes"]}', f'"stored_bytes": {len(forged)}', 1)
    s.manifest_path(s.first).write_text(text, encoding="utf-8")
    return "manifest.json"


def edit_manifest_value(s: Sets) -> str:
    data = s.manifest(s.first)
    data["databases"][0]["properties"]["owner"] = "mallory"
    s.manifest_path(s.first).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return "manifest.json"


def drop_the_seal(s: Sets) -> str:
    data = s.manifest(s.first)
    del data["authentication"]
    s.manifest_path(s.first).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return "manifest.json"


def replace_the_wrapped_key(s: Sets) -> str:
    data = s.manifest(s.first)
    data["authentication"]["keys"][0]["wrapped_key"] = s.manifest(s.second)["authentication"]["keys"][0][
        "wrapped_key"
    ]
    s.manifest_path(s.first).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return "manifest.json"


def pretend_it_was_never_encrypted(s: Sets) -> str:
    data = s.manifest(s.first)
    del data["authentication"]
    data["encrypted"] = False
    for obj in data["databases"][0]["objects"]:
        obj["encryption"] = None
    s.manifest_path(s.first).write_text(json.dumps(data, indent=2), encoding="utf-8")
    pre_data = next(o for o in data["databases"][0]["objects"] if o["role"] == "pre-data")
    return str(pre_data["key"])


TAMPERINGS: list[Callable[[Sets], str]] = [
    flip_header,
    flip_middle,
    flip_last_byte,
    truncate_at_chunk,
    truncate_one_byte,
    swap_within_set,
    swap_between_sets,
    forge_object_and_checksum,
    edit_manifest_value,
    drop_the_seal,
    replace_the_wrapped_key,
    pretend_it_was_never_encrypted,
]


def database_exists(server: PostgresServer, name: str) -> bool:
    return bool(server.query("SELECT count(*) FROM pg_database WHERE datname = %s", params=(name,))[0][0])


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda f: f.__name__)
def test_tampering_fails_verify_and_restore_before_the_target_exists(
    sets: Sets, pg_server: PostgresServer, scratch_names: Any, tamper: Callable[[Sets], str]
) -> None:
    named = tamper(sets)
    cli = sets.cli
    verified = cli.run("verify", sets.first)
    assert verified.returncode == 65, cli.describe(verified)
    assert named in verified.stderr
    target = scratch_names("tampered")
    restored = cli.run("restore", sets.first, "--database", sets.database, "--target-db", target)
    assert restored.returncode == 65, cli.describe(restored)
    assert named in restored.stderr
    assert not database_exists(pg_server, target)
    # The untouched set still restores: the failure was about the tampering, not the setup.
    if tamper is not swap_between_sets:
        intact = scratch_names("intact")
        cli.ok("restore", sets.second, "--database", sets.database, "--target-db", intact)


def test_require_refuses_a_set_that_is_not_encrypted(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, scratch_names: Any
) -> None:
    cli = make_cli(pg_server)
    made = cli.backup("--database", tiny_db)
    cli.set("encryption", "require", True)
    target = scratch_names("unencrypted")
    done = cli.run("restore", made["id"], "--database", tiny_db, "--target-db", target)
    assert done.returncode == 65, cli.describe(done)
    assert "not encrypted" in done.stderr
    assert not database_exists(pg_server, target)
    done = cli.run("verify", made["id"])
    assert done.returncode == 65, cli.describe(done)


def test_verify_without_identity_checks_checksums_and_warns(sets: Sets) -> None:
    cli = sets.cli
    done = cli.run(
        "--log-format", "json", "verify", sets.first, env={"DBBACKUP_ENCRYPTION_IDENTITY_FILE": ""}
    )
    assert done.returncode == 0, cli.describe(done)
    events = [json.loads(line).get("event") for line in done.stderr.splitlines() if line.startswith("{")]
    assert "verify_unauthenticated" in events
    flip_middle(sets)
    done = cli.run("verify", sets.first, env={"DBBACKUP_ENCRYPTION_IDENTITY_FILE": ""})
    assert done.returncode == 65, cli.describe(done)
    done = cli.run("verify", "--deep", sets.second, env={"DBBACKUP_ENCRYPTION_IDENTITY_FILE": ""})
    assert done.returncode == 77, cli.describe(done)


def test_deep_verify_opens_every_object(sets: Sets) -> None:
    done = sets.cli.run("verify", "--deep", "--json", sets.first)
    assert done.returncode == 0, sets.cli.describe(done)
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["objects"] == len(sets.objects(sets.first))
