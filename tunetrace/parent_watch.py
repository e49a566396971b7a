"""Worker processes end with the process that started them.

A :class:`concurrent.futures.ProcessPoolExecutor` worker waits for work on a queue whose pipe
it holds both ends of, so a parent killed outright (``SIGKILL``, the out-of-memory killer)
leaves its workers waiting forever, each holding the catalogue open and its memory. Every
worker process tunetrace starts calls :func:`exit_with_parent` first.
"""

from __future__ import annotations

import os
import threading
import time

#: How often a worker looks whether its parent is still there (seconds).
PARENT_POLL_S = 1.0


def exit_with_parent(poll_s: float = PARENT_POLL_S) -> None:
    """End this process within ``poll_s`` of its parent's death.

    A daemon thread compares the parent process id with the one at the call: when the parent
    dies, the process is re-parented and the id changes. The process then exits at once
    (``os._exit``: there is no one left to report to, and its work is lost with the parent
    anyway).

    Parameters
    ----------
    poll_s : float
        Seconds between looks.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="tunetrace-parent-watch", daemon=True).start()
