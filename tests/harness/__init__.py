"""Real servers for dbbackup's integration tests: PostgreSQL, PgBouncer, MariaDB.

Import it as the top-level package ``harness``::

    from harness import PostgresServer, pg_fingerprint, CuttingProxy

``tests/conftest.py`` puts the ``tests/`` directory on ``sys.path`` so this
works from any test module however pytest is started. Never import it as
``tests.harness``: the package would load twice under two names, each with its
own port registry and cleanup watchdog.

Most tests want the fixtures in ``tests/conftest.py`` (``pg_server``,
``pg_bouncer``, ``mariadb_server``, ``pg_database``, ``mariadb_database``,
``readonly_dir``, ``full_dir``, ``cutting_proxy``) rather than these classes.

Servers run on 127.0.0.1 on free ports, with their files in a private temp
directory; as root they run as the ``postgres`` / ``mysql`` system user.
A missing server binary skips the test, or fails it when
``DBBACKUP_TEST_REQUIRE_SERVERS=1`` (as in CI): see ``require_binary``.
If the test session dies without cleaning up, a watchdog process
(``reaper.py``) kills the servers and removes their directories.
"""

from .compare import mariadb_fingerprint, mariadb_grants, pg_fingerprint, pg_roles
from .faults import CuttingProxy
from .mariadb import MariaDBServer
from .net import free_port, wait_for_port, wait_until
from .pgbouncer import PgBouncer
from .postgres import PostgresServer, pg_tool
from .process import HarnessError, require_binary, servers_required, unavailable

__all__ = [
    "CuttingProxy",
    "HarnessError",
    "MariaDBServer",
    "PgBouncer",
    "PostgresServer",
    "free_port",
    "mariadb_fingerprint",
    "mariadb_grants",
    "pg_fingerprint",
    "pg_roles",
    "pg_tool",
    "require_binary",
    "servers_required",
    "unavailable",
    "wait_for_port",
    "wait_until",
]
