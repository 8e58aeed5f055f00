"""dbbackup.backupset: set names, path components, manifests and how sets are found."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbbackup import backupset
from dbbackup.backupset import (
    MANIFEST,
    SET_ID_RE,
    DatabaseEntry,
    Manifest,
    StoredObject,
    TableRef,
    complete_set_ids,
    new_set_id,
    parse_set_time,
    path_component,
    read_manifest,
    resolve_zone,
    write_manifest,
)
from dbbackup.errors import EX_CONFIG, EX_DATAERR, EX_NOINPUT, ConfigError, DataError, InputMissingError
from dbbackup.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(60)

KOLKATA = timezone(timedelta(hours=5, minutes=30))
ST_JOHNS_WINTER = timezone(-timedelta(hours=3, minutes=30))


# -- set ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "stamp"),
    [
        (UTC, "20261127T143005+0000"),
        (KOLKATA, "20261127T200005+0530"),
        (ST_JOHNS_WINTER, "20261127T110005-0330"),
    ],
)
def test_set_id_is_local_wall_time_with_offset(zone: timezone, stamp: str) -> None:
    instant = datetime(2026, 11, 27, 14, 30, 5, 999_999, tzinfo=UTC).astimezone(zone)
    set_id = new_set_id(instant)
    assert SET_ID_RE.match(set_id)
    assert re.fullmatch(rf"{re.escape(stamp)}-full-[0-9a-f]{{8}}", set_id)
    assert parse_set_time(set_id) == instant.replace(microsecond=0)


def test_set_ids_of_the_same_second_differ() -> None:
    instant = datetime(2026, 1, 1, tzinfo=UTC)
    ids = {new_set_id(instant) for _ in range(2000)}
    assert len(ids) == 2000


def test_set_id_carries_its_kind() -> None:
    assert "-incr-" in new_set_id(datetime(2026, 1, 1, tzinfo=UTC), "incr")


@pytest.mark.parametrize(
    "name",
    ["", "latest", "20261127T143005-full-1a2b3c4d", "20261127T143005+0000-full-1A2B3C4D",
     "20261127T143005+0000-copy-1a2b3c4d", ".tmp-20261127T143005+0000-full-1a2b3c4d",
     "20261127T143005+0000-full-1a2b3c4d/..", "catalog.sqlite"],
)  # fmt: skip
def test_other_names_are_not_set_ids(name: str) -> None:
    assert parse_set_time(name) is None


def test_resolve_zone_knows_local_utc_and_iana_names() -> None:
    assert resolve_zone("utc") is UTC
    assert resolve_zone("UTC") is UTC
    assert datetime(2026, 1, 1, tzinfo=resolve_zone("Asia/Kolkata")).utcoffset() == timedelta(
        hours=5, minutes=30
    )
    assert datetime.now(resolve_zone("local")).utcoffset() is not None
    with pytest.raises(ConfigError) as caught:
        resolve_zone("Mars/Olympus_Mons")
    assert caught.value.exit_code == EX_CONFIG
    assert "backup.timezone" in caught.value.message


# -- database names as path components --------------------------------------------------------------

WEIRD_NAMES = [
    "app", "Mixed Case", "données", "日本語", "a/b", "../../etc", ".", "..", ".hidden", "-dash",
    "100%", "%2F", "tab\tname", "new\nline", "back\\slash", 'quo"te', "nul\0byte", " ", "~",
]  # fmt: skip


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_path_component_is_one_safe_component(name: str) -> None:
    component = path_component(name)
    assert component not in ("", ".", "..")
    assert not component.startswith(".")
    assert "/" not in component and "\0" not in component and "\\" not in component
    assert unquote(component) == name


def test_path_components_of_distinct_names_differ() -> None:
    components = [path_component(name) for name in WEIRD_NAMES]
    assert len(set(components)) == len(WEIRD_NAMES)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=63).filter(lambda n: len(n.encode("utf-8", "surrogatepass")) <= 63))
def test_path_component_round_trips_any_name(name: str) -> None:
    # PostgreSQL names are at most 63 bytes; MySQL's 64 characters encode to no more.
    component = path_component(name)
    assert "/" not in component and "\0" not in component
    assert component not in (".", "..") and not component.startswith(".")
    assert unquote(component, errors="surrogatepass") == name
    assert len(component.encode()) <= 255


# -- manifests -------------------------------------------------------------------------------------


def make_manifest(set_id: str = "20261127T143005+0530-full-1a2b3c4d") -> Manifest:
    return Manifest(
        id=set_id,
        instance="main",
        engine="postgres",
        kind="full",
        started_at="2026-11-27T14:30:05+05:30",
        finished_at="2026-11-27T14:31:00+05:30",
        timezone="Asia/Kolkata",
        server_version="PostgreSQL 15.8",
        server_host="127.0.0.1:5432",
        compression="zstd",
        compression_level=3,
        cluster=True,
        consistency={"lsn": "0/3000060"},
        globals=[StoredObject("globals.sql.zst", "globals", 120, 300, "ab" * 32, "zstd")],
        databases=[
            DatabaseEntry(
                name="données",
                directory=path_component("données"),
                properties={"encoding": "UTF8", "settings": ['search_path="Mixed Case", public']},
                objects=[
                    StoredObject("d/pre-data.pgdump.zst", "pre-data", 10, 20, "cd" * 32, "zstd"),
                    StoredObject(
                        "d/data/00001.copy.zst",
                        "table-data",
                        1000,
                        4000,
                        "ef" * 32,
                        "zstd",
                        table=TableRef("Mixed Case", "Élément", ["id", "naïve"]),
                        encryption={"recipients": ["age1example"]},
                    ),
                ],
            ),
        ],
        client_host="backup-host",
    )


def test_manifest_json_round_trip() -> None:
    manifest = make_manifest()
    raw = manifest.to_json()
    assert "données".encode() in raw  # readable, not \\u-escaped
    assert Manifest.from_json(raw, where="test") == manifest


def test_manifest_summary_has_the_listed_fields() -> None:
    summary = make_manifest().summary()
    assert summary["databases"] == ["données"]
    assert summary["stored_bytes"] == 120 + 10 + 1000
    assert summary["encrypted"] is False
    assert summary["location"] == "main/20261127T143005+0530-full-1a2b3c4d"


def _with(data: dict[str, Any], path: tuple[str | int, ...], value: object) -> bytes:
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return json.dumps(data).encode()


def _valid() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(make_manifest().to_json())
    return loaded


MALFORMED = {
    "not json": b"{this is not json",
    "truncated": make_manifest().to_json()[:200],
    "empty": b"",
    "not utf-8": b"\xff\xfe{}",
    "a list": b"[]",
    "null": b"null",
    "no id": json.dumps({k: v for k, v in _valid().items() if k != "id"}).encode(),
    "version not a number": _with(_valid(), ("format_version",), "one"),
    "version infinite": make_manifest().to_json().replace(b'"format_version": 1', b'"format_version": 1e999'),
    "objects not a list": _with(_valid(), ("databases", 0, "objects"), 7),
    "object without sha256": json.dumps(
        {**_valid(), "globals": [{"key": "g", "role": "globals", "stored_bytes": 1}]}
    ).encode(),
    "size not a number": _with(_valid(), ("databases", 0, "objects", 0, "stored_bytes"), "big"),
    "table with stray field": _with(_valid(), ("databases", 0, "objects", 1, "table", "x"), 1),
    "properties a string": _with(_valid(), ("databases", 0, "properties"), "abc"),
    "deeply nested": b'{"format_version": 1, "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_manifest_is_a_data_error(raw: bytes) -> None:
    with pytest.raises(DataError) as caught:
        Manifest.from_json(raw, where="main/x/manifest.json")
    assert caught.value.exit_code == EX_DATAERR
    assert caught.value.message.startswith("main/x/manifest.json: ")


def test_newer_manifest_format_asks_for_an_upgrade() -> None:
    raw = _with(_valid(), ("format_version",), backupset.FORMAT_VERSION + 1)
    with pytest.raises(DataError, match="newer") as caught:
        Manifest.from_json(raw, where="m")
    assert caught.value.hint and "upgrade" in caught.value.hint


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELD_PATHS = [
    ("id",), ("format_version",), ("compression_level",), ("cluster",), ("consistency",), ("globals",),
    ("databases",), ("databases", 0), ("databases", 0, "objects"), ("databases", 0, "objects", 0),
    ("databases", 0, "objects", 1, "table"), ("databases", 0, "properties"), ("globals", 0, "plain_bytes"),
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELD_PATHS), JSON_VALUES)
def test_any_damaged_field_is_either_read_or_a_data_error(path: tuple[str | int, ...], value: object) -> None:
    raw = _with(_valid(), path, value)
    try:
        manifest = Manifest.from_json(raw, where="m")
    except DataError:
        return
    assert isinstance(manifest, Manifest)


# -- sets in a repository --------------------------------------------------------------------------


def test_read_manifest_of_a_missing_set_is_input_missing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(InputMissingError) as caught:
        read_manifest(storage, "main", "20261127T143005+0000-full-1a2b3c4d")
    assert caught.value.exit_code == EX_NOINPUT


def _store(storage: LocalStorage, manifest: Manifest) -> None:
    storage.prepare(backupset.set_prefix(manifest.instance, manifest.id))
    write_manifest(storage, manifest)


def test_read_manifest_refuses_a_manifest_of_another_set(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    manifest = make_manifest()
    _store(storage, manifest)
    moved = "20261127T143005+0000-full-99999999"
    (tmp_path / "main" / manifest.id).rename(tmp_path / "main" / moved)
    with pytest.raises(DataError, match="describes"):
        read_manifest(storage, "main", moved)


def test_written_manifest_reads_back(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    manifest = make_manifest()
    _store(storage, manifest)
    assert read_manifest(storage, "main", manifest.id) == manifest
    assert (tmp_path / "main" / manifest.id / MANIFEST).stat().st_mode & 0o777 == 0o600


def test_complete_sets_are_ordered_by_instant_across_offsets(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    # 10:00+0100 is 09:00 UTC: earlier than 09:30+0000 although it sorts later as text.
    ids = [
        "20261127T093000+0000-full-00000002",
        "20261127T100000+0100-full-00000001",
        "20261127T120000+0530-full-00000000",
    ]
    for set_id in ids:
        _store(storage, make_manifest(set_id))
    (tmp_path / "main" / "20261127T080000+0000-full-0000000f").mkdir()  # incomplete: no manifest
    (tmp_path / "main" / "not-a-set").mkdir()
    (tmp_path / "main" / "not-a-set" / MANIFEST).write_text("{}")
    assert complete_set_ids(storage, "main") == [ids[2], ids[1], ids[0]]
    assert complete_set_ids(storage, "other") == []
