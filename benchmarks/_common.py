"""What the benchmarks share: which code a run measured.

Others edit the tree while benchmarks run, so the commit alone does not say: the record holds the
commit, the files of ``streamchat/`` that differ from it, and a digest of the files that matter.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def code_version(files: tuple[str, ...]) -> dict[str, Any]:
    """``{"commit", "streamchat_changed_files", "sha1": {file: digest}}`` for ``files`` (repo paths)."""
    info: dict[str, Any] = {}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "streamchat"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        info["streamchat_changed_files"] = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    digests = {}
    for rel in files:
        try:
            digests[rel] = hashlib.sha1((ROOT / rel).read_bytes()).hexdigest()[:12]
        except OSError:
            pass
    info["sha1"] = digests
    return info
