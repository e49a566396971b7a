"""Other places in an upload where a section it copies is played again.

A looped section is the same altered material several times in one upload, so once one
repeat is verified against its reference, the others are where the upload resembles itself:
:func:`self_similar_places` slides the verified stretch's chroma along the whole upload and
returns the query offsets where it recurs. The matcher verifies each against the reference at
the same tempo ratio (a repeat is played at the same tempo), which is what decides; these are
only places to look at, found without the vector search (whose vote peaks of one query part
can hide a repeat behind a stronger one).
"""

from __future__ import annotations

import numpy as np

#: A place recurs when the mean frame correlation of its chroma with the verified stretch's
#: reaches this.
RECURRENCE_LEVEL = 0.8


def self_similar_places(
    chroma: np.ndarray, first: int, stop: int, *, min_shift: int, limit: int
) -> list[int]:
    """Starts (frames) of the other places where ``chroma[:, first:stop]`` recurs, best first.

    Parameters
    ----------
    chroma : np.ndarray [shape=(n_bins, n_frames)]
        Frame-normalised chroma of the whole query (unit norm per frame).
    first, stop : int
        The verified stretch (half-open frame range).
    min_shift : int
        Places start at least this many frames from ``first`` and from each other.
    limit : int
        At most this many places.

    Returns
    -------
    starts : list of int
        First frames of places of the same length, each at least :data:`RECURRENCE_LEVEL`.
    """
    n_frames = chroma.shape[1]
    length = stop - first
    if length <= 0 or length > n_frames or limit <= 0:
        return []
    stretch = chroma[:, first:stop]
    windows = np.lib.stride_tricks.sliding_window_view(chroma, length, axis=1)
    similarity = np.einsum("bl,bsl->s", stretch, windows) / length
    similarity[max(0, first - min_shift + 1) : first + min_shift] = -np.inf
    starts: list[int] = []
    for start in np.argsort(-similarity, kind="stable"):
        if similarity[start] < RECURRENCE_LEVEL or len(starts) == limit:
            break
        if all(abs(int(start) - kept) >= min_shift for kept in starts):
            starts.append(int(start))
    return starts
