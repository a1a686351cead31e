"""Run the ``cordiale`` command as a user does: a real process, wide enough output for asserts."""

import os
import subprocess
import sys


def cordiale(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cordiale", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
