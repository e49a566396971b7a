"""One query through tunetrace, as a row the suite's figures are computed from."""

from __future__ import annotations

import time
from dataclasses import asdict

from tunetrace.fingerprint.decode import load_audio
from tunetrace.fingerprint.features import extract_features

from benchmarks.grid import SuiteQuery
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher


def match_row(matcher: Matcher, query: SuiteQuery) -> dict:
    """Stage times and every scored verification of ``query`` (or the error it raised).

    Parameters
    ----------
    matcher : Matcher
    query : SuiteQuery

    Returns
    -------
    row : dict
        ``query`` (its truth), ``elapsed_s``, ``duration_s``, ``stages`` (decode, features,
        search, verification seconds) and ``verifications`` (best first), or ``query`` and
        ``error`` for a file that cannot be fingerprinted.
    """
    params = matcher.catalogue.params
    row: dict = {"query": asdict(query)}
    started = time.perf_counter()
    try:
        audio = load_audio(query.path, sample_rate_hz=params.sample_rate_hz)
        decoded = time.perf_counter()
        features = extract_features(audio, params=params)
    except TunetraceError as exc:
        return {**row, "error": str(exc)}
    featured = time.perf_counter()
    timings: dict[str, float] = {}
    verifications = matcher.verify(features, timings=timings)
    row["elapsed_s"] = time.perf_counter() - started
    row["duration_s"] = features.duration_s
    row["stages"] = {"decode": decoded - started, "features": featured - decoded, **timings}
    row["verifications"] = [
        {
            "reference_id": matcher.catalogue.record_by_key(v.reference_key).reference_id,
            "score": v.score,
            "tempo_ratio": v.tempo_ratio,
            "pitch_shift_semitones": v.pitch_shift_semitones,
        }
        for v in verifications
    ]
    return row
