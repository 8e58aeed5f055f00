"""What every benchmark needs: a throwaway server, timed commands, dbbackup, Markdown.

Benchmarks run the real programs as child processes, exactly as a user would:
``dbbackup`` from the virtualenv beside this interpreter, PostgreSQL's client
tools from the server's own bin directory. Passwords travel in the
environment only, never on a command line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# The test harness starts and always removes throwaway servers; reuse it.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from harness import PostgresServer, pg_tool  # noqa: E402

__all__ = [
    "BenchError",
    "Dbbackup",
    "PostgresServer",
    "Timed",
    "client_env",
    "human_bytes",
    "machine_description",
    "markdown_table",
    "private_workdir",
    "run_timed",
    "start_server",
    "tool",
    "write_result",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DBBACKUP = Path(sys.executable).with_name("dbbackup")

# Settings for bulk loads: the same server serves every tool being compared.
BENCH_SERVER_SETTINGS = {
    "shared_buffers": "'256MB'",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "maintenance_work_mem": "'256MB'",
    "max_parallel_maintenance_workers": "0",
}


class BenchError(RuntimeError):
    """A measured command failed: the numbers of this run mean nothing."""


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str


def run_timed(argv: Sequence[str | Path], *, env: Mapping[str, str], timeout: float, label: str) -> Timed:
    """Run a command to completion and time it; any failure stops the benchmark."""
    begun = time.perf_counter()
    try:
        done = subprocess.run(
            [str(a) for a in argv],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{label} did not finish within {timeout:g} s") from exc
    seconds = time.perf_counter() - begun
    if done.returncode != 0:
        raise BenchError(f"{label} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return Timed(seconds, done.stdout)


def start_server() -> PostgresServer:
    server = PostgresServer(settings=BENCH_SERVER_SETTINGS)
    server.start()
    return server


def client_env(server: PostgresServer, **extra: str) -> dict[str, str]:
    """The environment for pg_dump/pg_restore/dbbackup: libpq variables, password included."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "DBBACKUP_"))}
    env.update(server.env())
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra)
    return env


def tool(server: PostgresServer, name: str) -> Path:
    return pg_tool(server, name)


class Dbbackup:
    """dbbackup configured for one server and one repository inside ``workdir``."""

    def __init__(self, server: PostgresServer, workdir: Path) -> None:
        self.repo = workdir / "repo"
        self.config = workdir / "dbbackup.toml"
        state = workdir / "state"
        runtime = workdir / "runtime"
        for directory in (state, runtime):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    'engine = "postgres"',
                    "[connection]",
                    f'host = "{server.host}"',
                    f"port = {server.port}",
                    f'user = "{server.superuser}"',
                    "[storage]",
                    f'repository = "{self.repo}"',
                    "[backup]",
                    'compression = "zstd"',
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self.env = client_env(
            server, HOME=str(workdir), STATE_DIRECTORY=str(state), RUNTIME_DIRECTORY=str(runtime)
        )

    def run(self, *args: str, timeout: float, label: str) -> Timed:
        return run_timed(
            [DBBACKUP, "--config", self.config, "--log-level", "warning", *args],
            env=self.env,
            timeout=timeout,
            label=label,
        )

    def backup_json(self, *args: str, timeout: float) -> tuple[float, dict[str, Any]]:
        timed = self.run("backup", "--json", *args, timeout=timeout, label="dbbackup backup")
        summary: dict[str, Any] = json.loads(timed.stdout)
        return timed.seconds, summary


def private_workdir(parent: Path | None, prefix: str) -> Path:
    """A fresh 0700 directory (mkdtemp: random name, created exclusively)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    """Enough about the host to know whether two result files are comparable."""
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()[0].split()
        memory = f"{int(meminfo[1]) / 1024 / 1024:.1f} GiB RAM"
    except (OSError, IndexError, ValueError):
        memory = "RAM unknown"
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{platform.node()}: {os.cpu_count()} CPUs, {memory}, load average {load}"


def write_result(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    return path
