"""Schema-generated output: effective values with sources, and the sample file."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from dbbackup.config import (
    KeySpec,
    Settings,
    Source,
    effective_values,
    load_config,
    render_sample,
    schema_keys,
    schema_sections,
)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "etc").mkdir()
    return {"DBBACKUP_CONFIG_DIR": str(tmp_path / "etc")}


def test_effective_values_mask_the_password(environ: dict[str, str]) -> None:
    environ["DBBACKUP_CONNECTION_PASSWORD"] = "hunter2"
    environ["DBBACKUP_BACKUP_JOBS"] = "4"
    loaded = load_config(config_file=None, instance=None, environ=environ)
    rows = {key: (shown, source) for key, shown, source in effective_values(loaded)}
    assert rows["connection.password"] == (
        "********",
        Source("env", "DBBACKUP_CONNECTION_PASSWORD"),
    )
    assert all("hunter2" not in shown for shown, _ in rows.values())
    assert rows["backup.jobs"] == ("4", Source("env", "DBBACKUP_BACKUP_JOBS"))


def test_effective_values_cover_every_key_as_toml_literals(environ: dict[str, str]) -> None:
    loaded = load_config(config_file=None, instance=None, environ=environ)
    rows = effective_values(loaded)
    assert [key for key, _, _ in rows] == [spec.dotted for spec in schema_keys()]
    shown = {key: value for key, value, _ in rows}
    assert shown["engine"] == '"postgres"'
    assert shown["connection.password"] == '""'
    assert shown["connection.port"] == "0"
    assert shown["connection.databases"] == '["*"]'
    assert shown["connection.connect_timeout"] == '"10s"'
    assert shown["backup.compression_level"] == "unset"


def test_sample_loads_as_the_defaults(tmp_path: Path, environ: dict[str, str]) -> None:
    sample = tmp_path / "dbbackup.toml"
    sample.write_text(render_sample())
    loaded = load_config(config_file=sample, instance=None, environ=environ)
    assert loaded.settings == Settings(instance="default")
    assert loaded.sources["engine"].kind == "file"
    assert {s.kind for k, s in loaded.sources.items() if k != "engine"} == {"default"}


def test_sample_comments_only_everything_but_engine() -> None:
    assignments = [line for line in render_sample().splitlines() if line and line[0] != "#"]
    assert assignments == ['engine = "postgres"']


def test_uncommented_sample_loads_with_every_key(tmp_path: Path, environ: dict[str, str]) -> None:
    uncommented = re.sub(r"(?m)^#(\[|\w+ = )", r"\1", render_sample())
    data = tomllib.loads(uncommented)
    for spec in schema_keys():
        table = data[spec.section] if spec.section else data
        assert spec.name in table, spec.dotted
    sample = tmp_path / "full.toml"
    sample.write_text(uncommented)
    settings = load_config(config_file=sample, instance=None, environ=environ).settings
    assert settings == dataclasses.replace(
        Settings(instance="default"),
        backup=dataclasses.replace(Settings(instance="x").backup, compression_level=3),
    )


def test_sample_documents_every_key() -> None:
    sample = render_sample()
    prose = " ".join(re.sub(r"(?m)^# ?", "", sample).split())
    for spec in schema_keys():
        assert spec.doc in prose, spec.dotted
        assert f"env: {spec.env_var}" in prose
    for section in schema_sections():
        assert f"#[{section.name}]" in sample


def test_schema_keys_describe_each_key() -> None:
    keys = {spec.dotted: spec for spec in schema_keys()}
    assert next(iter(keys)) == "engine"
    port = keys["connection.port"]
    assert isinstance(port, KeySpec)
    assert (port.section, port.name, port.type_name, port.default_text) == (
        "connection",
        "port",
        "integer",
        "0",
    )
    assert port.allowed == "an integer 0..65535"
    assert port.env_var == "DBBACKUP_CONNECTION_PORT"
    assert keys["connection.idle_timeout"].default_text == '"10min"'
    assert keys["backup.compression_level"].default_text == "unset"
    assert keys["connection.password"].secret
    assert all(spec.doc and len(spec.doc) < 120 for spec in keys.values())
    assert len({spec.env_var for spec in keys.values()}) == len(keys)


def test_schema_defaults_are_the_dataclass_defaults() -> None:
    settings = Settings(instance="default")
    for spec in schema_keys():
        holder = getattr(settings, spec.section) if spec.section else settings
        assert getattr(holder, spec.name) == spec.default, spec.dotted
