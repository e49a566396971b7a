"""Candidate search: multi-rate query patches, nearest neighbours, offset-consistent votes.

For every tempo ratio of the grid the query's chroma is resampled to reference tempo and cut
into patches; all patches of all rates are searched at once. A hit of query patch ``j``
(starting at frame ``s_j`` of the resampled query) on reference patch ``p`` (starting at frame
``t_p`` of the reference) votes for the triple (reference, rate, offset ``t_p - s_j``). A real
copy piles its votes on one triple; coincidental neighbours scatter theirs.

A long query's triples are ranked by their votes within two neighbouring 15-s stretches of
it, not over all of it: a copied section's votes lie in its own stretch, while the chance
votes of a coincidence keep growing with the query, and had outvoted short sections of long
uploads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tunetrace.fingerprint.embedding import embed_patches, patch_starts, resample_time
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import fold_chroma, smooth_chroma
from tunetrace.index.ids import split_vector_ids
from tunetrace.types import Candidate

logger = logging.getLogger(__name__)

#: Only the strongest vote triples are walked when picking candidates.
MAX_TRIPLES_CONSIDERED = 5000
#: Two triples of one reference this close (offset bins, rate steps) are the same place.
SAME_PLACE_BINS = 4
SAME_PLACE_RATES = 2
#: Voters of one place further apart than this (seconds of query) belong to different runs;
#: a place's query span is its run with the most votes.
VOTER_GAP_S = 8.0
#: A query longer than two of these is ranked by its places' votes within two neighbouring
#: stretches of this many seconds (see :func:`local_totals`).
VOTE_WINDOW_S = 15.0


class VectorSearcher(Protocol):
    """Anything that returns the ``k`` most similar indexed vectors (inner product)."""

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(similarities, ids)``, each of shape ``(n, k)``; missing hits have id -1."""
        ...


def query_patch_vectors(
    features: Features, *, params: FingerprintParams, hop: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed the query's patches at every tempo ratio of the grid.

    Parameters
    ----------
    features : Features
        The query.
    params : FingerprintParams
    hop : int, optional
        Frames between the starts of neighbouring patches, at least 1 (default:
        ``params.query_patch_hop``; the matcher chooses it by the query's length, see
        :meth:`tunetrace.matcher.Matcher.query_patches`).

    Returns
    -------
    vectors : np.ndarray [shape=(n, embedding_dim)]
    rate_index : np.ndarray [shape=(n,)]
        Index into ``params.rate_grid()`` of each vector.
    starts : np.ndarray [shape=(n,)]
        First frame of each patch in the resampled (reference-tempo) query.
    """
    hop = params.query_patch_hop if hop is None else hop
    if hop < 1:
        raise ValueError(f"patches must be at least 1 frame apart, not {hop}")
    # The query is brought to reference tempo before its chroma is smoothed, so that every
    # patch is smoothed over the same stretch of music as the reference's patches are (a
    # copy twice as fast, smoothed at its own tempo, would be smoothed over twice as much).
    folded = fold_chroma(features.spectrum, params=params)
    all_vectors, all_rates, all_starts = [], [], []
    for index, rate in enumerate(params.rate_grid()):
        chroma = smooth_chroma(
            resample_time(folded, rate, normalise=False), params.chroma_smooth_frames
        )
        starts = patch_starts(chroma.shape[1], patch_frames=params.patch_frames, hop=hop)
        all_vectors.append(embed_patches(chroma, starts, params=params))
        all_rates.append(np.full(len(starts), index))
        all_starts.append(starts)
    return np.concatenate(all_vectors), np.concatenate(all_rates), np.concatenate(all_starts)


def find_candidates(
    features: Features,
    searcher: VectorSearcher,
    *,
    params: FingerprintParams,
    n_neighbours: int = 20,
    max_candidates: int = 8,
    per_reference: int = 3,
    min_vote_ratio: float = 0.0,
    other_rates: int = 0,
    exclude_keys: frozenset[int] = frozenset(),
    patches: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[Candidate]:
    """Rank (reference, tempo ratio, offset) triples by offset-consistent patch votes.

    Parameters
    ----------
    features : Features
        The query.
    searcher : VectorSearcher
        The catalogue's vector index.
    params : FingerprintParams
    n_neighbours : int
        Nearest indexed patches retrieved per query patch.
    max_candidates : int
        Number of distinct references returned.
    per_reference : int
        Distinct offsets returned per reference: the best, the next best, and, when more
        than two, the best other offset at the first place's tempo ratio (a copy with a
        section cut out or moved holds two far-apart parts of its reference).
    min_vote_ratio : float
        Places with fewer votes than this fraction of the best place's are not returned
        (votes within the best two neighbouring windows of a query longer than two; see
        :func:`local_totals`).
    other_rates : int
        Other tempo ratios kept per place (see :attr:`Candidate.other_alignments`): vote
        peaks at the same offset with a tempo ratio more than ``SAME_PLACE_RATES`` grid steps
        from the place's known ones.
    exclude_keys : frozenset of int
        References whose hits are dropped before voting (a reference scanned against its own
        catalogue must not find itself).
    patches : tuple of np.ndarray, optional
        The query's :func:`query_patch_vectors`, when already computed (a query searched in
        several indexes is embedded once); without them the query is embedded at the
        catalogue's ``query_patch_hop`` whatever its length (the matcher passes its own,
        :meth:`tunetrace.matcher.Matcher.query_patches`).

    Returns
    -------
    candidates : list of Candidate
        Best first: by votes over the whole query, or for a query longer than two
        :data:`VOTE_WINDOW_S` windows, by votes within the place's best two neighbouring
        windows.
    """
    vectors, rate_index, starts = patches or query_patch_vectors(features, params=params)
    similarities, ids = searcher.search(vectors, n_neighbours)
    rates = params.rate_grid()
    n_patches_per_rate = np.bincount(rate_index, minlength=len(rates)).astype(np.float64)

    valid = ids >= 0
    if exclude_keys:
        valid &= ~np.isin(split_vector_ids(ids)[0], np.fromiter(exclude_keys, dtype=np.int64))
    patch_of_hit = np.broadcast_to(np.arange(len(vectors))[:, None], ids.shape)[valid]
    sims = np.clip(similarities[valid], 0.0, None)
    ref_keys, patch_numbers = split_vector_ids(ids[valid])
    hit_rate = rate_index[patch_of_hit]
    ref_start = patch_numbers * params.reference_patch_hop
    offsets = ref_start - starts[patch_of_hit]
    offset_bin = np.round(offsets / params.reference_patch_hop).astype(np.int64)
    if sims.size == 0:
        return []

    # One vote per query patch per (reference, rate, offset bin): its best similarity.
    keys, sims = strongest_per_row(
        np.stack([ref_keys, hit_rate, offset_bin, patch_of_hit], axis=1), sims
    )

    # The rows stay sorted, so each distinct place begins a run.
    place_starts = run_starts(keys[:, :3])
    triples = keys[place_starts, :3]
    run_begin = np.flatnonzero(place_starts)
    run_end = np.append(run_begin[1:], len(keys))
    inverse = np.cumsum(place_starts) - 1
    totals = np.bincount(inverse, weights=sims, minlength=len(triples))
    window_frames = VOTE_WINDOW_S * params.frame_rate_hz
    # In a query of two windows or less, two neighbouring windows hold all of a place's
    # votes: the local totals would equal these.
    if features.n_frames > 2 * window_frames:
        # A short copied section's votes compete only with what its part of the query
        # offers, not with every coincidence of a long upload. Within a place (one
        # reference, rate and offset bin) the rows are sorted by patch, and one rate's
        # patches start in query order, so its windows never decrease, as local_totals needs.
        query_frames = starts[keys[:, 3]] / rates[keys[:, 1]]
        totals = local_totals(
            place_starts, np.floor(query_frames / window_frames).astype(np.int64), sims
        )
    totals = totals / np.maximum(n_patches_per_rate[triples[:, 1]], 1.0)
    own_votes = totals
    totals = add_best_neighbour_bin(triples, totals)

    places: list[_Place] = []
    places_by_reference: dict[int, list[_Place]] = {}
    min_votes = min_vote_ratio * float(totals.max())
    walked = strongest_first(totals, own_votes, MAX_TRIPLES_CONSIDERED)
    walked = walked[totals[walked] >= min_votes]  # the walk stops at the first weaker triple
    walked = walked[_among_first_references(triples[walked, 0], max_candidates)]
    # plain Python integers: the walk visits thousands of triples of a long query
    for position, (ref_key, rate_i, off_bin) in zip(
        walked.tolist(), triples[walked].tolist(), strict=True
    ):
        chosen = places_by_reference.setdefault(ref_key, [])
        here = next(
            (place for place in chosen if abs(off_bin - place.offset_bins[0]) <= SAME_PLACE_BINS),
            None,
        )
        if here is not None:
            # The same place: a new tempo ratio there becomes one more ratio to align with.
            if len(here.rate_indices) > other_rates:
                continue
            if not any(abs(rate_i - r) <= SAME_PLACE_RATES for r in here.rate_indices):
                here.rate_indices.append(rate_i)
                here.offset_bins.append(off_bin)
            continue
        if len(chosen) >= per_reference:
            continue
        # Keep the last place for the other piece of a cut or rearranged copy: another
        # offset at the tempo ratio of the reference's best place.
        last_place = len(chosen) == per_reference - 1 and per_reference > 2
        if last_place and abs(rate_i - chosen[0].rate_indices[0]) > SAME_PLACE_RATES:
            continue
        place = _Place(ref_key, [off_bin], [rate_i], float(totals[position]), int(position))
        chosen.append(place)
        places.append(place)

    def span(place: _Place) -> tuple[float, float]:
        """Query frames covered by the place's voters (its triple and the offset bins
        either side, at its first tempo ratio)."""
        rate_i, here = place.rate_indices[0], place.triple
        # triples are sorted and distinct: the bins either side, if voted, are the next rows
        rows = [
            np.arange(run_begin[row], run_end[row])
            for row in (here - 1, here, here + 1)
            if 0 <= row < len(triples)
            and triples[row, 0] == place.reference_key
            and triples[row, 1] == rate_i
            and abs(triples[row, 2] - triples[here, 2]) <= 1
        ]
        voters = starts[keys[np.concatenate(rows), 3]]
        rate = float(rates[rate_i])
        return densest_run(
            voters / rate,
            gap=VOTER_GAP_S * params.frame_rate_hz,
            length=params.patch_frames / rate,
        )

    return [
        Candidate(
            reference_key=place.reference_key,
            tempo_ratio=float(rates[place.rate_indices[0]]),
            offset_frames=float(place.offset_bins[0] * params.reference_patch_hop),
            votes=place.votes,
            other_alignments=tuple(
                (float(rates[i]), float(b * params.reference_patch_hop))
                for i, b in zip(place.rate_indices[1:], place.offset_bins[1:], strict=True)
            ),
            query_span_frames=span(place),
        )
        for place in places
    ]


def local_totals(place_starts: np.ndarray, windows: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Each place's best votes within two neighbouring query windows.

    Parameters
    ----------
    place_starts : np.ndarray [shape=(n,), dtype=bool]
        Marks the first vote of each place (votes grouped by place).
    windows : np.ndarray [shape=(n,), dtype=int64]
        Query window of every vote, non-decreasing within a place.
    votes : np.ndarray [shape=(n,)]
        Each vote's weight (its hit's similarity).

    Returns
    -------
    totals : np.ndarray [shape=(place_starts.sum(),)]
        For every place, the largest sum of its votes in windows ``w`` and ``w + 1``.
    """
    group_starts = place_starts.copy()
    group_starts[1:] |= windows[1:] != windows[:-1]
    first = np.flatnonzero(group_starts)
    sums = np.add.reduceat(votes, first) if len(first) else np.zeros(0)
    place_of_group = np.cumsum(place_starts)[first] - 1
    window_of_group = windows[first]
    paired = sums.copy()
    follows = (place_of_group[1:] == place_of_group[:-1]) & (
        window_of_group[1:] == window_of_group[:-1] + 1
    )
    paired[:-1] += np.where(follows, sums[1:], 0.0)
    # every place has at least one group, and its groups follow each other
    first_group_of_place = np.flatnonzero(place_starts[first])
    return np.maximum.reduceat(paired, first_group_of_place)


def densest_run(positions: np.ndarray, *, gap: float, length: float) -> tuple[float, float]:
    """Start of the first and end of the last patch of the run of ``positions`` with the
    most members, runs being split where consecutive positions are more than ``gap`` apart.

    Parameters
    ----------
    positions : np.ndarray [shape=(n,)]
        Patch starts, query frames (any order, n >= 1).
    gap : float
        Frames.
    length : float
        Frames one patch covers.

    Returns
    -------
    start, end : float
        Query frames.
    """
    ordered = np.sort(np.asarray(positions, dtype=np.float64))
    breaks = np.flatnonzero(np.diff(ordered) > gap) + 1
    runs = np.split(ordered, breaks)
    best = max(runs, key=len)  # the earliest of equally long runs
    return float(best[0]), float(best[-1] + length)


@dataclass
class _Place:
    """A reference offset that won votes, with the tempo ratios (grid indices, best first)
    that won them there and the offset bin each of them chose; ``triple`` is the row of its
    first (reference, rate, offset bin) among the vote triples."""

    reference_key: int
    offset_bins: list[int]
    rate_indices: list[int]
    votes: float
    triple: int


def strongest_first(totals: np.ndarray, own_votes: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` places with the most votes, best first.

    Neighbouring offset bins of one place often tie exactly (each holds both bins' votes):
    the bin with more votes of its own goes first, then the earlier row. The order is the
    same whatever keys the references have (a shard's differ from the whole catalogue's,
    and an unstable sort would break such ties by where the rows happen to lie).

    Parameters
    ----------
    totals : np.ndarray [shape=(n,)]
        Votes of each place, with its better neighbour bin's added.
    own_votes : np.ndarray [shape=(n,)]
        Its votes alone.
    count : int

    Returns
    -------
    positions : np.ndarray [shape=(min(count, n),), dtype=int64]
        Equal to ``np.lexsort((-own_votes, -totals))[:count]``, without sorting every place.
    """
    if len(totals) > count > 0:
        # every place at least as strong as the count-th strongest, in row order
        kth = np.partition(totals, len(totals) - count)[len(totals) - count]
        chosen = np.flatnonzero(totals >= kth)
    else:
        chosen = np.arange(len(totals))
    order = np.lexsort((-own_votes[chosen], -totals[chosen]))
    return chosen[order][:count]


def _among_first_references(reference_keys: np.ndarray, count: int) -> np.ndarray:
    """Mask of the entries whose reference is one of the first ``count`` distinct references
    to appear in ``reference_keys`` (the only ones the candidate walk takes places from)."""
    distinct, first_seen = np.unique(reference_keys, return_index=True)
    admitted = distinct[np.argsort(first_seen)[:count]]
    return np.isin(reference_keys, admitted)


def add_best_neighbour_bin(triples: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Add to each triple's votes the larger of its two offset neighbours' (bin edges).

    ``triples`` must be sorted lexicographically and distinct, so a triple's neighbour one
    offset bin away, if it exists, is the row just before or after it.

    Parameters
    ----------
    triples : np.ndarray [shape=(n, 3), dtype=int64]
        (reference key, tempo-ratio index, offset bin) of every voted place, sorted and
        distinct.
    totals : np.ndarray [shape=(n,)]
        Their votes.

    Returns
    -------
    totals : np.ndarray [shape=(n,)]
        The votes with the better neighbour's added (a new array; ``totals`` itself when
        there are fewer than two triples).
    """
    best = np.zeros_like(totals)
    if len(triples) < 2:
        return totals
    same_place = np.all(triples[1:, :2] == triples[:-1, :2], axis=1)
    adjacent = same_place & (triples[1:, 2] == triples[:-1, 2] + 1)
    # row i gains from row i + 1 and row i + 1 from row i where they are adjacent bins
    best[:-1] = np.where(adjacent, totals[1:], 0.0)
    best[1:] = np.maximum(best[1:], np.where(adjacent, totals[:-1], 0.0))
    return totals + best


def strongest_per_row(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct integer ``rows``, sorted lexicographically, each with its largest value.

    When the columns' ranges fit in 63 bits together, each row is packed into one integer
    (first column most significant) and one sort of those integers orders them; otherwise
    the rows are sorted column by column.

    Parameters
    ----------
    rows : np.ndarray [shape=(n, m), dtype=int64]
    values : np.ndarray [shape=(n,)]

    Returns
    -------
    distinct : np.ndarray [shape=(d, m), dtype=int64]
    largest : np.ndarray [shape=(d,)]
        The largest value of each distinct row.
    """
    if len(rows) == 0:
        return rows, values
    low = rows.min(axis=0)
    spans = [int(v) + 1 for v in rows.max(axis=0) - low]
    if sum(int(span - 1).bit_length() for span in spans) > 62:
        order = np.lexsort((-values, *rows.T[::-1]))
        rows, values = np.take(rows, order, axis=0), values[order]
        first = run_starts(rows)
        return rows[first], values[first]
    packed = np.zeros(len(rows), dtype=np.int64)
    for column, span in enumerate(spans):
        packed = packed * span + (rows[:, column] - low[column])
    order = np.argsort(packed)
    packed = packed[order]
    first = np.ones(len(packed), dtype=bool)
    first[1:] = packed[1:] != packed[:-1]
    starts = np.flatnonzero(first)
    return np.take(rows, order[starts], axis=0), np.maximum.reduceat(values[order], starts)


def run_starts(rows: np.ndarray) -> np.ndarray:
    """Mask of the rows of a sorted array that differ from the row before (the first row of
    each run of equal rows).

    Parameters
    ----------
    rows : np.ndarray [shape=(n, m)]
        Sorted so that equal rows are adjacent.

    Returns
    -------
    starts : np.ndarray [shape=(n,), dtype=bool]
    """
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    return starts
