"""Loading: search order, precedence with provenance, and problem reporting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from dbbackup.config import Settings, Source, load_config
from dbbackup.errors import ConfigError, InternalError, PermissionDeniedError

WriteFile = Callable[..., Path]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "etc-dbbackup"
    directory.mkdir()
    return directory


@pytest.fixture
def environ(config_dir: Path) -> dict[str, str]:
    return {"DBBACKUP_CONFIG_DIR": str(config_dir)}


@pytest.fixture
def write(config_dir: Path) -> WriteFile:
    def write_file(relative: str, text: str, mode: int = 0o600) -> Path:
        path = config_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        return path

    return write_file


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    """The problem lines of a ConfigError message (one per problem)."""
    return [line.strip() for line in excinfo.value.message.splitlines()[1:]]


def test_no_files_gives_defaults(environ: dict[str, str]) -> None:
    loaded = load_config(config_file=None, instance=None, environ=environ)
    settings = loaded.settings
    assert settings == Settings(instance="default")
    assert settings.engine == "postgres"
    assert settings.connection.port == 0
    assert settings.connection.databases == ("*",)
    assert settings.connection.connect_timeout == 10.0
    assert settings.connection.idle_timeout == 600.0
    assert settings.backup.compression_level is None
    assert settings.backup.timeout == 86400.0
    assert settings.catalog_path == Path("/var/lib/dbbackup/repo/catalog.sqlite")
    assert loaded.files == ()
    assert set(loaded.sources.values()) == {Source("default", "")}


def test_precedence_flag_over_env_over_file_over_default(environ: dict[str, str], write: WriteFile) -> None:
    main = write(
        "dbbackup.toml",
        '[connection]\nport = 5433\n\n[backup]\njobs = 3\ncompression = "gzip"\n',
    )
    environ |= {"DBBACKUP_BACKUP_JOBS": "4", "DBBACKUP_BACKUP_COMPRESSION": "lz4"}
    overrides: dict[str, tuple[object, str]] = {
        "backup.jobs": (5, "--jobs"),
        "backup.compression_level": (None, "--compression-level"),
    }
    loaded = load_config(config_file=None, instance=None, overrides=overrides, environ=environ)
    settings = loaded.settings
    assert (settings.backup.jobs, loaded.sources["backup.jobs"]) == (5, Source("flag", "--jobs"))
    assert settings.backup.compression == "lz4"
    assert loaded.sources["backup.compression"] == Source("env", "DBBACKUP_BACKUP_COMPRESSION")
    assert settings.connection.port == 5433
    assert loaded.sources["connection.port"] == Source("file", f"{main}:2")
    assert settings.backup.compression_level is None
    assert loaded.sources["backup.compression_level"] == Source("default", "")
    assert loaded.files == (main,)


def test_conf_d_files_apply_in_name_order(environ: dict[str, str], write: WriteFile) -> None:
    main = write(
        "dbbackup.toml",
        '[connection]\nhost = "db1"\ndatabases = ["a", "b"]\n[backup]\njobs = 3\n',
    )
    late = write("conf.d/20-late.toml", "[backup]\njobs = 5\n")
    early = write(
        "conf.d/10-early.toml",
        '[backup]\njobs = 4\ncompression = "xz"\n[connection]\nport = 6432\ndatabases = ["c"]\n',
    )
    write("conf.d/.hidden.toml", "[backup]\njobs = 99\n")
    write("conf.d/README.txt", "not toml")
    loaded = load_config(config_file=None, instance=None, environ=environ)
    settings = loaded.settings
    assert loaded.files == (main, early, late)
    assert settings.backup.jobs == 5
    assert loaded.sources["backup.jobs"] == Source("file", f"{late}:2")
    assert settings.backup.compression == "xz"
    # tables merge key by key; lists replace
    assert (settings.connection.host, settings.connection.port) == ("db1", 6432)
    assert settings.connection.databases == ("c",)


def test_instance_file_is_read_last(environ: dict[str, str], write: WriteFile) -> None:
    write("dbbackup.toml", 'engine = "postgres"\n[backup]\njobs = 3\n')
    write("conf.d/50.toml", "[backup]\njobs = 4\n")
    instance_file = write("instances/main.toml", 'engine = "mysql"\n[backup]\njobs = 6\n')
    write("instances/other.toml", 'engine = "postgres"\n')
    loaded = load_config(config_file=None, instance="main", environ=environ)
    assert loaded.settings.instance == "main"
    assert loaded.settings.engine == "mysql"
    assert loaded.settings.backup.jobs == 6
    assert loaded.files[-1] == instance_file
    assert loaded.sources["engine"] == Source("file", f"{instance_file}:1")


def test_missing_instance_file_lists_existing_instances(
    environ: dict[str, str], write: WriteFile, config_dir: Path
) -> None:
    write("instances/main.toml", "")
    write("instances/reporting.toml", "")
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance="mian", environ=environ)
    [problem] = problems_of(excinfo)
    assert str(config_dir / "instances" / "mian.toml") in problem
    assert "main, reporting" in problem
    assert 'did you mean "main"' in problem


def test_no_instance_name_needs_no_instance_file(environ: dict[str, str]) -> None:
    loaded = load_config(config_file=None, instance=None, environ=environ)
    assert loaded.settings.instance == "default"


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", ".hidden", "a" * 65, "sp ace"])
def test_invalid_instance_names_are_refused(name: str, environ: dict[str, str], write: WriteFile) -> None:
    write("etc.toml", 'engine = "mysql"\n')
    with pytest.raises(ConfigError, match="instance name") as excinfo:
        load_config(config_file=None, instance=name, environ=environ)
    assert excinfo.value.exit_code == 78


def test_valid_instance_names(environ: dict[str, str], write: WriteFile) -> None:
    for name in ("a", "main-2", "db_1.prod", "X" * 64):
        write(f"instances/{name}.toml", "")
        assert load_config(config_file=None, instance=name, environ=environ).settings.instance == name


def test_explicit_file_replaces_the_search(environ: dict[str, str], write: WriteFile, tmp_path: Path) -> None:
    write("dbbackup.toml", "this is not toml")
    write("conf.d/10.toml", "[backup]\njobs = 9\n")
    explicit = tmp_path / "only.toml"
    explicit.write_text('engine = "mysql"\n')
    loaded = load_config(config_file=explicit, instance="main", environ=environ)
    assert loaded.files == (explicit,)
    assert loaded.settings.engine == "mysql"
    assert loaded.settings.backup.jobs == 2
    assert loaded.settings.instance == "main"


def test_missing_explicit_file_is_named(environ: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: file does not exist"):
        load_config(config_file=missing, instance=None, environ=environ)


def test_unknown_key_names_file_line_and_suggestion(environ: dict[str, str], write: WriteFile) -> None:
    path = write("dbbackup.toml", '# settings\n\n[connection]\nhost = "db"\nprot = 5432\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance=None, environ=environ)
    [problem] = problems_of(excinfo)
    assert problem.startswith(f'{path}:5: unknown key "prot" in [connection]')
    assert 'did you mean "port"?' in problem
    assert "valid keys: host, port, user" in problem


def test_unknown_sections_and_top_level_keys(environ: dict[str, str], write: WriteFile) -> None:
    path = write("dbbackup.toml", 'engin = "mysql"\n[conection]\nhost = "x"\n[plugins.x]\na = 1\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance=None, environ=environ)
    problems = problems_of(excinfo)
    assert problems[0].startswith(f'{path}:1: unknown key "engin" (did you mean "engine"?)')
    assert problems[1].startswith(f"{path}:2: unknown section [conection]")
    assert 'did you mean "connection"' in problems[1]
    assert problems[2].startswith(f"{path}:4: unknown section [plugins]")
    assert "valid sections: connection, storage, backup" in problems[2]


def test_section_that_is_not_a_table(environ: dict[str, str], write: WriteFile) -> None:
    path = write("dbbackup.toml", "backup = 3\n")
    with pytest.raises(ConfigError, match=f"{path}:1: backup must be a table"):
        load_config(config_file=None, instance=None, environ=environ)


BAD_VALUES = [
    ('engine = "oracle"', 'engine = "oracle": must be one of: postgres, mysql'),
    ("[connection]\nport = 70000", "connection.port = 70000: is out of range; must be an"),
    ('[connection]\nport = "5432"', 'connection.port = "5432": must be an integer 0..65535, not'),
    ('[connection]\nsslmode = "on"', 'connection.sslmode = "on": must be one of: disable, allow'),
    ('[connection]\nlock_timeout = "5 min later"', 'lock_timeout = "5 min later": not a duration'),
    ("[connection]\nconnect_timeout = -1", "connect_timeout = -1: a duration cannot be negative"),
    ('[backup]\ntimezone = "Mars/Base"', 'timezone = "Mars/Base": must be "local", "utc" or an'),
    ("[backup]\njobs = 0", "backup.jobs = 0: is out of range; must be an integer >= 1"),
    ('[backup]\ncompression_level = "max"', 'compression_level = "max": must be an integer, not'),
    ("[connection]\ndatabases = []", "connection.databases = []: must be a non-empty array"),
    ('[log]\nfile = "dbbackup.log"', 'log.file = "dbbackup.log": must be an absolute path'),
]


@pytest.mark.parametrize(("line", "expected"), BAD_VALUES)
def test_bad_values_name_source_key_and_allowed_values(
    line: str, expected: str, environ: dict[str, str], write: WriteFile
) -> None:
    path = write("dbbackup.toml", f"# values\n{line}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance=None, environ=environ)
    [problem] = problems_of(excinfo)
    line_number = line.count("\n") + 2
    assert problem.startswith(f"{path}:{line_number}: ")
    assert expected in problem


def test_all_problems_are_reported_at_once(
    environ: dict[str, str], write: WriteFile, config_dir: Path
) -> None:
    main = write("dbbackup.toml", '[backup]\njobs = 0\ncompression = "zip"\n')
    broken = write("conf.d/10.toml", "[log\n")
    environ |= {"DBBACKUP_CONNECTION_PORT": "port", "DBBACKUP_LOG_LEVEL": "loud"}
    overrides: dict[str, tuple[object, str]] = {"restore.jobs": (-1, "--jobs")}
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance="x", overrides=overrides, environ=environ)
    problems = problems_of(excinfo)
    assert excinfo.value.message.startswith("invalid configuration (7 problems):")
    assert excinfo.value.exit_code == 78
    assert excinfo.value.hint
    assert problems[0].startswith(f"{config_dir / 'instances' / 'x.toml'}: no such instance")
    assert problems[1].startswith(f"{main}:2: backup.jobs = 0")
    assert problems[2].startswith(f'{main}:3: backup.compression = "zip"')
    assert 'did you mean "zstd"' in problems[2] or 'did you mean "gzip"' in problems[2]
    assert problems[3].startswith(f"{broken}:1: invalid TOML")
    assert problems[4].startswith('environment DBBACKUP_CONNECTION_PORT: connection.port = "port"')
    assert problems[5].startswith('environment DBBACKUP_LOG_LEVEL: log.level = "loud"')
    assert problems[6].startswith("option --jobs: restore.jobs = -1: is out of range")


def test_environment_values_are_converted(environ: dict[str, str]) -> None:
    environ |= {
        "DBBACKUP_ENGINE": "mysql",
        "DBBACKUP_CONNECTION_PORT": " 3307 ",
        "DBBACKUP_CONNECTION_DATABASES": "shop, crm ,billing",
        "DBBACKUP_CONNECTION_EXCLUDE": "",
        "DBBACKUP_CONNECTION_LOCK_TIMEOUT": "2min",
        "DBBACKUP_CONNECTION_STATEMENT_TIMEOUT": "90",
        "DBBACKUP_BACKUP_COMPRESSION_LEVEL": "19",
        "DBBACKUP_STORAGE_REPOSITORY": "/srv/backups",
    }
    loaded = load_config(config_file=None, instance=None, environ=environ)
    settings = loaded.settings
    assert settings.engine == "mysql"
    assert settings.connection.port == 3307
    assert settings.connection.databases == ("shop", "crm", "billing")
    assert settings.connection.exclude == ()
    assert settings.connection.lock_timeout == 120.0
    assert settings.connection.statement_timeout == 90.0
    assert settings.backup.compression_level == 19
    assert settings.catalog_path == Path("/srv/backups/catalog.sqlite")
    assert loaded.sources["connection.databases"] == Source("env", "DBBACKUP_CONNECTION_DATABASES")


def test_empty_environment_value_unsets_optional_integer(environ: dict[str, str], write: WriteFile) -> None:
    write("dbbackup.toml", "[backup]\ncompression_level = 5\n")
    environ["DBBACKUP_BACKUP_COMPRESSION_LEVEL"] = ""
    loaded = load_config(config_file=None, instance=None, environ=environ)
    assert loaded.settings.backup.compression_level is None


def test_unknown_variable_of_known_section_is_an_error(environ: dict[str, str]) -> None:
    environ["DBBACKUP_CONNECTION_FOO"] = "1"
    environ["DBBACKUP_CONNECTION_PROT"] = "1"
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance=None, environ=environ)
    problems = problems_of(excinfo)
    assert len(problems) == 2
    assert problems[0].startswith("environment DBBACKUP_CONNECTION_FOO: unknown variable")
    assert "DBBACKUP_CONNECTION_PORT" in problems[0]
    assert 'did you mean "DBBACKUP_CONNECTION_PORT"' in problems[1]


def test_other_variables_are_ignored(environ: dict[str, str]) -> None:
    environ |= {
        "DBBACKUP_INSTANCE": "main",
        "DBBACKUP_FOO": "x",
        "DBBACKUP_CREDENTIALS_X": "y",
        "dbbackup_connection_port": "nonsense",
        "PGPORT": "5433",
    }
    loaded = load_config(config_file=None, instance=None, environ=environ)
    assert loaded.settings == Settings(instance="default")


def test_config_dir_comes_from_given_environment(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "dbbackup.toml").write_text('engine = "mysql"\n')
    loaded = load_config(config_file=None, instance=None, environ={"DBBACKUP_CONFIG_DIR": str(other)})
    assert loaded.settings.engine == "mysql"


def test_flag_values_of_various_types(environ: dict[str, str]) -> None:
    overrides: dict[str, tuple[object, str]] = {
        "connection.databases": (("a", "b"), "--database"),
        "log.file": (Path("/var/log/dbbackup.log"), "--log-file"),
        "backup.jobs": ("3", "--jobs"),
        "backup.compression": ("none", "--compression"),
        "log.level": (None, "--log-level"),
    }
    loaded = load_config(config_file=None, instance=None, overrides=overrides, environ=environ)
    settings = loaded.settings
    assert settings.connection.databases == ("a", "b")
    assert settings.log.file == "/var/log/dbbackup.log"
    assert settings.backup.jobs == 3
    assert settings.backup.compression == "none"
    assert loaded.sources["log.level"] == Source("default", "")


def test_override_of_unknown_key_is_an_internal_error(environ: dict[str, str]) -> None:
    with pytest.raises(InternalError, match="--frobnicate"):
        load_config(config_file=None, instance=None, overrides={"x.y": (1, "--frobnicate")}, environ=environ)


def test_world_accessible_file_with_password_is_refused(environ: dict[str, str], write: WriteFile) -> None:
    path = write("dbbackup.toml", '[connection]\npassword = "hunter2"\n', mode=0o644)
    with pytest.raises(PermissionDeniedError) as excinfo:
        load_config(config_file=None, instance=None, environ=environ)
    assert excinfo.value.exit_code == 77
    assert f"{path}:2" in excinfo.value.message
    assert "0644" in excinfo.value.message
    assert excinfo.value.hint is not None and "chmod 600" in excinfo.value.hint
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_private_file_with_password_is_accepted(mode: int, environ: dict[str, str], write: WriteFile) -> None:
    write("dbbackup.toml", '[connection]\npassword = "hunter2"\n', mode=mode)
    loaded = load_config(config_file=None, instance=None, environ=environ)
    assert loaded.settings.connection.password == "hunter2"


def test_world_readable_file_without_password_is_accepted(environ: dict[str, str], write: WriteFile) -> None:
    write("dbbackup.toml", '[connection]\npassword = ""\nuser = "backup"\n', mode=0o644)
    assert load_config(config_file=None, instance=None, environ=environ).settings.connection.user


def test_secret_values_are_not_echoed_in_errors(environ: dict[str, str], write: WriteFile) -> None:
    write("dbbackup.toml", '[connection]\npassword = ["hunter2"]\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(config_file=None, instance=None, environ=environ)
    [problem] = problems_of(excinfo)
    assert "connection.password: must be a string, not an array" in problem
    assert "hunter2" not in str(excinfo.value)


def test_dangling_conf_d_symlink_is_reported(environ: dict[str, str], config_dir: Path) -> None:
    (config_dir / "conf.d").mkdir()
    link = config_dir / "conf.d" / "10.toml"
    link.symlink_to(config_dir / "missing.toml")
    with pytest.raises(ConfigError, match=f"{link}: file does not exist"):
        load_config(config_file=None, instance=None, environ=environ)


def test_settings_are_frozen(environ: dict[str, str]) -> None:
    settings = load_config(config_file=None, instance=None, environ=environ).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.backup.jobs = 9  # type: ignore[misc]


def test_catalog_path_setting_wins(environ: dict[str, str]) -> None:
    environ["DBBACKUP_CATALOG_PATH"] = "/var/cache/dbbackup/catalog.sqlite"
    settings = load_config(config_file=None, instance=None, environ=environ).settings
    assert settings.catalog_path == Path("/var/cache/dbbackup/catalog.sqlite")
