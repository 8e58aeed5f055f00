"""The configuration schema, declared once on the settings dataclasses.

Each key is one dataclass field written with ``setting(default, kind, doc)``; each
section is one field of the root class whose metadata is ``section_doc(doc)``.
``Schema.from_dataclass`` walks those declarations, so the loader, the environment
layer, the sample file, ``config show`` and the man page all read the same data and
adding a key is a one-line change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbbackup.config.kinds import ValueKind

ENV_PREFIX = "DBBACKUP_"

_KEY_META = "dbbackup.key"
_SECTION_META = "dbbackup.section"


@dataclass(frozen=True)
class _KeyMeta:
    kind: ValueKind
    doc: str
    secret: bool
    example: object


def setting(
    default: object, kind: ValueKind, doc: str, *, secret: bool = False, example: object = None
) -> Any:
    """Declare a key: ``default`` is written as in TOML (e.g. "10s") and checked now.

    ``default=None`` means "unset" and needs a kind that accepts None; ``example`` is
    then what the sample file shows. ``secret`` keys are masked wherever shown.
    """
    value = None if default is None else kind.from_toml(default)
    meta = _KeyMeta(kind=kind, doc=doc, secret=secret, example=example)
    return dataclasses.field(default=value, metadata={_KEY_META: meta})


def section_doc(doc: str) -> dict[str, str]:
    """Field metadata declaring a section of the root settings class, e.g.
    ``field(default_factory=LogSettings, metadata=section_doc("Logging."))``."""
    return {_SECTION_META: doc}


@dataclass(frozen=True)
class KeySpec:
    """One configuration key, for loaders and generated documentation."""

    section: str  # "" for a top-level key
    name: str
    kind: ValueKind
    default: object  # converted value; None = unset
    doc: str
    secret: bool = False
    example: object = None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.dotted.replace(".", "_").upper()

    @property
    def type_name(self) -> str:
        return self.kind.type_name

    @property
    def allowed(self) -> str:
        return self.kind.allowed()

    @property
    def default_text(self) -> str:
        return "unset" if self.default is None else self.kind.to_toml(self.default)

    def display(self, value: object) -> str:
        """Render an effective value for people: TOML literal, "unset", or masked.

        A set secret shows as a bare ******** (not a quoted string) so that pasting
        ``config show`` output into a file fails to parse instead of setting that
        literal password.
        """
        if value is None:
            return "unset"
        if self.secret and value:
            return "********"
        return self.kind.to_toml(value)


@dataclass(frozen=True)
class SectionSpec:
    name: str
    doc: str
    cls: type[Any]
    keys: tuple[KeySpec, ...]


class Schema:
    """Every key and section of a root settings dataclass, with lookups."""

    def __init__(self, root: type[Any], top: tuple[KeySpec, ...], sections: tuple[SectionSpec, ...]) -> None:
        self.root = root
        self.top_keys = top
        self.sections = sections
        self.keys: tuple[KeySpec, ...] = top + tuple(k for s in sections for k in s.keys)
        self.by_dotted: dict[str, KeySpec] = {k.dotted: k for k in self.keys}
        self.by_env: dict[str, KeySpec] = {k.env_var: k for k in self.keys}
        self.section_names: tuple[str, ...] = tuple(s.name for s in sections)
        if len(self.by_env) != len(self.keys) or set(self.section_names) & set(self.by_dotted):
            raise ValueError("configuration schema has colliding key or variable names")

    @classmethod
    def from_dataclass(cls, root: type[Any]) -> Schema:
        top: list[KeySpec] = []
        sections: list[SectionSpec] = []
        for field in dataclasses.fields(root):
            if _KEY_META in field.metadata:
                top.append(_key_spec("", field))
            elif _SECTION_META in field.metadata:
                section_cls: object = field.default_factory
                if not (isinstance(section_cls, type) and dataclasses.is_dataclass(section_cls)):
                    raise TypeError(f"section {field.name} needs its class as default_factory")
                keys = tuple(_key_spec(field.name, f) for f in dataclasses.fields(section_cls))
                doc = field.metadata[_SECTION_META]
                sections.append(SectionSpec(field.name, doc, section_cls, keys))
        return cls(root, tuple(top), tuple(sections))

    def section_keys(self, name: str) -> tuple[KeySpec, ...]:
        return next(s.keys for s in self.sections if s.name == name)

    def build(self, fixed: Mapping[str, Any], values: Mapping[str, object]) -> Any:
        """Create the root dataclass from complete dotted-key ``values``.

        ``fixed`` holds root fields that are not configuration keys (the instance).
        """
        kwargs: dict[str, Any] = dict(fixed)
        for key in self.top_keys:
            kwargs[key.name] = values[key.dotted]
        for sect in self.sections:
            kwargs[sect.name] = sect.cls(**{k.name: values[k.dotted] for k in sect.keys})
        return self.root(**kwargs)

    def value_of(self, settings: object, key: KeySpec) -> object:
        holder = getattr(settings, key.section) if key.section else settings
        return getattr(holder, key.name)


def _key_spec(section_name: str, field: dataclasses.Field[Any]) -> KeySpec:
    meta: _KeyMeta | None = field.metadata.get(_KEY_META)
    if meta is None:
        raise TypeError(f"{section_name}.{field.name} is not declared with setting()")
    return KeySpec(
        section=section_name,
        name=field.name,
        kind=meta.kind,
        default=field.default,
        doc=meta.doc,
        secret=meta.secret,
        example=meta.example,
    )
