"""Worker processes end with the process that started them.

A :class:`concurrent.futures.ProcessPoolExecutor` worker waits for work on a queue whose pipe
it holds both ends of, so a parent killed outright (``SIGKILL``, the out-of-memory killer)
leaves its workers waiting forever, each holding the catalogue open and its memory. Every
worker process tunetrace starts calls :func:`exit_with_parent` first.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

#: How often a worker looks whether its parent is still there (seconds).
PARENT_POLL_S = 1.0


def exit_with_parent(poll_s: float = PARENT_POLL_S) -> None:
    """End this process within ``poll_s`` of the death of the process that started it.

    The process that started this one is the one :func:`multiprocessing.parent_process`
    names (recorded when this process was made, so a parent that died while this one was
    still starting up is noticed too, whatever the start method). A daemon thread looks at
    once and then every ``poll_s``; when the parent is gone the process exits at once
    (``os._exit``: there is no one left to report to, and its work is lost with the parent
    anyway).

    Parameters
    ----------
    poll_s : float
        Seconds between looks.
    """
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()

    def watch() -> None:
        while process_runs(parent_pid):
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="tunetrace-parent-watch", daemon=True).start()


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie waiting to be reaped has).

    Parameters
    ----------
    pid : int

    Returns
    -------
    runs : bool
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: the signal check is all there is
    return state not in ("Z", "X")
