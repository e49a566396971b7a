"""One query through tunetrace, as a row the suite's figures are computed from."""

from __future__ import annotations

import time
from dataclasses import asdict

from tunetrace.fingerprint.decode import load_audio
from tunetrace.fingerprint.features import Features, extract_features

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
    row: dict = {"query": asdict(query)}
    started = time.perf_counter()
    try:
        features, stages = timed_features(matcher, query.path)
    except TunetraceError as exc:
        return {**row, "error": str(exc)}
    verifications = matcher.verify(features, timings=stages)
    row["elapsed_s"] = time.perf_counter() - started
    row["duration_s"] = features.duration_s
    row["stages"] = stages
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


def timed_features(matcher: Matcher, path: str) -> tuple[Features, dict[str, float]]:
    """Decode and fingerprint one file as the matcher's catalogue asks.

    Returns
    -------
    features : Features
    stages : dict
        Seconds spent decoding (``"decode"``) and computing features (``"features"``).

    Raises
    ------
    TunetraceError
        For a file that cannot be decoded or holds too little sound.
    """
    params = matcher.catalogue.params
    started = time.perf_counter()
    audio = load_audio(path, sample_rate_hz=params.sample_rate_hz)
    decoded = time.perf_counter()
    features = extract_features(audio, params=params)
    return features, {"decode": decoded - started, "features": time.perf_counter() - decoded}
