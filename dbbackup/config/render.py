"""Text generated from the schema: effective values for ``config show`` and the
commented sample file for ``config init``."""

from __future__ import annotations

import textwrap

from dbbackup.config.loader import LoadedConfig, Source
from dbbackup.config.model import SCHEMA
from dbbackup.config.schema import KeySpec

_WIDTH = 78

_SAMPLE_HEADER = """\
dbbackup configuration; dbbackup.toml(5) describes every key.

Files are read in this order, later ones overriding earlier ones key by key:
/etc/dbbackup/dbbackup.toml, /etc/dbbackup/conf.d/*.toml (in name order), then
/etc/dbbackup/instances/<name>.toml for instance <name>; the --config option
reads only its file instead. Environment variables DBBACKUP_<SECTION>_<KEY> (DBBACKUP_<KEY> for
top-level keys) override files; command-line options override both.

Every key is shown commented out with its default. To set one, uncomment it
together with the [section] line above it.
"""


def effective_values(loaded: LoadedConfig) -> list[tuple[str, str, Source]]:
    """Every key as (dotted key, display value, source), in schema order.

    Values are TOML literals ("unset" for an unset optional key); a set secret is
    shown as ******** and never in clear.
    """
    settings = loaded.settings
    return [
        (key.dotted, key.display(SCHEMA.value_of(settings, key)), loaded.sources[key.dotted])
        for key in SCHEMA.keys
    ]


def render_sample() -> str:
    """A commented sample configuration listing every key with doc, type and default.

    All lines are comments except ``engine``, so the file loads as the defaults.
    """
    lines = _comment(_SAMPLE_HEADER)
    for key in SCHEMA.top_keys:
        lines += ["", *_key_lines(key, commented=False)]
    for section in SCHEMA.sections:
        lines += ["", "", *_comment(section.doc), f"#[{section.name}]"]
        for key in section.keys:
            lines += ["", *_key_lines(key, commented=True)]
    return "\n".join(lines) + "\n"


def _key_lines(key: KeySpec, *, commented: bool) -> list[str]:
    shown = key.default if key.default is not None else key.kind.from_toml(key.example)
    facts = [f"allowed: {key.kind.summary()}", f"default: {key.default_text}; env: {key.env_var}"]
    assignment = f"{key.name} = {key.kind.to_toml(shown)}"
    return [*_comment(key.doc, *facts), ("#" if commented else "") + assignment]


def _comment(*paragraphs: str) -> list[str]:
    """Wrap each paragraph into "# " lines; a blank line inside one separates parts."""
    lines: list[str] = []
    for text in paragraphs:
        for number, part in enumerate(text.strip("\n").split("\n\n")):
            wrapped = textwrap.wrap(part, _WIDTH - 2, break_on_hyphens=False)
            lines += ["#"] * (number > 0) + [f"# {line}" for line in wrapped]
    return lines
