"""Value kinds: how one configuration value is checked, converted and written back.

A kind reads a value from TOML (already typed by ``tomllib``) or from a string (an
environment variable or a flag), and renders a value as a TOML literal for the sample
file and ``config show``. Problems are raised as ``ValueProblem`` whose message says
what is allowed but never repeats the value, so secrets cannot leak through errors.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
import tomllib
import zoneinfo
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

from dbbackup.config.duration import ALLOWED_FORMS, DurationError, format_duration, parse_duration

_URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://")
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})


class ValueProblem(ValueError):
    """A value that its key does not accept; the message says what is allowed."""


def suggest(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean "x"?)' for a close candidate, else ''."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def describe_type(value: object) -> str:
    """Name the TOML type of ``value`` the way a user sees it in the file."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return f"a {type(value).__name__}"


def toml_literal(value: object) -> str:
    """Render ``value`` as a TOML literal (strings quoted, sequences as arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes, except that
        # TOML also forbids a raw DEL character.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{toml_literal(str(k))} = {toml_literal(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)


class ValueKind(ABC):
    """How one key's values are read, checked and written."""

    type_name: ClassVar[str]

    @abstractmethod
    def allowed(self) -> str:
        """Describe the accepted values, e.g. 'an integer 1..65535'."""

    @abstractmethod
    def from_toml(self, value: object) -> object:
        """Check and convert a value as ``tomllib`` returned it (or a flag passed it)."""

    def from_text(self, text: str) -> object:
        """Check and convert a string from the environment or a flag."""
        return self.from_toml(text)

    def summary(self) -> str:
        """A short form of ``allowed()`` for generated documentation."""
        return self.allowed()

    def to_toml(self, value: object) -> str:
        return toml_literal(value)

    def _mismatch(self, value: object) -> ValueProblem:
        return ValueProblem(f"must be {self.allowed()}, not {describe_type(value)}")


@dataclass(frozen=True)
class Text(ValueKind):
    """A string, optionally restricted to a fixed set of choices."""

    choices: tuple[str, ...] = ()
    type_name: ClassVar[str] = "string"

    def allowed(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        return "a string"

    def from_toml(self, value: object) -> object:
        if not isinstance(value, str):
            raise self._mismatch(value)
        if self.choices and value not in self.choices:
            raise ValueProblem(f"must be {self.allowed()}{suggest(value, self.choices)}")
        return value


@dataclass(frozen=True)
class Integer(ValueKind):
    """A whole number within an optional range; ``optional`` allows "unset" (None)."""

    minimum: int | None = None
    maximum: int | None = None
    optional: bool = False
    type_name: ClassVar[str] = "integer"

    def allowed(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"an integer {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f"an integer >= {self.minimum}"
        if self.maximum is not None:
            return f"an integer <= {self.maximum}"
        return "an integer"

    def from_toml(self, value: object) -> object:
        if self.optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._mismatch(value)
        too_small = self.minimum is not None and value < self.minimum
        too_large = self.maximum is not None and value > self.maximum
        if too_small or too_large:
            raise ValueProblem(f"is out of range; must be {self.allowed()}")
        return value

    def from_text(self, text: str) -> object:
        stripped = text.strip()
        if self.optional and not stripped:
            return None
        if not _INTEGER_TEXT.fullmatch(stripped):
            raise ValueProblem(f"must be {self.allowed()}")
        return self.from_toml(int(stripped))


@dataclass(frozen=True)
class Boolean(ValueKind):
    type_name: ClassVar[str] = "boolean"

    def allowed(self) -> str:
        return "true or false"

    def from_toml(self, value: object) -> object:
        if not isinstance(value, bool):
            raise self._mismatch(value)
        return value

    def from_text(self, text: str) -> object:
        word = text.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueProblem("must be one of: true, false, yes, no, 1, 0")


@dataclass(frozen=True)
class Duration(ValueKind):
    """Seconds as float; written as an integer or a string like "1h30m"."""

    type_name: ClassVar[str] = "duration"

    def allowed(self) -> str:
        return ALLOWED_FORMS

    def summary(self) -> str:
        return 'a duration: seconds, or number+unit such as "30s", "5min", "1h30m", "7d"'

    def from_toml(self, value: object) -> object:
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise ValueProblem(str(exc)) from None

    def to_toml(self, value: object) -> str:
        if not isinstance(value, int | float):
            raise TypeError(f"duration value must be seconds, got {value!r}")
        return toml_literal(format_duration(float(value)))


@dataclass(frozen=True)
class TextList(ValueKind):
    """A list of non-empty strings, kept as a tuple; from text, comma-separated."""

    non_empty: bool = False
    type_name: ClassVar[str] = "list of strings"

    def allowed(self) -> str:
        prefix = "a non-empty" if self.non_empty else "an"
        return f"{prefix} array of non-empty strings"

    def from_toml(self, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise self._mismatch(value)
        if not all(isinstance(item, str) and item for item in value):
            raise ValueProblem(f"must be {self.allowed()}")
        if self.non_empty and not value:
            raise ValueProblem(f"must be {self.allowed()}")
        return tuple(value)

    def from_text(self, text: str) -> object:
        return self.from_toml([item.strip() for item in text.split(",") if item.strip()])


@dataclass(frozen=True)
class FilePath(ValueKind):
    """An absolute path or "" for none: relative paths would depend on the working
    directory, which is "/" under systemd and something else at a terminal."""

    type_name: ClassVar[str] = "path"

    def allowed(self) -> str:
        return 'an absolute path, or "" for none'

    def from_toml(self, value: object) -> object:
        if not isinstance(value, str):
            raise self._mismatch(value)
        if value and not value.startswith("/"):
            raise ValueProblem(f"must be {self.allowed()}")
        return value


@dataclass(frozen=True)
class Location(ValueKind):
    """Where backups live: an absolute directory or a storage URL such as s3://b/p."""

    type_name: ClassVar[str] = "path or URL"

    def allowed(self) -> str:
        return "an absolute path or a URL (scheme://...)"

    def from_toml(self, value: object) -> object:
        if not isinstance(value, str):
            raise self._mismatch(value)
        if not (value.startswith("/") or _URL_SCHEME.match(value)):
            raise ValueProblem(f"must be {self.allowed()}")
        return value


@dataclass(frozen=True)
class TimeZone(ValueKind):
    """A zone name: "local", "utc" or an IANA name that ``zoneinfo`` can load."""

    type_name: ClassVar[str] = "time zone"

    def allowed(self) -> str:
        return '"local", "utc" or an IANA time zone name such as "Europe/Berlin"'

    def from_toml(self, value: object) -> object:
        if not isinstance(value, str):
            raise self._mismatch(value)
        if value in ("local", "utc"):
            return value
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            hint = suggest(value, sorted(zoneinfo.available_timezones()))
            raise ValueProblem(f"must be {self.allowed()}{hint}") from None
        return value


_AGE_RECIPIENT = re.compile(r"age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}")


@dataclass(frozen=True)
class Recipients(ValueKind):
    """age recipients (``age1...``) or absolute paths of files listing them; checked fully when used."""

    type_name: ClassVar[str] = "list of recipients"

    def allowed(self) -> str:
        return "an array of age recipients (age1...) or absolute paths of recipient files"

    def from_toml(self, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise self._mismatch(value)
        for item in value:
            if not isinstance(item, str) or not (item.startswith("/") or _AGE_RECIPIENT.fullmatch(item)):
                raise ValueProblem(f"must be {self.allowed()}")
        return tuple(dict.fromkeys(value))

    def from_text(self, text: str) -> object:
        return self.from_toml([item.strip() for item in text.split(",") if item.strip()])


@dataclass(frozen=True)
class DatabaseRecipients:
    """The per-database override of ``[encryption.databases.<name>]``."""

    recipients: tuple[str, ...]


class FrozenTables(Mapping[str, DatabaseRecipients]):
    """A read-only, hashable mapping, so settings stay immutable and it may be a default."""

    def __init__(self, tables: Mapping[str, DatabaseRecipients]) -> None:
        self._tables = dict(tables)

    def __getitem__(self, name: str) -> DatabaseRecipients:
        return self._tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._tables.items())))

    def __repr__(self) -> str:
        return f"FrozenTables({self._tables!r})"


@dataclass(frozen=True)
class PerDatabase(ValueKind):
    """Sub-tables ``[encryption.databases.<name>]`` with the keys of :class:`DatabaseRecipients`.

    From the environment the value is a TOML inline table:
    ``{ app = { recipients = ["age1..."] } }``.
    """

    type_name: ClassVar[str] = "table of tables"
    _KEYS: ClassVar[tuple[str, ...]] = ("recipients",)

    def allowed(self) -> str:
        return 'tables [encryption.databases.<name>] with the key "recipients"'

    def summary(self) -> str:
        return 'one table per database, [encryption.databases.NAME], with recipients = [...]'

    def from_toml(self, value: object) -> object:
        if not isinstance(value, dict):
            raise self._mismatch(value)
        result: dict[str, DatabaseRecipients] = {}
        for name, table in value.items():
            where = f"[encryption.databases.{toml_literal(name) if not _BARE.fullmatch(name) else name}]"
            if not isinstance(table, dict):
                raise ValueProblem(f"{where} must be a table, not {describe_type(table)}")
            unknown = [key for key in table if key not in self._KEYS]
            if unknown:
                raise ValueProblem(
                    f'unknown key "{unknown[0]}" in {where}{suggest(unknown[0], self._KEYS)}; '
                    f"valid keys: {', '.join(self._KEYS)}"
                )
            if "recipients" not in table:
                raise ValueProblem(f'{where} needs the key "recipients"')
            try:
                recipients = Recipients().from_toml(table["recipients"])
            except ValueProblem as exc:
                raise ValueProblem(f"{where} recipients: {exc}") from None
            assert isinstance(recipients, tuple)
            result[name] = DatabaseRecipients(recipients)
        return FrozenTables(result)

    def from_text(self, text: str) -> object:
        try:
            parsed = tomllib.loads(f"value = {text}")
        except tomllib.TOMLDecodeError:
            example = "{ app = { recipients = [...] } }"
            raise ValueProblem(f"must be a TOML inline table such as {example}") from None
        return self.from_toml(parsed["value"])

    def to_toml(self, value: object) -> str:
        if not isinstance(value, Mapping):
            raise TypeError(f"per-database value must be a dict, got {value!r}")
        return toml_literal({name: {"recipients": list(db.recipients)} for name, db in value.items()})


_BARE = re.compile(r"[A-Za-z0-9_-]+")
