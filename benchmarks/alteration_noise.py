"""Measure the alteration-noise model that compressed indexes project with.

For every altered query of the calibration split (full size: 270 copies made by sox, Rubber
Band, FFmpeg and librosa, time-stretched, sped up, pitch-shifted, re-encoded and noisy; no
evaluation track), the query is located in its own reference by an exact search of that
reference alone. The located place fixes which reference patch each query patch covers, at
the tempo ratio found: those (query patch, reference patch) vectors are the pairs, taken
whether or not a catalogue-wide search would have found them, so hard pairs count as much as
easy ones. A query whose located place is more than ``MAX_PLACE_ERROR_S`` from where it was
cut is left out (its pairs would be wrong). The covariance of the pair differences is written
to ``index/alteration_noise.npz``.

Run: ``python -m benchmarks.alteration_noise`` (about a minute with the queries cached; the
calibration queries are the core benchmark's, generated if missing).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from tunetrace.fingerprint.features import reference_vectors
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.ids import vector_ids
from tunetrace.index.projection import NOISE_FILE, AlterationNoise
from tunetrace.index.vector_index import IndexSpec, VectorIndex

from benchmarks import corpus
from benchmarks.queries import Query, make_queries
from benchmarks.run_benchmark import CACHE, SIZES, build_catalogue
from tunetrace.candidates import find_candidates, query_patch_vectors
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher

logger = logging.getLogger(__name__)

#: A located place this far (seconds of reference) from the truth is a failed location.
MAX_PLACE_ERROR_S = 2.0


def located_pairs(
    matcher: Matcher, query: Query, reference_key: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(query patch vectors, reference patch vectors) of one altered query, or ``None``.

    Parameters
    ----------
    matcher : Matcher
        Over the catalogue that holds the query's reference.
    query : Query
        A positive query with its truth.
    reference_key : int
        Catalogue key of the query's reference.
    """
    catalogue, params = matcher.catalogue, matcher.catalogue.params
    try:
        features = matcher.load_query(query.path)
    except TunetraceError:
        return None
    _, reference_patches = reference_vectors(catalogue.features(reference_key), params=params)
    own = VectorIndex(params.embedding_dim, IndexSpec(kind="flat"))
    own.add(reference_patches, vector_ids(reference_key, len(reference_patches)))
    places = find_candidates(features, own, params=params, max_candidates=1, per_reference=1)
    if not places:
        return None
    place = places[0]
    if abs(place.offset_frames / params.frame_rate_hz - query.reference_start_s) > (
        MAX_PLACE_ERROR_S
    ):
        return None
    vectors, rate_index, starts = query_patch_vectors(features, params=params)
    at_rate = rate_index == int(np.argmin(np.abs(params.rate_grid() - place.tempo_ratio)))
    covered = np.round((starts[at_rate] + place.offset_frames) / params.reference_patch_hop)
    covered = covered.astype(np.int64)
    inside = (covered >= 0) & (covered < len(reference_patches))
    return vectors[at_rate][inside], reference_patches[covered[inside]]


def main() -> None:
    """Measure and write the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--seed", type=int, default=2026, help="the core benchmark's seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tracks = corpus.installed_or_exit(corpus.tracks())
    directory, _ = build_catalogue(tracks)
    catalogue = Catalogue(directory, read_only=True)
    matcher = Matcher(catalogue)
    key_of = {r.reference_id: r.key for r in catalogue.list(limit=100_000)}
    queries = make_queries(
        tracks,
        split="calibration",
        per_family=SIZES[args.size]["cal_per_family"],
        negatives=SIZES[args.size]["cal_negatives"],
        cache=CACHE / "queries",
        seed=args.seed,
    )
    altered, originals, located, missed = [], [], 0, 0
    for query in queries:
        if not query.positive or query.source_id not in key_of:
            continue
        pairs = located_pairs(matcher, query, key_of[query.source_id])
        if pairs is None:
            missed += 1
            continue
        located += 1
        altered.append(pairs[0])
        originals.append(pairs[1])
    noise = AlterationNoise.from_pairs(
        np.concatenate(altered),
        np.concatenate(originals),
        params_digest=catalogue.params.digest(),
        n_recordings=located,
    )
    noise.save(NOISE_FILE)
    logger.info(
        "%d pairs from %d altered queries (%d not located): %s",
        noise.n_pairs, located, missed, NOISE_FILE,
    )  # fmt: skip


if __name__ == "__main__":
    main()
