"""Verification: align a query with one candidate reference and measure how well it fits.

Chroma finds candidates, but two different recordings in the same key can share chroma for
seconds on end. A copy is the *same recording*: once its tempo ratio and pitch shift are
undone, its whole log-frequency spectrum (register, timbre, onsets) lines up with the
reference. So verification

1. refines the candidate's tempo ratio and offset on chroma (coarse-to-fine grid),
2. estimates the pitch shift by circular cross-correlation of chroma (fractional bins by
   parabolic interpolation),
3. compares the aligned log-frequency spectra, where a pitch shift is a translation along the
   frequency axis (trying whole-octave alternatives, which chroma cannot see),
4. measures what the same comparison gives with the reference deliberately misaligned (the
   "null" level a coincidence reaches for this very pair: drones and static harmony are high),
5. marks the frames where the aligned spectra agree clearly better than the null as matched
   segments.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from tunetrace.alignment import ChromaAlignment, centred_grid
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.query import PreparedQuery, VerifySettings
from tunetrace.screening import Screening, fit_objectives, screen_alignment
from tunetrace.types import Segment, Verification
from tunetrace.verification_kernels import (
    aligned_frames,
    paired_bins,
    shifted_fit,
    spectral_curves,
)


def verify_candidate(
    query: PreparedQuery,
    reference: Features,
    alignment: ChromaAlignment,
    *,
    params: FingerprintParams,
    settings: VerifySettings | None = None,
    screening: Screening | None = None,
) -> Verification | None:
    """Verify a chroma alignment on whitened log-frequency spectra.

    Parameters
    ----------
    query : PreparedQuery
    reference : Features
    alignment : ChromaAlignment
        From :func:`align_on_chroma`.
    params : FingerprintParams
    settings : VerifySettings, optional
    screening : Screening, optional
        From :func:`screen_alignment` (computed here when not given).

    Returns
    -------
    verification : Verification or None
        The ``score`` field is left at 0: scoring is the caller's (calibrated) step.
    """
    settings = settings or VerifySettings()
    if screening is None:
        screening = screen_alignment(query, reference, alignment, params=params, settings=settings)
    bins = params.bins_per_octave
    roll, shift = screening.roll_bins, screening.shift_bins
    weights = query.weights
    fit = _SpectralFit(query, reference, settings.whiten_bins)
    rate, offset = alignment.tempo_ratio, alignment.offset_frames
    for rate_half_width, n_rates, offset_half_width, n_offsets in settings.spectral_refinement:
        grid = centred_grid(
            rate,
            offset,
            query.features.n_frames / 2,
            rate_half_width,
            n_rates,
            offset_half_width,
            n_offsets,
        )
        rates, offsets = grid
        values = fit_objectives(query, reference, rates, offsets, np.array([shift]), settings)[:, 0]
        _, rate, offset = max(zip(values.tolist(), rates.tolist(), offsets.tolist(), strict=True))
    best = fit.similarity(rate, offset, shift, with_dynamics=True)
    positions = best.positions
    n_frames = max(reference.n_frames - 1, 1)
    fps = params.frame_rate_hz
    null_offsets = np.array(settings.null_offsets_s)[:, None] * fps
    local_offsets = np.array(settings.local_offsets_s)[:, None] * fps
    null_curve = np.median(fit.spectral_at((positions + null_offsets) % n_frames, shift), axis=0)
    local_curve = np.median(fit.spectral_at(positions + local_offsets, shift), axis=0)
    segments, matched = _matched_segments(
        best.per_frame, null_curve, best.usable, positions, params=params, settings=settings
    )
    semitones_per_bin = 12.0 / bins
    return Verification(
        reference_key=alignment.candidate.reference_key,
        tempo_ratio=float(rate),
        pitch_shift_semitones=float(roll * semitones_per_bin),
        spectral_shift_semitones=float(shift * semitones_per_bin),
        offset_frames=float(offset),
        spectral_similarity=float(best.spectral),
        null_similarity=_weighted_mean(null_curve, weights),
        local_similarity=_weighted_mean(local_curve, best.usable),
        chroma_similarity=alignment.chroma_similarity,
        dynamics_similarity=float(best.dynamics or 0.0),
        onset_similarity=float(best.onsets),
        coverage=float(matched.sum() / max(query.features.n_frames, 1)),
        harmonic_change=harmonic_change(
            query.features.chroma, matched, round(HARMONIC_LAG_S * params.frame_rate_hz)
        ),
        segments=segments,
        votes=alignment.candidate.votes,
    )


@dataclass(frozen=True)
class _Fit:
    spectral: float
    dynamics: float | None
    onsets: float
    per_frame: np.ndarray
    usable: np.ndarray
    positions: np.ndarray

    @property
    def objective(self) -> float:
        """What alignment refinement maximises: static fit plus agreement of onsets."""
        return self.spectral + self.onsets


class _SpectralFit:
    """Spectral, dynamics and onset similarity of a query with a reference at an alignment.

    Whitening along frequency, the shift along frequency and interpolation between frames
    are all linear and act on different axes, so they commute: an alignment's reference
    frames are interpolated and whitened
    (:func:`~tunetrace.verification_kernels.aligned_frames`), then shifted and compared
    (:func:`~tunetrace.verification_kernels.shifted_fit`). The result equals shifting and
    whitening the interpolated frames. Screening and refinement, which measure
    many alignments and shifts, do the same in one call
    (:func:`~tunetrace.screening_kernels.alignment_objectives`).
    """

    def __init__(self, query: PreparedQuery, reference: Features, whiten_bins: int) -> None:
        self.query = query
        self.reference = reference
        self.whiten_bins = whiten_bins
        self.times = np.arange(query.features.n_frames)

    def positions(self, rate: float, offset: float) -> np.ndarray:
        """Reference frame of every query frame."""
        return offset + rate * self.times

    def similarity(
        self, rate: float, offset: float, shift: float, *, with_dynamics: bool = False
    ) -> _Fit:
        """Measure the fit of one alignment (tempo ratio, offset, spectral shift).

        The dynamics measure, which alignment search does not use, is computed only when
        ``with_dynamics`` is set (``None`` otherwise).
        """
        positions = self.positions(rate, offset)
        inside = (positions >= 0) & (positions <= self.reference.n_frames - 1)
        usable = (self.query.weights * inside).astype(np.float32)
        band = self._band(shift)
        if band is None:
            zeros = np.zeros(len(positions), dtype=np.float32)
            return _Fit(0.0, 0.0 if with_dynamics else None, 0.0, zeros, usable, positions)
        raw, white = aligned_frames(self.reference.spectrum_frames, positions, self.whiten_bins)
        first, stop = band
        query = self.query
        per_frame, onsets, dynamics = shifted_fit(
            raw,
            white,
            float(shift),
            first,
            stop - first,
            query.white_frames,
            query.white_changes,
            query.raw_changes,
            usable,
            True,
            with_dynamics,
        )
        usable_total = float(usable.sum())
        return _Fit(
            spectral=float(per_frame @ usable) / usable_total if usable_total > 0 else 0.0,
            dynamics=dynamics if with_dynamics else None,
            onsets=onsets,
            per_frame=per_frame,
            usable=usable,
            positions=positions,
        )

    def spectral_at(self, positions: np.ndarray, shift: float) -> np.ndarray:
        """Per-frame spectral correlation with the reference read at arbitrary ``positions``
        (one row of frames, or several rows: one curve per row)."""
        rows = np.atleast_2d(np.asarray(positions, dtype=np.float64))
        band = self._band(shift)
        if band is None:
            curves = np.zeros(rows.shape, dtype=np.float32)
        else:
            first, stop = band
            curves = spectral_curves(
                self.reference.spectrum_frames,
                np.ascontiguousarray(rows),
                self.whiten_bins,
                float(shift),
                first,
                stop - first,
                self.query.white_frames,
                self.query.weights,
            )
        return curves if np.ndim(positions) == 2 else curves[0]

    def _band(self, shift: float) -> tuple[int, int] | None:
        """Half-open range of query bins paired under ``shift`` (query bin ``j`` with
        reference bin ``j - shift``), or ``None`` when less than a quarter of the bins pair."""
        n_bins = self.query.white.shape[0]
        first, stop = paired_bins(n_bins, float(shift))
        return None if stop - first < n_bins // 4 else (first, stop)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else 0.0


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return values
    kernel = np.ones(width, dtype=np.float32) / width
    return np.convolve(values, kernel, mode="same")


def _matched_segments(
    per_frame: np.ndarray,
    null_curve: np.ndarray,
    usable: np.ndarray,
    positions: np.ndarray,
    *,
    params: FingerprintParams,
    settings: VerifySettings,
) -> tuple[list[Segment], np.ndarray]:
    """Runs of frames whose aligned fit beats the null level by the margin (``matched``, what
    the measurements read), and the segments reported for them: runs of ``edge_join_min_s``
    or more less than ``edge_gap_s`` apart joined."""
    fps = params.frame_rate_hz
    width = max(1, round(settings.smooth_s * fps))
    level = _moving_average(per_frame * (usable > 0), width)
    excess = level - _moving_average(null_curve * (usable > 0), width)
    matched = (excess >= settings.segment_margin) & (level >= settings.segment_floor) & (usable > 0)
    min_run = max(1, round(settings.min_segment_s * fps))
    matched = _bridge_gaps(matched, min_run)
    for start, stop in _runs(matched):
        if stop - start < min_run:
            matched[start:stop] = False
    reported = _join_long_runs(
        matched,
        max_gap=round(settings.edge_gap_s * fps),
        min_length=round(settings.edge_join_min_s * fps),
    )
    segments: list[Segment] = []
    for start, stop in _runs(reported):
        if not matched[start:stop].any():
            continue
        segments.append(
            Segment(
                query_start_s=start / fps,
                query_end_s=stop / fps,
                reference_start_s=max(positions[start], 0.0) / fps,
                reference_end_s=max(
                    positions[stop - 1]
                    + (positions[1] - positions[0] if len(positions) > 1 else 1.0),
                    0.0,
                )
                / fps,
            )
        )
    return segments, matched


#: Lag between the chroma frames compared by :func:`harmonic_change`.
HARMONIC_LAG_S = 2.0


def harmonic_change(chroma: np.ndarray, matched: np.ndarray, lag: int) -> float:
    """Mean of one minus the correlation of matched chroma frames ``lag`` apart.

    A copy of music matches its reference through chord changes; a coincidence that a slowed,
    re-pitched or noisy query finds in a fade-out or a drone matches one held chord, where
    this is near 0.

    Parameters
    ----------
    chroma : np.ndarray [shape=(bins_per_octave, n_frames)]
        Frame-normalised chroma (zero mean, unit norm per frame).
    matched : np.ndarray [shape=(n_frames,), dtype=bool]
    lag : int > 0

    Returns
    -------
    change : float
        0 when no two matched frames lie ``lag`` apart.
    """
    pairs = np.flatnonzero(matched[:-lag] & matched[lag:]) if 0 < lag < len(matched) else []
    if len(pairs) == 0:
        return 0.0
    correlations = np.einsum("ij,ij->j", chroma[:, pairs], chroma[:, pairs + lag])
    return float(np.mean(1.0 - correlations))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` index pairs of the True runs of a boolean mask."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _join_long_runs(mask: np.ndarray, *, max_gap: int, min_length: int) -> np.ndarray:
    """``mask`` with gaps of at most ``max_gap`` filled between runs that are both at least
    ``min_length`` long (a fragment beside a section is not drawn into it)."""
    out = mask.copy()
    runs = [run for run in _runs(mask) if run[1] - run[0] >= min_length]
    for (_, stop), (start, _) in itertools.pairwise(runs):
        if start - stop <= max_gap:
            out[stop:start] = True
    return out


def _bridge_gaps(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill False gaps shorter than ``max_gap`` that lie between two True runs."""
    filled = mask.copy()
    runs = _runs(mask)
    for (_, stop), (start, _) in itertools.pairwise(runs):
        if start - stop < max_gap:
            filled[stop:start] = True
    return filled
