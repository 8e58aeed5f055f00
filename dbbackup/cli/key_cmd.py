"""dbbackup key generate|recipient"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click

from dbbackup import fsutil, keys
from dbbackup.errors import CannotCreateError
from dbbackup.pipeline.crypto import X25519Identity


@click.group()
def key() -> None:
    """Create and inspect age keys for encrypted backups."""


@key.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the identity to this file (created mode 0600; an existing file is never replaced).",
)
def generate(output: Path | None) -> None:
    """Create an age identity; print its public recipient for encryption.recipients."""
    identity = X25519Identity.generate()
    text = keys.identity_file_text(identity, datetime.now(UTC).isoformat(timespec="seconds"))
    recipient = keys.format_recipient(identity.recipient)
    if output is None:
        click.echo(text, nl=False)
        click.echo(f"public key: {recipient}", err=True)
        return
    if os.path.lexists(output):
        kind = "a symbolic link" if output.is_symlink() else "a file"
        raise CannotCreateError(
            f"{output} already exists ({kind}); refusing to replace it", hint="choose a new file name"
        )
    # O_EXCL|O_NOFOLLOW: a file or link planted after the check above is refused too.
    with fsutil.open_private_file(output) as handle:
        handle.write(text.encode("ascii"))
        handle.flush()
        os.fsync(handle.fileno())
    click.echo(recipient)
    click.echo(f"identity written to {output} (fingerprint {identity.fingerprint})", err=True)


@key.command()
@click.argument("identity_file", type=click.Path(path_type=Path, dir_okay=False))
def recipient(identity_file: Path) -> None:
    """Print the public recipient of every identity in IDENTITY_FILE."""
    text = keys.read_private_text(identity_file, "identity file")
    for identity in keys.parse_identities(text, source=str(identity_file)):
        click.echo(keys.format_recipient(identity.recipient))
        click.echo(f"fingerprint: {identity.fingerprint}", err=True)
