"""Where and when a benchmark ran: date, machine and commit, recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path


def run_info() -> dict[str, str]:
    """``{"date", "machine", "commit"}`` for a results file (commit: short hash, with
    ``+changes`` when the code or the score model run differ from it; "" outside a git
    checkout)."""
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    ).stdout.strip()
    # the code and the shipped score model, tracked or new
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", ":/*.py", ":/tunetrace/calibration.json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    ).stdout.strip()
    if commit and changed:
        commit += "+changes"
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "commit": commit,
    }


def index_file_bytes(directory: Path) -> int:
    """Size of a catalogue's published vector index file (0 if none is published yet)."""
    from tunetrace.index.catalogue import Catalogue

    with Catalogue(directory, read_only=True) as catalogue:
        path = catalogue.index_path
    return path.stat().st_size if path is not None and path.exists() else 0


def disk_use(info: dict) -> dict[str, object]:
    """A catalogue's bytes on disk per hour of audio, in all and by part, from its
    :meth:`~tunetrace.index.catalogue.Catalogue.info`.

    Returns
    -------
    use : dict
        ``{"mb_per_audio_hour_by_part": {part: MB}, "mb_per_audio_hour": MB}``.
    """
    return {
        "mb_per_audio_hour_by_part": info["mb_per_audio_hour_by_part"],
        "mb_per_audio_hour": round(info["size_on_disk_bytes"] / 1e6 / info["audio_hours"], 3),
    }
