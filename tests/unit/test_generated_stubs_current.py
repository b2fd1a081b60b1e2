"""The committed stubs in gateway/wire match what protos/generate.py produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"stubs are stale; run python protos/generate.py\n{proc.stdout}{proc.stderr}"
