"""The ids of patch vectors in a catalogue's index: a reference key and a patch number.

A vector's 64-bit FAISS id is ``reference_key << PATCH_BITS | patch_number``: a search hit
names the reference and the place in it without a lookup. Keys come from SQLite and are
never reused, so an id never changes meaning.
"""

from __future__ import annotations

import numpy as np

#: Bits of a vector id that hold the patch number; the rest hold the reference key.
PATCH_BITS = 24


def vector_ids(reference_key: int, n_patches: int) -> np.ndarray:
    """FAISS ids of a reference's patches: ``reference_key << PATCH_BITS | patch_number``.

    Parameters
    ----------
    reference_key : int
        The reference's key in the catalogue.
    n_patches : int
        Its number of patch vectors.

    Returns
    -------
    ids : np.ndarray [shape=(n_patches,), dtype=int64]
    """
    return (np.int64(reference_key) << PATCH_BITS) | np.arange(n_patches, dtype=np.int64)


def split_vector_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`vector_ids`: ``(reference_keys, patch_numbers)``."""
    return ids >> PATCH_BITS, ids & ((1 << PATCH_BITS) - 1)
