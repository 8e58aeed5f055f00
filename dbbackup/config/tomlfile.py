"""Reading one TOML configuration file safely, and finding the line of each key.

``tomllib`` reports no line numbers for values, yet every problem must name
``file:line``; ``index_key_lines`` scans the text for table headers and ``key =``
lines, which covers how configuration files are written in practice.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A configuration file is a few kilobytes; the bound keeps a mistaken path (a log,
# /dev/zero) from being read into memory.
MAX_CONFIG_BYTES = 1 << 20

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC_KEY = re.compile(r'"(?:[^"\\]|\\.)*"')
_LITERAL_KEY = re.compile(r"'[^']*'")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)")


class ConfigFileProblem(Exception):
    """A file that cannot be used: missing, unreadable, not UTF-8 or not TOML."""


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    data: dict[str, Any]
    key_lines: dict[str, int]  # dotted key or table name -> 1-based line
    mode: int  # st_mode of the file as opened

    def line_of(self, dotted: str) -> int | None:
        """Line of ``dotted``, else of its nearest enclosing table or key."""
        parts = dotted.split(".")
        while parts:
            line = self.key_lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None

    def where(self, dotted: str) -> str:
        line = self.line_of(dotted)
        return f"{self.path}:{line}" if line is not None else str(self.path)


def read_config_file(path: Path) -> ConfigFile:
    """Read and parse ``path``; raise ``ConfigFileProblem`` naming it (and the line)."""
    raw, mode = _read_bounded(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileProblem(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigFileProblem(f"{path}: invalid TOML: {message}") from None
        reason = _TOML_POSITION.sub("", message)
        raise ConfigFileProblem(f"{path}:{position.group(1)}: invalid TOML: {reason}") from None
    return ConfigFile(path=path, data=data, key_lines=index_key_lines(text), mode=mode)


def _read_bounded(path: Path) -> tuple[bytes, int]:
    # O_NONBLOCK: opening a FIFO given by mistake must not wait for a writer.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigFileProblem(f"{path}: file does not exist") from None
    except PermissionError:
        raise ConfigFileProblem(f"{path}: cannot read file: permission denied") from None
    except OSError as exc:
        raise ConfigFileProblem(f"{path}: cannot open file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigFileProblem(f"{path}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigFileProblem(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        return b"".join(chunks), info.st_mode
    except OSError as exc:
        raise ConfigFileProblem(f"{path}: cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)


def index_key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (and table names) to the line where they first appear."""
    index: dict[str, int] = {}
    table: list[str] = []
    open_delimiter: str | None = None
    # TOML counts lines by "\n" only; str.splitlines would also split on \f, \x1c, ...
    for number, line in enumerate(text.split("\n"), start=1):
        if open_delimiter is not None:
            if open_delimiter in line:
                open_delimiter = None
            continue
        stripped = line.lstrip()
        if stripped.startswith("["):
            header = _read_key(stripped, 2 if stripped.startswith("[[") else 1)
            if header is not None:
                table = header[0]
                _note(index, table, number)
            continue
        parsed = _read_key(stripped, 0)
        if parsed is None:
            continue
        parts, end = parsed
        rest = stripped[end:]
        if not rest.startswith("="):
            continue
        _note(index, [*table, *parts], number)
        open_delimiter = _unclosed_multiline(rest[1:].lstrip())
    return index


def _note(index: dict[str, int], parts: list[str], number: int) -> None:
    """Record the line of a path and of every enclosing table it implicitly creates."""
    for length in range(1, len(parts) + 1):
        index.setdefault(".".join(parts[:length]), number)


def _unclosed_multiline(value: str) -> str | None:
    for delimiter in ('"""', "'''"):
        if value.startswith(delimiter) and value.count(delimiter) == 1:
            return delimiter
    return None


def _read_key(text: str, position: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) TOML key starting at ``position``; return parts and end."""
    parts: list[str] = []
    while True:
        position = _skip_blanks(text, position)
        part = _read_key_part(text, position)
        if part is None:
            return None
        parts.append(part[0])
        position = _skip_blanks(text, part[1])
        if position < len(text) and text[position] == ".":
            position += 1
            continue
        return parts, position


def _read_key_part(text: str, position: int) -> tuple[str, int] | None:
    for pattern in (_BARE_KEY, _BASIC_KEY, _LITERAL_KEY):
        match = pattern.match(text, position)
        if match is None:
            continue
        token = match.group(0)
        if pattern is _BARE_KEY:
            return token, match.end()
        if pattern is _LITERAL_KEY:
            return token[1:-1], match.end()
        try:
            return str(json.loads(token)), match.end()
        except ValueError:
            return token[1:-1], match.end()
    return None


def _skip_blanks(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t":
        position += 1
    return position
