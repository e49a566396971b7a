"""Chromaprint, the classic fingerprint behind AcoustID, as a peer on the same queries.

Fingerprints come from Debian's ``fpcalc`` (libchromaprint-tools) as raw 32-bit sub-fingerprints
(about 8 per second). Matching is the most generous form of Chromaprint matching: each query's
window of up to ``WINDOW_ITEMS`` sub-fingerprints (15 s) is slid over every reference at every
offset and scored by its bit agreement, ``1 - bit error rate``, at the best offset. AcoustID's
own server looks up hashed items first, which can only find less than this exhaustive search.
A window with fewer than half of its sub-fingerprints distinct (silence, a drone) carries too
little to decide on and gets no answer, as AcoustID ignores such fingerprints; this only helps
the peer. The decision threshold is fitted on the calibration split like tunetrace's.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

WINDOW_ITEMS = 120
MIN_ITEMS = 16
MIN_DISTINCT_SHARE = 0.5


def available() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if shutil.which("fpcalc") is None:
        return "fpcalc is not installed (Debian package libchromaprint-tools)"
    return None


def fingerprint(path: Path) -> np.ndarray:
    """Raw Chromaprint sub-fingerprints of a whole file (uint32; empty when fpcalc fails)."""
    done = subprocess.run(
        ["fpcalc", "-raw", "-json", "-length", "0", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        items = json.loads(done.stdout)["fingerprint"]
    except (json.JSONDecodeError, KeyError):
        logger.warning("fpcalc gave no fingerprint for %s: %s", path, done.stderr.strip())
        return np.zeros(0, dtype=np.uint32)
    return np.asarray(items, dtype=np.int64).astype(np.uint32)


def fingerprints(paths: list[Path], *, workers: int = 2) -> list[np.ndarray]:
    """Fingerprints of many files (fpcalc processes run ``workers`` at a time)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fingerprint, paths))


def _agreement(query: np.ndarray, reference: np.ndarray) -> float:
    """Best bit agreement of the shorter sequence slid along the longer one."""
    short, long = (query, reference) if len(query) <= len(reference) else (reference, query)
    if len(short) < MIN_ITEMS:
        return 0.0
    windows = np.lib.stride_tricks.sliding_window_view(long, len(short))
    errors = np.bitwise_count(windows ^ short[None, :]).sum(axis=1, dtype=np.int64)
    return float(1 - errors.min() / (32 * len(short)))


@dataclass
class ChromaprintMatcher:
    """Exhaustive Chromaprint search over a set of references."""

    reference_ids: list[str]
    reference_prints: list[np.ndarray]

    def best(self, query: np.ndarray) -> tuple[str | None, float]:
        """The reference with the highest bit agreement and that agreement (0 when too short)."""
        if len(query) < MIN_ITEMS:
            return None, 0.0
        start = max(0, (len(query) - WINDOW_ITEMS) // 2)
        window = query[start : start + WINDOW_ITEMS]
        if len(np.unique(window)) < MIN_DISTINCT_SHARE * len(window):
            return None, 0.0
        scores = [_agreement(window, ref) for ref in self.reference_prints]
        best = int(np.argmax(scores))
        return self.reference_ids[best], float(scores[best])


def fit_threshold(negative_scores: list[float]) -> float:
    """Just above the highest calibration negative (bit agreement of unrelated audio)."""
    return float(max(negative_scores, default=0.6) + 0.01)
