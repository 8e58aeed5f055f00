"""A LONGBLOB and a LONGTEXT of more than 256 MiB each survive backup and restore byte for byte.

The server is one of its own: InnoDB wants a redo log ten times the largest
row, and the restore runs under a max_allowed_packet far below the rows, to
show that LOAD DATA streams them instead of needing one packet per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from harness import MariaDBServer

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

KIB = 1024
MIB = 1024 * KIB
BLOCKS = 256 * KIB  # of 1 KiB each: 256 MiB

# Each 1 KiB block holds every byte value the row format escapes or must keep
# raw (backslash, TAB, newline, NUL, CR, 0xFF) among ordinary bytes; the text
# block holds two-byte characters and the same escapes.
BLOB_BLOCK = "CONCAT(UNHEX(REPEAT('41FF000D', 254)), UNHEX('5C090A5C4E5C5C41'))"
TEXT_BLOCK = "CONCAT(REPEAT('é', 508), 'a\\t\\\\\\nzzzz')"

FINGERPRINT = "SELECT id, LENGTH(b), MD5(b), LENGTH(t), CHAR_LENGTH(t), MD5(t) FROM {db}.huge ORDER BY id"


def mysql_cli(make_cli: MakeCli, server: MariaDBServer, **sections: Any) -> Cli:
    cli = make_cli(
        None,
        port=server.port,
        user="root",
        password="",
        env={"DBBACKUP_CONNECTION_PASSWORD": server.password},
        **sections,
    )
    cli.top["engine"] = "mysql"
    cli.write_config()
    return cli


def test_values_over_256_mib_round_trip_byte_for_byte(make_cli: MakeCli) -> None:
    with MariaDBServer(["--innodb-log-file-size=3G", "--innodb-buffer-pool-size=512M"]) as server:
        server.create_database("blobs")
        server.execute("CREATE TABLE huge (id INT PRIMARY KEY, b LONGBLOB, t LONGTEXT)", "blobs")
        server.execute(
            f"INSERT INTO huge (id, b) VALUES (1, CONCAT(REPEAT({BLOB_BLOCK}, {BLOCKS}), 'end'))", "blobs"
        )
        server.execute(
            f"INSERT INTO huge (id, t) VALUES (2, CONCAT(REPEAT({TEXT_BLOCK}, {BLOCKS}), 'fin'))", "blobs"
        )
        server.execute("INSERT INTO huge VALUES (3, '', 'small'), (4, NULL, NULL)", "blobs")
        before = server.query(FINGERPRINT.format(db="blobs"))
        assert before[0][1] == 256 * MIB + 3 and before[1][3] == 256 * MIB + 3

        cli = mysql_cli(make_cli, server, backup={"jobs": 2})
        summary = cli.backup("--database", "blobs")
        server.execute(f"SET GLOBAL max_allowed_packet = {16 * MIB}")
        cli.ok("restore", summary["id"], "--database", "blobs", "--target-db", "blobs_copy", timeout=900)
        assert server.query(FINGERPRINT.format(db="blobs_copy")) == before
