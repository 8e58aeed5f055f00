"""Watchdog that cleans up after a test session that died without doing so.

Run as a separate process (``python -I reaper.py``) whose stdin is a pipe from
the test session. The session announces what it creates, one line each::

    group <pgid> <comm>   a server's process group (leader's /proc comm)
    mount <path>          a tmpfs mounted for a fault test
    dir <path>            a temporary directory
    ungroup|unmount|undir <...>   the same thing, cleaned up normally

When the pipe reaches end of file -- the session exited, was killed by a
timeout or crashed -- every resource still registered is removed: process
groups get SIGKILL, mounts are lazily unmounted, directories deleted. A normal
session unregisters everything first, so then there is nothing left to do.

Standalone on purpose: it must not import the harness (or pytest) so that it
starts fast and cannot fail on the session's import state.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time


def _leader_matches(pgid: int, comm: str) -> bool:
    """False if the group's leader pid now belongs to an unrelated program."""
    try:
        with open(f"/proc/{pgid}/comm", encoding="utf-8") as status:
            return status.read().strip() == comm
    except FileNotFoundError:
        # Leader gone: the pgid cannot be reused while members remain, so any
        # process still in the group is one of ours.
        return True
    except OSError:
        return False


def _kill_groups(groups: dict[int, str]) -> None:
    for pgid, comm in groups.items():
        if not _leader_matches(pgid, comm):
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError as exc:
            print(f"reaper: cannot kill group {pgid}: {exc}", file=sys.stderr)


def _unmount(paths: list[str]) -> None:
    for path in paths:
        subprocess.run(["umount", "-l", path], check=False, timeout=30, capture_output=True)


def _apply(line: str, groups: dict[int, str], mounts: list[str], dirs: list[str]) -> None:
    verb, _, rest = line.rstrip("\n").partition(" ")
    if verb == "group":
        pgid, _, comm = rest.partition(" ")
        groups[int(pgid)] = comm
    elif verb == "ungroup":
        groups.pop(int(rest), None)
    elif verb == "mount":
        mounts.append(rest)
    elif verb == "unmount" and rest in mounts:
        mounts.remove(rest)
    elif verb == "dir":
        dirs.append(rest)
    elif verb == "undir" and rest in dirs:
        dirs.remove(rest)


def main() -> int:
    groups: dict[int, str] = {}
    mounts: list[str] = []
    dirs: list[str] = []
    for line in sys.stdin:
        _apply(line, groups, mounts, dirs)
    if not (groups or mounts or dirs):
        return 0
    print(
        f"reaper: test session ended without cleanup; removing {len(groups)} process "
        f"group(s), {len(mounts)} mount(s), {len(dirs)} dir(s)",
        file=sys.stderr,
    )
    _kill_groups(groups)
    if groups:
        # SIGKILLed processes release their files asynchronously.
        time.sleep(0.5)
    _unmount(mounts)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main())
