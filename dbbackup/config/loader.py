"""Load settings from defaults, files, environment and flags, recording provenance.

Precedence per key: flags > ``DBBACKUP_*`` environment > files (later files win) >
defaults. Every problem from every source is collected and reported in one
``ConfigError``, each naming its source (``file:line``, variable or option), the key
and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dbbackup.config.kinds import ValueKind, ValueProblem, suggest, toml_literal
from dbbackup.config.model import SCHEMA, Settings
from dbbackup.config.schema import ENV_PREFIX, KeySpec
from dbbackup.config.tomlfile import ConfigFile, ConfigFileProblem, read_config_file
from dbbackup.errors import ConfigError, InternalError, PermissionDeniedError

DEFAULT_CONFIG_DIR = Path("/etc/dbbackup")
DEFAULT_INSTANCE = "default"
# The instance becomes a directory name and a systemd instance name.
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Read by the command line, not configuration keys.
NON_KEY_VARIABLES = frozenset({"DBBACKUP_CONFIG_DIR", "DBBACKUP_INSTANCE"})
# Files holding a password must not grant "other" any access; 0640 with a dedicated
# group (root:dbbackup) stays possible.
PASSWORD_FILE_FORBIDDEN_BITS = 0o007
_MAX_SHOWN_VALUE = 60


@dataclass(frozen=True)
class Source:
    """Where an effective value came from; ``detail`` is path:line, variable or flag
    ("" for a built-in default)."""

    kind: Literal["default", "file", "env", "flag"]
    detail: str

    def describe(self) -> str:
        if self.kind == "env":
            return f"environment {self.detail}"
        if self.kind == "flag":
            return f"option {self.detail}"
        return self.detail or self.kind


DEFAULT_SOURCE = Source("default", "")


@dataclass(frozen=True)
class LoadedConfig:
    settings: Settings
    sources: Mapping[str, Source]  # dotted key -> where its effective value came from
    files: tuple[Path, ...]  # files read, in order


class _Layers:
    """Effective values so far, their sources, and every problem found."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {k.dotted: k.default for k in SCHEMA.keys}
        self.sources: dict[str, Source] = {k.dotted: DEFAULT_SOURCE for k in SCHEMA.keys}
        self.problems: list[str] = []
        self.files: list[Path] = []
        self.exposed_passwords: list[ConfigFile] = []

    def offer(self, key: KeySpec, raw: object, source: Source, convert: Callable[[object], object]) -> None:
        try:
            value = convert(raw)
        except ValueProblem as exc:
            shown = "" if key.secret else f" = {_shorten(toml_literal(raw))}"
            self.problems.append(f"{source.describe()}: {key.dotted}{shown}: {exc}")
            return
        self.values[key.dotted] = value
        self.sources[key.dotted] = source


def load_config(
    *,
    config_file: Path | None,
    instance: str | None,
    overrides: Mapping[str, tuple[object, str]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read, merge and validate the configuration of ``instance``.

    ``config_file`` replaces the search of the configuration directory
    (``$DBBACKUP_CONFIG_DIR`` or /etc/dbbackup). ``overrides`` maps dotted keys to
    (value, flag label); a None value means the flag was not given. Raises
    ``ConfigError`` listing every problem, or ``PermissionDeniedError`` when a file
    that holds a password is accessible to others.
    """
    env = os.environ if environ is None else environ
    layers = _Layers()
    name = DEFAULT_INSTANCE if instance is None else instance
    name_ok = INSTANCE_NAME.fullmatch(name) is not None
    if not name_ok:
        layers.problems.append(
            f'instance name "{name}" is invalid: use 1-64 letters, digits, "_", "." or "-", '
            "starting with a letter or digit"
        )
    config_dir = Path(env.get("DBBACKUP_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    wanted_instance = instance if name_ok else None
    for path in _config_paths(config_file, config_dir, wanted_instance, layers):
        _apply_file(path, layers)
    _apply_environment(env, layers)
    _apply_overrides(overrides or {}, layers)
    _raise_for_problems(layers)
    settings: Settings = SCHEMA.build({"instance": name}, layers.values)
    return LoadedConfig(settings=settings, sources=dict(layers.sources), files=tuple(layers.files))


def _config_paths(
    config_file: Path | None, config_dir: Path, instance: str | None, layers: _Layers
) -> list[Path]:
    if config_file is not None:
        return [config_file]
    paths: list[Path] = []
    main = config_dir / "dbbackup.toml"
    if os.path.lexists(main):
        paths.append(main)
    paths.extend(_toml_files(config_dir / "conf.d", layers))
    if instance is not None:
        instance_dir = config_dir / "instances"
        wanted = instance_dir / f"{instance}.toml"
        if os.path.lexists(wanted):
            paths.append(wanted)
        else:
            known = [p.stem for p in _toml_files(instance_dir, layers)]
            listing = ", ".join(known) if known else "none"
            layers.problems.append(
                f'{wanted}: no such instance file for instance "{instance}"'
                f"{suggest(instance, known)}; instances in {instance_dir}: {listing}"
            )
    return paths


def _toml_files(directory: Path, layers: _Layers) -> list[Path]:
    """``*.toml`` entries of ``directory`` in name order; hidden files are skipped."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        layers.problems.append(f"{directory}: cannot list directory: {exc.strerror}")
        return []
    return [directory / n for n in names if n.endswith(".toml") and not n.startswith(".")]


def _apply_file(path: Path, layers: _Layers) -> None:
    try:
        config = read_config_file(path)
    except ConfigFileProblem as exc:
        layers.problems.append(str(exc))
        return
    layers.files.append(path)
    for name, value in config.data.items():
        key = SCHEMA.by_dotted.get(name)
        if key is not None and not key.section:
            _offer_file_value(config, key, value, layers)
        elif name in SCHEMA.section_names:
            _apply_file_section(config, name, value, layers)
        else:
            layers.problems.append(f"{config.where(name)}: {_unknown_top_level(name, value)}")
    connection = config.data.get("connection")
    has_password = isinstance(connection, dict) and bool(connection.get("password"))
    if has_password and config.mode & PASSWORD_FILE_FORBIDDEN_BITS:
        layers.exposed_passwords.append(config)


def _apply_file_section(config: ConfigFile, name: str, table: object, layers: _Layers) -> None:
    if not isinstance(table, dict):
        layers.problems.append(f"{config.where(name)}: {name} must be a table ([{name}])")
        return
    keys = SCHEMA.section_keys(name)
    for key_name, value in table.items():
        key = SCHEMA.by_dotted.get(f"{name}.{key_name}")
        if key is None:
            valid = [k.name for k in keys]
            layers.problems.append(
                f'{config.where(f"{name}.{key_name}")}: unknown key "{key_name}" in [{name}]'
                f"{suggest(key_name, valid)}; valid keys: {', '.join(valid)}"
            )
            continue
        _offer_file_value(config, key, value, layers)


def _offer_file_value(config: ConfigFile, key: KeySpec, value: object, layers: _Layers) -> None:
    layers.offer(key, value, Source("file", config.where(key.dotted)), key.kind.from_toml)


def _unknown_top_level(name: str, value: object) -> str:
    sections = ", ".join(SCHEMA.section_names)
    top = [k.name for k in SCHEMA.top_keys]
    if isinstance(value, dict):
        return f"unknown section [{name}]{suggest(name, SCHEMA.section_names)}; valid sections: {sections}"
    return (
        f'unknown key "{name}"{suggest(name, [*top, *SCHEMA.section_names])}; '
        f"valid top-level keys: {', '.join(top)}; valid sections: {sections}"
    )


def _apply_environment(environ: Mapping[str, str], layers: _Layers) -> None:
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in NON_KEY_VARIABLES:
            continue
        key = SCHEMA.by_env.get(variable)
        if key is not None:
            layers.offer(key, environ[variable], Source("env", variable), _text_reader(key.kind))
            continue
        rest = variable[len(ENV_PREFIX) :]
        for section_name in SCHEMA.section_names:
            if rest.startswith(section_name.upper() + "_"):
                valid = [k.env_var for k in SCHEMA.section_keys(section_name)]
                layers.problems.append(
                    f"environment {variable}: unknown variable for section [{section_name}]"
                    f"{suggest(variable, valid)}; valid variables: {', '.join(valid)}"
                )
                break


def _apply_overrides(overrides: Mapping[str, tuple[object, str]], layers: _Layers) -> None:
    for dotted, (value, label) in overrides.items():
        if value is None:
            continue
        key = SCHEMA.by_dotted.get(dotted)
        if key is None:
            raise InternalError(f"option {label} sets unknown configuration key {dotted!r}")
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        convert = _text_reader(key.kind) if isinstance(value, str) else key.kind.from_toml
        layers.offer(key, value, Source("flag", label), convert)


def _text_reader(kind: ValueKind) -> Callable[[object], object]:
    def read(value: object) -> object:
        if not isinstance(value, str):
            raise ValueProblem(f"must be {kind.allowed()}")
        return kind.from_text(value)

    return read


def _raise_for_problems(layers: _Layers) -> None:
    if layers.exposed_passwords:
        lines = [
            f"{c.where('connection.password')}: holds connection.password but others may "
            f"access the file (mode {c.mode & 0o777:04o})"
            for c in layers.exposed_passwords
        ]
        raise PermissionDeniedError(
            "\n".join(lines),
            hint="chmod 600 the file (or chmod 640 with group dbbackup: chown root:dbbackup), "
            "or move the password to password_file",
        )
    if layers.problems:
        count = len(layers.problems)
        plural = "" if count == 1 else "s"
        raise ConfigError(
            f"invalid configuration ({count} problem{plural}):\n  " + "\n  ".join(layers.problems),
            hint="fix each line above; `dbbackup config validate` checks again, "
            "dbbackup.toml(5) describes every key",
        )


def _shorten(text: str) -> str:
    if len(text) <= _MAX_SHOWN_VALUE:
        return text
    return text[: _MAX_SHOWN_VALUE - 3] + "..."
