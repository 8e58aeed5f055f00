"""MySQL/MariaDB connection details: endpoints, server flavors, quoting, error classes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pymysql
import pytest

from dbbackup.engines.mysql import infile
from dbbackup.engines.mysql.connection import (
    describe_error,
    endpoint_from_settings,
    parse_flavor,
    quote_ident,
    quote_string,
)
from dbbackup.errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
)


def settings(**overrides: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "host": "",
        "port": 0,
        "user": "",
        "sslmode": "prefer",
        "connect_timeout": 10.0,
        "idle_timeout": 600.0,
        "stall_timeout": 600.0,
        "lock_timeout": 60.0,
        "statement_timeout": 0.0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def test_localhost_and_empty_host_mean_the_local_socket(tmp_path: Path) -> None:
    for host in ("", "localhost"):
        endpoint = endpoint_from_settings(settings(host=host), password=None, home=tmp_path)
        assert endpoint.unix_socket == "/run/mysqld/mysqld.sock"
    socket_dir = tmp_path / "mysqld"
    socket_dir.mkdir()
    endpoint = endpoint_from_settings(settings(host=str(socket_dir)), password=None, home=None)
    assert endpoint.unix_socket == str(socket_dir / "mysqld.sock")


def test_a_hostname_means_tcp_on_the_default_port() -> None:
    endpoint = endpoint_from_settings(settings(host="db.example", user="backup"), password="pw", home=None)
    assert (endpoint.unix_socket, endpoint.host, endpoint.port) == (None, "db.example", 3306)
    assert endpoint.display == "db.example:3306"
    assert endpoint.password == "pw"


def test_silence_allowed_is_the_stall_timeout() -> None:
    assert endpoint_from_settings(settings(stall_timeout=30.0), password=None, home=None).io_timeout == 30.0
    assert endpoint_from_settings(settings(stall_timeout=0.0), password=None, home=None).io_timeout == 0.0


def test_my_cnf_is_used_only_when_it_exists(tmp_path: Path) -> None:
    assert endpoint_from_settings(settings(), password=None, home=tmp_path).option_file is None
    (tmp_path / ".my.cnf").write_text("[client]\npassword=x\n")
    assert (
        endpoint_from_settings(settings(), password=None, home=tmp_path).option_file == tmp_path / ".my.cnf"
    )


@pytest.mark.parametrize(
    ("version", "comment", "name", "number"),
    [
        (b"10.11.19-MariaDB-0+deb12u1-log", b"Debian 12", "mariadb", 101119),
        (b"8.0.36", b"MySQL Community Server - GPL", "mysql", 80036),
        (b"5.5.5-10.6.12-MariaDB", b"mariadb.org binary distribution", "mariadb", 50505),
        (b"8.4.0-commercial", b"MySQL Enterprise Server", "mysql", 80400),
    ],
)
def test_flavor_comes_from_version_and_comment(
    version: bytes, comment: bytes, name: str, number: int
) -> None:
    flavor = parse_flavor(version, comment)
    assert (flavor.name, flavor.version_num) == (name, number)
    assert flavor.mariadb == (name == "mariadb")


def test_identifiers_and_strings_are_quoted_for_any_sql_mode() -> None:
    assert quote_ident("we`ird") == "`we``ird`"
    assert (
        quote_string("STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION")
        == "'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'"
    )
    assert quote_string("it's\\") == "X'" + b"it's\\".hex() + "'"
    assert quote_string("") == "''"


@pytest.mark.parametrize(
    ("exc", "exit_code"),
    [
        (pymysql.err.OperationalError(1045, "Access denied for user 'x'@'h'"), EX_NOPERM),
        (pymysql.err.OperationalError(1227, "need RELOAD"), EX_NOPERM),
        (pymysql.err.OperationalError(1049, "Unknown database 'x'"), EX_NOINPUT),
        (pymysql.err.OperationalError(2003, "Can't connect"), EX_UNAVAILABLE),
        (pymysql.err.OperationalError(2013, "Lost connection (timed out)"), EX_UNAVAILABLE),
        (pymysql.err.OperationalError(1927, "Connection was killed"), EX_UNAVAILABLE),
        (
            pymysql.err.OperationalError(1969, "Query execution was interrupted (max_statement_time)"),
            EX_UNAVAILABLE,
        ),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), EX_TEMPFAIL),
        (pymysql.err.OperationalError(1148, "The used command is not allowed"), EX_CONFIG),
        (pymysql.err.OperationalError(1153, "Got a packet bigger than 'max_allowed_packet'"), EX_DATAERR),
        (pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"), EX_IOERR),
    ],
)
def test_server_errors_map_to_exit_codes(exc: Exception, exit_code: int) -> None:
    error = describe_error(exc, "dumping db")
    assert error.exit_code == exit_code
    assert error.message.startswith("dumping db: ")


class _Session:
    """Stands for the PyMySQL connection a load runs on (only its identity matters)."""


def test_local_infile_requests_for_other_files_are_refused() -> None:
    owner = _Session()
    with infile.allow(owner, "/dev/fd/9"):
        infile.check_request(owner, b"/dev/fd/9")
        with pytest.raises(infile.InfileRefused, match="/etc/shadow"):
            infile.check_request(owner, b"/etc/shadow")
    # Once the load is over, not even its own pipe may be read.
    with pytest.raises(infile.InfileRefused):
        infile.check_request(owner, "/dev/fd/9")
