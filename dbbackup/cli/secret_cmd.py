"""dbbackup secret set|delete"""

from __future__ import annotations

import sys

import click

from dbbackup import credentials, keys, secrets_store
from dbbackup.cli.state import state
from dbbackup.config import DEFAULT_INSTANCE, INSTANCE_NAME
from dbbackup.errors import PermissionDeniedError, UsageError

MAX_SECRET_BYTES = 64 * 1024


def _instance(ctx: click.Context) -> str:
    name = state(ctx).instance or DEFAULT_INSTANCE
    if not INSTANCE_NAME.fullmatch(name):
        raise UsageError(f"instance name {name!r} is invalid", hint='use letters, digits, "_", "." or "-"')
    return name


def _read_value(name: str) -> str:
    """From a terminal: asked twice without echo. Otherwise: standard input (a pipe or file)."""
    if sys.stdin.isatty():
        first = credentials.read_hidden(f"{name}: ")
        if credentials.read_hidden(f"{name} (again): ") != first:
            raise UsageError("the two entries differ; nothing was stored")
        return first
    text = sys.stdin.read(MAX_SECRET_BYTES + 1)
    if len(text) > MAX_SECRET_BYTES:
        raise UsageError(f"{name} is longer than {MAX_SECRET_BYTES} bytes")
    return text if name == keys.IDENTITY_CREDENTIAL else keys.first_line(text)


@click.group()
def secret() -> None:
    """Keep the database password, the passphrase or an age identity in the system keyring."""


@secret.command("set")
@click.argument("name", type=click.Choice(secrets_store.NAMES))
@click.pass_context
def set_secret(ctx: click.Context, name: str) -> None:
    """Store NAME for the instance, typed at a terminal or read from standard input."""
    instance = _instance(ctx)
    value = _read_value(name)
    if not value.strip():
        raise UsageError(f"{name} is empty; nothing was stored")
    if name == keys.IDENTITY_CREDENTIAL:
        try:
            keys.parse_identities(value, source="standard input")
        except PermissionDeniedError as exc:
            hint = "pipe in an identity file, e.g. one written by `dbbackup key generate`"
            raise UsageError(exc.message, hint=hint) from exc
    credentials.register(value.strip())
    secrets_store.store(instance, name, value)
    service = secrets_store.service_name(instance)
    click.echo(f"stored {name} of instance {instance} in the keyring (service {service})")


@secret.command("delete")
@click.argument("name", type=click.Choice(secrets_store.NAMES))
@click.pass_context
def delete_secret(ctx: click.Context, name: str) -> None:
    """Remove NAME of the instance from the keyring."""
    instance = _instance(ctx)
    if secrets_store.delete(instance, name):
        click.echo(f"deleted {name} of instance {instance} from the keyring")
    else:
        click.echo(f"no {name} of instance {instance} in the keyring")
