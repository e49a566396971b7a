"""One query's state through the verification stages of one catalogue (or shard)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from tunetrace.fingerprint.features import Features
from tunetrace.places import Window
from tunetrace.query import PreparedQuery


class QueryWork:
    """A query prepared for verification, its windows prepared as they are needed, and the
    references read for it (by key; removed or damaged ones are never added).

    Parameters
    ----------
    features : Features
        The query.
    query : PreparedQuery
        ``features`` prepared (:func:`~tunetrace.query.prepare_query`).
    """

    def __init__(self, features: Features, query: PreparedQuery) -> None:
        self.features = features
        self.query = query
        self.references: dict[int, Features] = {}
        self._parts: dict[Window, PreparedQuery] = {None: query}
        self._lock = threading.Lock()

    def prepare(self, windows: Iterable[Window]) -> None:
        """Prepare these windows of the query now (before threads read them with
        :meth:`part`).

        Parameters
        ----------
        windows : iterable of tuple of (int, int) or None
        """
        for window in windows:
            self.part(window)

    def part(self, window: Window) -> PreparedQuery:
        """The query's frames ``window`` prepared (the whole query for ``None``).

        Parameters
        ----------
        window : tuple of (int, int) or None

        Returns
        -------
        part : PreparedQuery
        """
        with self._lock:
            part = self._parts.get(window)
            if part is None:
                assert window is not None
                part = self._parts[window] = self.query.frames(*window)
            return part
