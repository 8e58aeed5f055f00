"""What "private" means for the files dbbackup leaves behind, checked on a real tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_tree_problems(tree: Path) -> list[str]:
    """Everything below ``tree`` that is not a 0600 file or 0700 directory of ours,
    and every temporary file a run left behind."""
    euid = os.geteuid()
    found = []
    for root, dirs, files in os.walk(tree, followlinks=False):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if name.startswith(".tmp-"):
                found.append(f"{path}: temporary file left behind")
            if st.st_uid != euid:
                found.append(f"{path}: owned by uid {st.st_uid}")
            if stat.S_ISDIR(st.st_mode):
                if mode != 0o700:
                    found.append(f"{path}: directory mode {mode:04o}")
            elif stat.S_ISREG(st.st_mode):
                if mode != 0o600:
                    found.append(f"{path}: file mode {mode:04o}")
            else:
                found.append(f"{path}: neither a file nor a directory")
    return found
