"""Key and tempo of a recording, to find musically close pairs for hard negatives.

The key is the Krumhansl-Kessler profile (24 major and minor keys) that correlates best with
the mean CQT chroma of a minute of the track; the tempo is librosa's beat-tracking estimate.
Two tracks are "twins" when they share the key and their tempi differ by at most 4%.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NOTES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
TEMPO_TOLERANCE = 0.04


def key_of_chroma(chroma_mean: np.ndarray) -> str:
    """Best-correlating key name (e.g. ``"A minor"``) for a 12-bin mean chroma."""
    best, name = -2.0, ""
    for mode, profile in (("major", MAJOR), ("minor", MINOR)):
        for tonic in range(12):
            score = float(np.corrcoef(chroma_mean, np.roll(profile, tonic))[0, 1])
            if score > best:
                best, name = score, f"{NOTES[tonic]} {mode}"
    return name


def _analyse(path: str) -> tuple[str, float]:
    import librosa

    samples, rate = librosa.load(path, sr=22050, mono=True, offset=15.0, duration=60.0)
    if len(samples) < rate * 10:
        samples, rate = librosa.load(path, sr=22050, mono=True, duration=60.0)
    chroma = librosa.feature.chroma_cqt(y=samples, sr=rate)
    tempo = librosa.feature.tempo(y=samples, sr=rate)
    return key_of_chroma(chroma.mean(axis=1)), float(np.atleast_1d(tempo)[0])


def key_and_tempo(paths: list[Path], cache: Path, *, workers: int = 2) -> dict[str, list]:
    """``{path: [key, bpm]}`` for every path, cached in ``cache`` (a JSON file)."""
    known: dict[str, list] = json.loads(cache.read_text()) if cache.exists() else {}
    missing = [str(p) for p in paths if str(p) not in known]
    if missing:
        with ProcessPoolExecutor(workers) as pool:
            for path, result in zip(missing, pool.map(_analyse, missing), strict=True):
                known[path] = list(result)
        cache.write_text(json.dumps(known, indent=0))
    return known


def twins(a: list, b: list) -> bool:
    """Whether two ``[key, bpm]`` pairs share the key and a tempo within 4%."""
    return a[0] == b[0] and abs(a[1] / b[1] - 1) <= TEMPO_TOLERANCE
