"""Reading configuration files and finding the line of each key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dbbackup.config.tomlfile import (
    MAX_CONFIG_BYTES,
    ConfigFileProblem,
    index_key_lines,
    read_config_file,
)

SAMPLE = """\
# comment: port = 1
engine = "mysql"

[connection]
host = "db"   # trailing comment
  "port" = 5432
user='x'
databases = [
  "a",
  "b",
]
password = \"\"\"
sslmode = "fake"
\"\"\"
sslmode = "require"

[ backup ]
storage.x = 1
'jobs' = 4
"""


def test_index_key_lines_finds_keys_inside_tables() -> None:
    lines = index_key_lines(SAMPLE)
    assert lines["engine"] == 2
    assert lines["connection"] == 4
    assert lines["connection.host"] == 5
    assert lines["connection.port"] == 6
    assert lines["connection.user"] == 7
    assert lines["connection.databases"] == 8
    assert lines["connection.password"] == 12
    # the line inside the multi-line string is not a key
    assert lines["connection.sslmode"] == 15
    assert lines["backup"] == 17
    assert lines["backup.storage.x"] == 18
    assert lines["backup.jobs"] == 19
    assert "port" not in lines


def test_line_of_falls_back_to_enclosing_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('backup = { jobs = 3 }\n[connection]\nhost = "a"\n')
    config = read_config_file(path)
    assert config.line_of("connection.host") == 3
    assert config.line_of("connection.port") == 2
    assert config.line_of("backup.jobs") == 1
    assert config.line_of("nothing.here") is None
    assert config.where("connection.host") == f"{path}:3"
    assert config.where("nothing") == str(path)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('engine = "postgres"\n[connection]\nport = \n')
    with pytest.raises(ConfigFileProblem, match=rf"^{path}:3: invalid TOML: "):
        read_config_file(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigFileProblem, match=rf"{path}: file does not exist"):
        read_config_file(path)


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigFileProblem, match="not a regular file"):
        read_config_file(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileProblem, match="not a regular file"):
        read_config_file(tmp_path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigFileProblem, match="larger than"):
        read_config_file(path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'host = "caf\xe9"\n')
    with pytest.raises(ConfigFileProblem, match="not valid UTF-8"):
        read_config_file(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("")
    path.chmod(0)
    with pytest.raises(ConfigFileProblem, match="permission denied"):
        read_config_file(path)


def test_mode_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("")
    path.chmod(0o640)
    assert read_config_file(path).mode & 0o777 == 0o640
