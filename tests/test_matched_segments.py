"""Matched segments: the frames whose aligned fit clearly beats the coincidence level."""

from __future__ import annotations

import numpy as np
import pytest
from tunetrace.fingerprint.params import FingerprintParams

from tunetrace.query import VerifySettings
from tunetrace.segments import matched_segments

PARAMS = FingerprintParams()
FPS = PARAMS.frame_rate_hz


def _segments_of(fit: float, null: float) -> list[tuple[float, float]]:
    """Segments of 30 s of query whose middle 10 s fit at ``fit`` over a null of ``null``,
    the rest at 0.1 over 0.1."""
    n_frames = int(30 * FPS)
    middle = slice(int(10 * FPS), int(20 * FPS))
    per_frame = np.full(n_frames, 0.1, dtype=np.float32)
    null_curve = np.full(n_frames, 0.1, dtype=np.float32)
    per_frame[middle], null_curve[middle] = fit, null
    positions = 500.0 + np.arange(n_frames)
    segments, _ = matched_segments(
        per_frame,
        null_curve,
        np.ones(n_frames, dtype=np.float32),
        positions,
        params=PARAMS,
        settings=VerifySettings(),
    )
    return [(s.query_start_s, s.query_end_s) for s in segments]


def test_a_clear_excess_over_the_null_is_matched() -> None:
    ((start, end),) = _segments_of(0.7, 0.3)
    assert start == pytest.approx(10.0, abs=0.6)
    assert end == pytest.approx(20.0, abs=0.6)


def test_a_near_perfect_fit_is_matched_where_the_reference_repeats_itself() -> None:
    """Misaligned by 9-23 s a looped reference fits at 0.85: an exact copy's 0.97 cannot
    beat that by the margin, but it takes most of what the null leaves."""
    ((start, end),) = _segments_of(0.97, 0.85)
    assert start == pytest.approx(10.0, abs=0.6)
    assert end == pytest.approx(20.0, abs=0.6)


@pytest.mark.parametrize(
    ("fit", "null"),
    [
        (0.80, 0.72),  # a drone fitting everywhere, under the near-perfect level
        (0.90, 0.86),  # high, but hardly above what the misaligned reference gives
        (1.00, 1.00),  # no headroom left, and no better than the misaligned reference
    ],
)
def test_a_fit_no_better_than_the_null_is_not_matched(fit: float, null: float) -> None:
    assert _segments_of(fit, null) == []
