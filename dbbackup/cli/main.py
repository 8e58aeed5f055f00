"""Entry point: global options, error-to-exit-code mapping, signal handling."""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

import click

from dbbackup import __version__, credentials, execute, fsutil
from dbbackup.cli.backup_cmd import backup
from dbbackup.cli.catalog_cmd import catalog
from dbbackup.cli.check_cmd import check
from dbbackup.cli.cleanup_cmd import cleanup
from dbbackup.cli.config_cmd import config
from dbbackup.cli.key_cmd import key
from dbbackup.cli.list_cmd import list_sets, show
from dbbackup.cli.metrics_cmd import metrics
from dbbackup.cli.restore_cmd import restore
from dbbackup.cli.secret_cmd import secret
from dbbackup.cli.serve_cmd import serve
from dbbackup.cli.state import CliState
from dbbackup.cli.verify_cmd import verify
from dbbackup.errors import EX_SOFTWARE, DbBackupError

log = logging.getLogger("dbbackup")

EPILOG = (
    "Exit status: 0 success, 1 failure, 2 usage error, 65 damaged backup data, 66 set or input "
    "missing, 69 database/storage unavailable, 70 internal error, 73 cannot create output, 74 I/O "
    "error, 75 temporary failure (retry later), 77 permission denied, 78 configuration error. "
    "See dbbackup(8)."
)


class Terminated(BaseException):
    """SIGTERM/SIGHUP: unwind (removing partial sets and secret files), then exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    execute.terminate_all(grace=3.0)
    raise Terminated(signum)


@click.group(
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="dbbackup")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="DBBACKUP_CONFIG",
    help="Read only this configuration file (default: /etc/dbbackup/...).",
)
@click.option(
    "--instance",
    envvar="DBBACKUP_INSTANCE",
    help="Instance name: reads /etc/dbbackup/instances/NAME.toml and names the set directory.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Least severe level logged (default: info).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or JSON on stderr (journald is used natively under systemd).",
)
@click.option(
    "--ask-password",
    is_flag=True,
    help="Ask at the terminal for a password or passphrase no other source has (never without one).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: Path | None,
    instance: str | None,
    log_level: str | None,
    log_format: str | None,
    ask_password: bool,
) -> None:
    """Back up, verify and restore PostgreSQL and MySQL/MariaDB servers."""
    credentials.allow_prompt(ask_password)
    ctx.obj = CliState(config_file=config_file, instance=instance, log_level=log_level, log_format=log_format)


cli.add_command(backup)
cli.add_command(restore)
cli.add_command(verify)
cli.add_command(list_sets)
cli.add_command(show)
cli.add_command(config)
cli.add_command(catalog)
cli.add_command(key)
cli.add_command(secret)
cli.add_command(cleanup)
cli.add_command(check)
cli.add_command(serve)
cli.add_command(metrics)


def main(argv: list[str] | None = None) -> int:
    fsutil.set_private_umask()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        # Without standalone mode, click returns the code given to ctx.exit() (check exits 0-3).
        status = cli.main(args=argv, prog_name="dbbackup", standalone_mode=False)
        return status if isinstance(status, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except DbBackupError as exc:
        click.echo(f"dbbackup: error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"dbbackup: hint: {exc.hint}", err=True)
        return exc.exit_code
    except Terminated as exc:
        click.echo(f"dbbackup: stopped by {signal.Signals(exc.signum).name}", err=True)
        return 128 + exc.signum
    except KeyboardInterrupt:
        execute.terminate_all(grace=3.0)
        click.echo("dbbackup: interrupted", err=True)
        return 130
    except Exception:
        log.debug("internal error", exc_info=True)
        click.echo("dbbackup: internal error (this is a bug); details follow:", err=True)
        click.echo(traceback.format_exc(), err=True)
        return EX_SOFTWARE
    finally:
        execute.terminate_all(grace=3.0)


if __name__ == "__main__":
    sys.exit(main())
