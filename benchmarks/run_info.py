"""Where and when a benchmark ran: date, machine and commit, recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime


def run_info() -> dict[str, str]:
    """``{"date", "machine", "commit"}`` for a results file (commit: short hash or "")."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "commit": commit,
    }
