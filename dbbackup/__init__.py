"""dbbackup: backup and restore for PostgreSQL and MySQL/MariaDB servers."""

__version__ = "0.1.0"
