"""Which vectors an inverted-list index is trained on, chosen by what they hold.

A catalogue hands its vectors to the index in key order, and keys follow the order works were
added: two catalogues of the same works added in another order (several ingest workers, a
rebuilt catalogue, shards merged) hold the same vectors in a different order. A sample drawn
by position would train different lists from the same works, and the two catalogues would
answer some queries differently. Here each vector gets a 64-bit key hashed from its bytes
(and a seed), and copies of one vector get keys of their own from their copy number; the
sample is the vectors with the lowest keys, in key order, so the same set of vectors always
trains the same index. The keys are uniform whatever the vectors hold, so the sample is as
good as a random one.
"""

from __future__ import annotations

import numpy as np

#: Rows hashed at a time (bounds the temporary array to about 50 MB at 190 dimensions).
HASH_BLOCK_ROWS = 1 << 15

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def content_keys(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of each row's bytes, mixed with ``seed``.

    Each 4-byte word is multiplied by an odd 64-bit constant of its column (drawn from
    ``seed``), the products of a row are XORed together and SplitMix64's finaliser spreads the
    result: rows that differ in one word always get different keys, rows that differ in more
    collide about once in 2**64 pairs.

    Parameters
    ----------
    vectors : numpy.ndarray
        Two-dimensional array of 4-byte values (float32 vectors).
    seed : int
        Another seed gives an unrelated set of keys.

    Returns
    -------
    numpy.ndarray
        ``uint64`` key per row; equal rows get equal keys.
    """
    if vectors.ndim != 2 or vectors.dtype.itemsize != 4:
        raise ValueError(f"expected rows of 4-byte values, got {vectors.dtype} {vectors.shape}")
    seed_key = _splitmix(np.asarray([seed], dtype=np.uint64))
    columns = np.arange(vectors.shape[1], dtype=np.uint64)
    multipliers = _splitmix(columns + seed_key) | np.uint64(1)
    keys = np.empty(len(vectors), dtype=np.uint64)
    for start in range(0, len(vectors), HASH_BLOCK_ROWS):
        words = np.ascontiguousarray(vectors[start : start + HASH_BLOCK_ROWS]).view(np.uint32)
        products = words.astype(np.uint64)
        products *= multipliers
        keys[start : start + len(words)] = _splitmix(
            np.bitwise_xor.reduce(products, axis=1) ^ seed_key
        )
    return keys


def training_rows(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Positions of the ``count`` rows of ``vectors`` to train on, in training order.

    The rows chosen and their order depend on the rows' contents alone, not on where they
    sit in ``vectors``.

    Parameters
    ----------
    vectors : numpy.ndarray
        The candidates (rows of 4-byte values).
    count : int >= 0
        Rows wanted (all of them when ``count >= len(vectors)``).
    seed : int
        Picks another sample of the same vectors.

    Returns
    -------
    numpy.ndarray
        ``int64`` positions into ``vectors``.

    Raises
    ------
    ValueError
        If ``count`` is negative.
    """
    return sample_positions(content_keys(vectors, seed), count)


def sample_positions(keys: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` rows to train on, in training order, from every candidate
    row's :func:`content_keys` (:func:`training_rows` for vectors whose keys were found
    apart: the keys of several catalogues' vectors, joined in any order, choose the rows
    one catalogue holding all of them would choose).

    Parameters
    ----------
    keys : numpy.ndarray
        ``uint64`` content key of each candidate row.
    count : int >= 0
        Rows wanted (all of them when ``count >= len(keys)``).

    Returns
    -------
    numpy.ndarray
        ``int64`` positions into ``keys``.

    Raises
    ------
    ValueError
        If ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"cannot train on {count} rows")
    keys = np.asarray(keys, dtype=np.uint64)
    if count < len(keys):
        keys = _copies_keyed_apart(keys)
        chosen = np.argpartition(keys, count - 1)[:count]
    else:
        chosen = np.arange(len(keys))
    # rows with equal keys hold equal bytes, so their order among themselves does not matter
    return chosen[np.argsort(keys[chosen], kind="stable")].astype(np.int64)


def _copies_keyed_apart(keys: np.ndarray) -> np.ndarray:
    """``keys`` with the second and later copies of each key mixed with their copy number.

    Identical rows (silence gives many all-zero patch vectors) would otherwise share a key and
    enter the sample all together or not at all. Numbering copies keeps the keys independent
    of the rows' order: which of two identical rows gets which number does not matter.
    """
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    run_starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    copy = np.arange(len(keys)) - np.repeat(run_starts, np.diff(np.r_[run_starts, len(keys)]))
    later = copy > 0
    spread = keys.copy()
    spread[order[later]] = _splitmix(ordered[later] ^ _splitmix(copy[later].astype(np.uint64)))
    return spread


def _splitmix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: spreads every input bit over the whole key."""
    mixed = values.astype(np.uint64) + _GOLDEN
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))
