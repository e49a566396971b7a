"""The compiled verification loops equal their NumPy definitions."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core.cpu_options import FastMathOptions
from tunetrace.fingerprint.embedding import interpolate_frames
from tunetrace.index._kernels import FASTMATH

from tests.conftest import SAMPLE_RATE, write_audio
from tunetrace.alignment import grid_pattern, inverse_transform
from tunetrace.alignment_kernels import chroma_cross_spectra, chroma_grid_search
from tunetrace.query import whiten_spectrum
from tunetrace.verification_kernels import (
    aligned_frames,
    interpolate_rows,
    shifted_fit,
    whitened_rows,
)


def _positions(n_frames: int, rate: float, offset: float) -> np.ndarray:
    return offset + rate * np.arange(n_frames, dtype=np.float64)


def _cross_spectra(
    reference: np.ndarray,
    query: np.ndarray,
    weights: np.ndarray,
    rates: np.ndarray,
    offsets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`chroma_cross_spectra` of chroma given bins first, as alignment transforms it."""
    return chroma_cross_spectra(
        np.ascontiguousarray(np.fft.rfft(reference, axis=0).T, dtype=np.complex64),
        np.ascontiguousarray(np.conj(np.fft.rfft(query, axis=0).T), dtype=np.complex64),
        weights,
        rates,
        offsets,
    )


# Three alignments at three rates; then a search grid of rates by offsets whole frames apart
# (summed off one spreading of the query per rate), with an offset half a frame off the grid
# and members that run off either end of the reference (those two summed frame by frame).
_STEPS = np.array([-6.0, -2.0, 0.0, 1.0, 5.0])
_GRID = {1.0: 34.6 + _STEPS, 1.37: 40.6 + _STEPS, 0.55: 1.6 + _STEPS, 1.9: 228.3 + _STEPS}


@pytest.mark.parametrize(
    ("rates", "offsets"),
    [
        (np.array([0.8, 1.0, 1.31]), np.array([-20.0, 100.5, 290.0])),
        (
            np.array([rate for rate, row in _GRID.items() for _ in row] + [1.0]),
            np.array([offset for row in _GRID.values() for offset in row] + [43.1]),
        ),
    ],
)
def test_chroma_cross_spectra_give_the_circular_cross_correlation(
    rates: np.ndarray, offsets: np.ndarray
) -> None:
    rng = np.random.default_rng(0)
    reference = rng.random((36, 400)).astype(np.float32)
    query = rng.random((36, 90)).astype(np.float32)
    weights = (rng.random(90) > 0.2).astype(np.float32)

    sums, totals = _cross_spectra(reference, query, weights, rates, offsets)
    per_roll = np.fft.irfft(np.conj(sums), n=36, axis=1)

    for p, (rate, offset) in enumerate(zip(rates, offsets, strict=True)):
        positions = _positions(90, rate, offset)
        inside = (positions >= 0) & (positions <= 399)
        frame_weights = weights * inside
        aligned = interpolate_frames(reference, positions)
        # Roll r pairs query bin k + r with reference bin k: the query up by r bins.
        expected = [
            (np.roll(query, -roll, axis=0) * aligned * frame_weights).sum() for roll in range(36)
        ]
        assert totals[p] == pytest.approx(frame_weights.sum())
        np.testing.assert_allclose(per_roll[p], expected, rtol=1e-4, atol=1e-3)


def _direct_sums(
    reference: np.ndarray, query: np.ndarray, weights: np.ndarray, rate: float, offset: float
) -> tuple[np.ndarray, float]:
    """One alignment's chroma sums and weight total by definition (frames inside only)."""
    positions = _positions(query.shape[1], rate, offset)
    inside = (positions >= 0) & (positions <= reference.shape[1] - 1)
    frame_weights = weights * inside
    aligned = interpolate_frames(reference, np.where(inside, positions, 0.0))
    bins = np.fft.rfft(aligned * frame_weights, axis=0) * np.conj(np.fft.rfft(query, axis=0))
    return bins.sum(axis=1), float(frame_weights.sum())


def test_chroma_cross_spectra_keep_odd_alignments_to_themselves() -> None:
    # NaN and huge offsets in a grid's group, a leader that is itself NaN, and members a
    # hair's breadth outside either end: none may corrupt the others (or memory), and the
    # members outside are summed as the definition says, a frame fewer
    rng = np.random.default_rng(4)
    reference = rng.random((36, 100)).astype(np.float32)
    query = rng.random((36, 20)).astype(np.float32)
    weights = np.ones(20, dtype=np.float32)
    rates = np.ones(9)
    offsets = np.array([np.nan, 3.0, np.nan, 4.0, 5.0, -1e-10, 6.0, 80.0 + 1e-10, -1e30])

    sums, totals = _cross_spectra(reference, query, weights, rates, offsets)

    for p in (1, 3, 4, 5, 6, 7, 8):
        expected, total = _direct_sums(reference, query, weights, rates[p], offsets[p])
        assert totals[p] == pytest.approx(total), p
        np.testing.assert_allclose(sums[p], expected, rtol=1e-4, atol=1e-3)
    assert totals[5] == 19 and totals[7] == 19  # first or last frame just outside
    assert totals[8] == 0


def test_aligned_frames_clip_nan_positions_and_refuse_an_empty_reference() -> None:
    rng = np.random.default_rng(5)
    frames = rng.random((30, 216)).astype(np.float32)
    positions = np.array([np.nan, 2.5, -np.inf, np.inf, 29.0])
    raw, _ = aligned_frames(frames, positions, 13)
    np.testing.assert_array_equal(raw[0], frames[0])  # NaN read as the first frame
    np.testing.assert_array_equal(raw[2], frames[0])
    np.testing.assert_array_equal(raw[3], frames[29])
    strided = np.arange(20, dtype=np.float64)[::2]  # a view, not contiguous
    np.testing.assert_array_equal(aligned_frames(frames, strided, 13)[0], frames[0:20:2])
    with pytest.raises(ValueError, match="no frames"):
        aligned_frames(frames[:0], positions, 13)


def _roll_scores(
    reference: np.ndarray,
    query: np.ndarray,
    weights: np.ndarray,
    rates: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """Mean chroma correlation at every roll for each (rate, offset), by definition: ``-inf``
    where less than half the query's weight (or of a reference's length) lies inside."""
    n_reference = reference.shape[1]
    rows = []
    for rate, offset in zip(rates, offsets, strict=True):
        positions = _positions(query.shape[1], rate, offset)
        frame_weights = weights * ((positions >= 0) & (positions <= n_reference - 1))
        total = frame_weights.sum()
        span = weights.mean() * n_reference / rate
        if total < 0.5 * min(weights.sum(), span):
            rows.append(np.full(query.shape[0], -np.inf))
            continue
        aligned = interpolate_frames(reference, positions)
        rows.append(
            [
                (np.roll(query, -roll, axis=0) * aligned * frame_weights).sum() / total
                for roll in range(query.shape[0])
            ]
        )
    return np.array(rows)


def _grid_search(
    reference: np.ndarray,
    query: np.ndarray,
    weights: np.ndarray,
    rate: float,
    offset: float,
    stages: list[tuple[float, int, float, int]],
) -> tuple[float, float, np.ndarray | None]:
    for stage in stages:
        factors, deltas = grid_pattern(*stage)
        rates = rate * factors
        offsets = offset + (rate - rates) * query.shape[1] / 2 + deltas
        scores = _roll_scores(reference, query, weights, rates, offsets)
        best = int(np.argmax(scores.max(axis=1)))
        if not np.isfinite(scores[best]).all():
            return rate, offset, None
        rate, offset = float(rates[best]), float(offsets[best])
        found = scores[best]
    return rate, offset, found


@pytest.mark.parametrize(("start_rate", "start_offset"), [(1.0, 60.0), (1.08, 47.0), (1.0, 900.0)])
def test_chroma_grid_search_finds_the_best_grid_point_stage_by_stage(
    start_rate: float, start_offset: float
) -> None:
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((36, 500)).astype(np.float32)
    # a copy of reference frames 52.4 .. at tempo 1.04, rolled by 5 bins, with noise
    query = np.roll(interpolate_frames(reference, _positions(90, 1.04, 52.4)), 5, axis=0)
    query = (query + 0.5 * rng.standard_normal(query.shape)).astype(np.float32)
    weights = (rng.random(90) > 0.2).astype(np.float32)
    stages = [(0.06, 9, 10.0, 11), (0.06 / 8, 5, 2.0, 5), (0.06 / 32, 5, 0.5, 5)]
    patterns = [grid_pattern(*stage) for stage in stages]
    cosines, sines = inverse_transform(36)

    rate, offset, scores, found = chroma_grid_search(
        np.ascontiguousarray(np.fft.rfft(reference, axis=0).T, dtype=np.complex64),
        np.ascontiguousarray(np.conj(np.fft.rfft(query, axis=0).T), dtype=np.complex64),
        weights,
        start_rate,
        start_offset,
        45.0,
        np.concatenate([f for f, _ in patterns]),
        np.concatenate([d for _, d in patterns]),
        np.cumsum([len(f) for f, _ in patterns]),
        cosines,
        sines,
    )

    expected_rate, expected_offset, expected_scores = _grid_search(
        reference, query, weights, start_rate, start_offset, stages
    )
    assert found == (expected_scores is not None)
    if expected_scores is None:  # the start lies past the reference's end: nothing to score
        return
    assert rate == pytest.approx(expected_rate, rel=1e-9)
    assert offset == pytest.approx(expected_offset, abs=1e-6)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    if start_offset < 100:  # started near the copy: found it, at its roll
        assert rate == pytest.approx(1.04, abs=0.005)
        assert offset == pytest.approx(52.4, abs=0.7)
        assert int(np.argmax(scores)) == 5


@pytest.mark.parametrize(
    ("n_bins", "whiten_bins"), [(216, 13), (20, 13), (13, 13), (8, 13), (4, 13), (30, 1)]
)
def test_aligned_frames_interpolate_then_whiten(n_bins: int, whiten_bins: int) -> None:
    # narrow spectra too, where the whitening window reaches past both ends at once
    rng = np.random.default_rng(1)
    spectrum = rng.random((n_bins, 300)).astype(np.float32)
    positions = _positions(120, 1.17, 12.3)
    positions[-5:] = 400.0  # past the end: clipped to the last frame

    raw, white = aligned_frames(np.ascontiguousarray(spectrum.T), positions, whiten_bins)

    expected_raw = interpolate_frames(spectrum, positions)
    np.testing.assert_allclose(raw.T, expected_raw, atol=1e-5)
    np.testing.assert_allclose(white.T, whiten_spectrum(expected_raw, whiten_bins), atol=1e-5)


def test_whitened_rows_whiten_each_frame_read_once_for_every_row_of_positions() -> None:
    rng = np.random.default_rng(3)
    spectrum = rng.random((216, 300)).astype(np.float32)
    frames = np.ascontiguousarray(spectrum.T)
    # three alignments over overlapping stretches, one past the end (clipped to the last frame)
    positions = np.stack(
        [_positions(50, 1.0, 10.0), _positions(50, 1.3, 20.5), _positions(50, 2.0, 250.0)]
    )

    row_of, white_rows = whitened_rows(frames, positions, 13)

    clipped = np.clip(positions, 0, 299)
    read = np.union1d(np.floor(clipped), np.minimum(np.floor(clipped) + 1, 299)).astype(int)
    np.testing.assert_array_equal(np.flatnonzero(row_of >= 0), read)  # those read, no others
    assert len(white_rows) == len(read)  # each once, however many rows read it
    np.testing.assert_array_equal(row_of[read], np.arange(len(read)))
    np.testing.assert_allclose(white_rows, whiten_spectrum(spectrum[:, read], 13).T, atol=1e-5)
    # each row of positions interpolates into the same frames aligned_frames makes alone
    raw = np.empty((50, 216), dtype=np.float32)
    white = np.empty((50, 216), dtype=np.float32)
    for row in positions:
        interpolate_rows(frames, white_rows, row_of, row, raw, white)
        expected_raw, expected_white = aligned_frames(frames, row, 13)
        np.testing.assert_array_equal(raw, expected_raw)
        np.testing.assert_allclose(white, expected_white, atol=1e-6)


@pytest.mark.parametrize("shift", [0.0, 5.5, -30.25])
def test_shifted_fit_measures_frame_and_change_correlations(shift: float) -> None:
    rng = np.random.default_rng(2)
    n_bins, n_frames = 216, 80
    raw = rng.random((n_frames, n_bins)).astype(np.float32)
    white = rng.standard_normal((n_frames, n_bins)).astype(np.float32)
    source = np.arange(n_bins) - shift
    valid = np.flatnonzero((source >= 0) & (source <= n_bins - 1))
    first, stop = int(valid[0]), int(valid[-1]) + 1
    # the query's whole spectrum, offset so that centring it over the band matters
    query_white = (rng.standard_normal((n_frames, n_bins)) + 3.0).astype(np.float32)
    query_raw = rng.random((n_frames, n_bins)).astype(np.float32)
    usable = (rng.random(n_frames) > 0.3).astype(np.float32)

    per_frame, onsets, dynamics = shifted_fit(
        raw,
        white,
        shift,
        first,
        stop - first,
        query_white,
        np.ascontiguousarray(query_white[2:] - query_white[:-2]),
        np.ascontiguousarray(query_raw[2:] - query_raw[:-2]),
        usable,
        True,
        True,
    )

    def shifted(frames: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(source[first:stop], np.arange(n_bins), f) for f in frames])

    def change_correlation(query: np.ndarray, reference: np.ndarray) -> float:
        mask = (usable[1:-1] > 0)[:, None]
        q = (query[2:] - query[:-2]) * mask
        r = (reference[2:] - reference[:-2]) * mask
        return float((q * r).sum() / (np.linalg.norm(q) * np.linalg.norm(r)))

    query_band_white = query_white[:, first:stop]
    reference_white = shifted(white)
    expected = [
        np.corrcoef(q, r)[0, 1] for q, r in zip(query_band_white, reference_white, strict=True)
    ]
    np.testing.assert_allclose(per_frame, expected, atol=1e-5)
    assert onsets == pytest.approx(
        change_correlation(query_raw[:, first:stop], shifted(raw)), abs=1e-5
    )
    assert dynamics == pytest.approx(
        change_correlation(query_band_white, reference_white), abs=1e-5
    )


#: Every module that defines compiled kernels: the catalogue's, then each stage's.
KERNEL_MODULES = (
    "tunetrace.index._kernels",
    "tunetrace.alignment_kernels",
    "tunetrace.verification_kernels",
)

_FIRST_QUERY = """
import importlib, json, sys
import numba
from tunetrace.index.catalogue import Catalogue
from tunetrace.kernels import compile_kernels
from tunetrace.matcher import Matcher

compile_kernels()
dispatchers = {
    f"{module}.{name}": value
    for module in sys.argv[3:]
    for name, value in vars(importlib.import_module(module)).items()
    if isinstance(value, numba.core.registry.CPUDispatcher)
    and value.py_func.__module__ == module
}
compiled = {name: set(d.signatures) for name, d in dispatchers.items()}
# helpers (leading underscore) are compiled inside the kernels that call them
uncompiled = sorted(
    name for name, signatures in compiled.items()
    if not signatures and not name.rsplit(".", 1)[1].startswith("_")
)
report = Matcher(Catalogue(sys.argv[1], read_only=True)).match_path(sys.argv[2])
print(json.dumps({
    "kernels": len(dispatchers),
    "matches": len(report.matches),
    "uncompiled": uncompiled,
    "compiled_later": {
        name: [str(s) for s in set(d.signatures) - compiled[name]]
        for name, d in dispatchers.items()
        if set(d.signatures) - compiled[name]
    },
}))
"""


def test_compile_kernels_leaves_nothing_for_the_first_query_to_compile(
    built_catalogue: Path, songs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    # in a fresh process: kernels compiled by other tests here would hide a missing type
    query = write_audio(tmp_path / "query.wav", songs["song2"][5 * SAMPLE_RATE : 17 * SAMPLE_RATE])
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_QUERY, str(built_catalogue), str(query), *KERNEL_MODULES],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["kernels"] >= 10
    assert result["matches"] >= 1  # the query went through verification
    assert result["compiled_later"] == {}
    assert result["uncompiled"] == []  # kernels a short query never calls are compiled too


def _kernel_dispatchers() -> dict[str, numba.core.registry.CPUDispatcher]:
    """Every compiled kernel, by module and name (each counted where it is defined)."""
    return {
        f"{module}.{name}": value
        for module in KERNEL_MODULES
        for name, value in vars(importlib.import_module(module)).items()
        if isinstance(value, numba.core.registry.CPUDispatcher)
        and value.py_func.__module__ == module
    }


def test_kernels_call_only_kernels_of_their_own_file() -> None:
    # Numba's disk cache keys a kernel on its own file alone: one that called a kernel of
    # another file would keep running that kernel's old compiled code after it changed.
    dispatchers = _kernel_dispatchers()
    callees = {
        name: {
            f"{value.py_func.__module__}.{called}"
            for called in dispatcher.py_func.__code__.co_names
            if isinstance(
                value := dispatcher.py_func.__globals__.get(called),
                numba.core.registry.CPUDispatcher,
            )
        }
        for name, dispatcher in dispatchers.items()
    }
    assert any(callees.values())  # kernels do call kernels: the check can see them
    for name, called in callees.items():
        module = name.rsplit(".", 1)[0]
        assert {callee.rsplit(".", 1)[0] for callee in called} <= {module}, name


def test_no_kernel_may_assume_finite_or_non_nan_values() -> None:
    # ``fast`` (fastmath=True) includes ninf and nnan: LLVM may then drop the comparisons with
    # the -inf sentinels that the searches start from.
    dispatchers = _kernel_dispatchers()
    assert len(dispatchers) >= 10
    unsafe = {
        name: sorted(flags)
        for name, dispatcher in dispatchers.items()
        if (flags := FastMathOptions(dispatcher.targetoptions.get("fastmath", False)).flags)
        & {"fast", "ninf", "nnan"}
    }
    assert unsafe == {}, f"kernels compiled with ninf/nnan: {unsafe}"
    assert FastMathOptions(FASTMATH).flags == {"nsz", "arcp", "contract", "afn", "reassoc"}


def test_chroma_grid_search_with_no_point_to_score_returns_the_sentinels() -> None:
    # Every grid point puts the query past the reference's end: no candidate is scored, so
    # the search must report that, with its start and its -inf roll scores untouched.
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((36, 60)).astype(np.float32)
    query = rng.standard_normal((36, 40)).astype(np.float32)
    weights = np.ones(40, dtype=np.float32)
    factors, deltas = grid_pattern(0.06, 9, 10.0, 11)
    cosines, sines = inverse_transform(36)
    reference_bins = np.ascontiguousarray(np.fft.rfft(reference, axis=0).T, dtype=np.complex64)
    query_conj = np.ascontiguousarray(np.conj(np.fft.rfft(query, axis=0).T), dtype=np.complex64)

    def search(offset: float) -> tuple[float, float, np.ndarray, bool]:
        return chroma_grid_search(
            reference_bins, query_conj, weights, 1.0, offset, 20.0,
            factors, deltas, np.array([len(factors)]), cosines, sines,
        )  # fmt: skip

    rate, offset, scores, found = search(500.0)
    assert found is False
    assert (rate, offset) == (1.0, 500.0)
    assert scores.shape == (36,)
    assert np.isneginf(scores).all(), scores

    # the same search from inside the reference scores points: finite scores, found
    _, _, inside_scores, inside_found = search(10.0)
    assert inside_found is True
    assert np.isfinite(inside_scores).all()
