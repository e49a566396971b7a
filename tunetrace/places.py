"""Aligned places of a query, and the choices made among them before full verification.

Every candidate place the vote offers is aligned on chroma (:mod:`tunetrace.alignment`) and
screened on spectra (:mod:`tunetrace.screening`); the best screened places are then verified
in full. The choices between those stages compare places of every reference a query
reached, so they are made here, on small self-contained :class:`Place` records: a sharded
catalogue's gather (:mod:`tunetrace.sharded_matcher`) ranks the places all its shards
aligned exactly as one catalogue ranks its own, ties included (by :attr:`Place.rank`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunetrace.alignment import ChromaAlignment
from tunetrace.screening import Screening

#: Query frames ``(first, stop)`` a place is judged on; ``None``: the whole query.
Window = tuple[int, int] | None


@dataclass(frozen=True)
class Place:
    """A candidate place aligned on chroma, and screened once :attr:`screening` is set.

    Attributes
    ----------
    rank : int
        Position of its candidate among the query's candidates, best voted first (one
        candidate per tempo ratio tried): ties between places resolve by it.
    window : tuple of (int, int) or None
        Query frames ``(first, stop)`` the place is judged on, ``None`` for all of them;
        the alignment's offsets are seen from the window's first frame.
    alignment : ChromaAlignment
    screening : Screening or None
        The spectral screening, ``None`` until screened (or if screened out).
    """

    rank: int
    window: Window
    alignment: ChromaAlignment
    screening: Screening | None = None

    @property
    def reference_key(self) -> int:
        """Key of the reference the place is in."""
        return self.alignment.candidate.reference_key

    @property
    def value(self) -> float:
        """The screening's value (``-inf`` before screening)."""
        return float("-inf") if self.screening is None else self.screening.value

    def with_key(self, key: int) -> Place:
        """The same place with another key for its reference (a shard's own key, or a
        sharded catalogue's global one).

        Parameters
        ----------
        key : int

        Returns
        -------
        place : Place
        """
        candidate = replace(self.alignment.candidate, reference_key=key)
        return replace(self, alignment=replace(self.alignment, candidate=candidate))


def places_to_screen(aligned: list[Place], screen_top: int | None) -> list[Place]:
    """The aligned places that go on to spectral screening, in the order screening sees them:
    all of them by rank, or the best ``screen_top`` by chroma fit (ties by rank).

    Parameters
    ----------
    aligned : list of Place
        In any order; ranks distinct.
    screen_top : int or None

    Returns
    -------
    places : list of Place
    """
    ordered = sorted(aligned, key=lambda place: place.rank)
    if screen_top is None:
        return ordered
    ordered.sort(key=lambda place: -place.alignment.chroma_similarity)  # stable: rank breaks ties
    return ordered[:screen_top]


def verification_order(screened: list[Place]) -> list[Place]:
    """Screened places best first by screening value, ties kept in screening order.

    Parameters
    ----------
    screened : list of Place
        As :func:`places_to_screen` ordered them, screened out ones left out.

    Returns
    -------
    places : list of Place
    """
    return sorted(screened, key=lambda place: -place.value)
