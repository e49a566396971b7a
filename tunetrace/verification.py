"""Full verification, the fourth stage: align a query with one candidate reference and
measure how well it fits.

Chroma finds candidates, but two different recordings in the same key can share chroma for
seconds on end. A copy is the *same recording*: once its tempo ratio and pitch shift are
undone, its whole log-frequency spectrum (register, timbre, onsets) lines up with the
reference. So verification

1. refines the candidate's tempo ratio and offset on chroma (coarse-to-fine grid; done
   before, in :mod:`tunetrace.alignment`),
2. estimates the pitch shift by circular cross-correlation of chroma (fractional bins by
   parabolic interpolation; done before, in :mod:`tunetrace.screening`),
3. compares the aligned log-frequency spectra, where a pitch shift is a translation along the
   frequency axis (trying whole-octave alternatives, which chroma cannot see),
4. measures what the same comparison gives with the reference deliberately misaligned (the
   "null" level a coincidence reaches for this very pair: drones and static harmony are high),
5. marks the frames where the aligned spectra agree clearly better than the null as matched
   segments (:mod:`tunetrace.segments`, the stage after this one).

The spectral fit's compiled loops are in :mod:`tunetrace.verification_kernels`. The matcher
then scores each verification (:mod:`tunetrace.scoring`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunetrace.alignment import ChromaAlignment, centred_grid
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.query import PreparedQuery, VerifySettings
from tunetrace.screening import Screening, fit_objectives, screen_alignment
from tunetrace.segments import HARMONIC_LAG_S, harmonic_change, matched_segments
from tunetrace.types import Verification
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
    fit = SpectralFit(query, reference, settings.whiten_bins)
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
    fps = params.frame_rate_hz
    local_offsets = np.array(settings.local_offsets_s)[:, None] * fps
    null_curve = fit.null_curve(positions, shift, settings.null_offsets_s)
    local_curve = np.median(fit.spectral_at(positions + local_offsets, shift), axis=0)
    segments, matched = matched_segments(
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
class Fit:
    """How well a query fits a reference at one alignment (:meth:`SpectralFit.similarity`).

    Attributes
    ----------
    spectral : float
        Mean of the per-frame spectral correlations, weighted by ``usable``.
    dynamics : float or None
        Correlation of the changes of whitened spectra (``None`` when not measured).
    onsets : float
        Correlation of the changes of raw spectra.
    per_frame : np.ndarray [shape=(n_frames,), dtype=float32]
        Spectral correlation of each query frame.
    usable : np.ndarray [shape=(n_frames,), dtype=float32]
        Weight of each query frame: sounding and inside the reference.
    positions : np.ndarray [shape=(n_frames,), dtype=float64]
        Reference frame of every query frame.
    """

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


class SpectralFit:
    """Spectral, dynamics and onset similarity of a query with a reference at an alignment.

    Whitening along frequency, the shift along frequency and interpolation between frames
    are all linear and act on different axes, so they commute: an alignment's reference
    frames are interpolated and whitened
    (:func:`~tunetrace.verification_kernels.aligned_frames`), then shifted and compared
    (:func:`~tunetrace.verification_kernels.shifted_fit`). The result equals shifting and
    whitening the interpolated frames. Screening and refinement, which measure
    many alignments and shifts, do the same in one call
    (:func:`~tunetrace.verification_kernels.alignment_objectives`).

    Parameters
    ----------
    query : PreparedQuery
    reference : Features
    whiten_bins : int > 0, odd
        Width (log bins) of the local mean removed along frequency from the reference's
        aligned frames (the query's was removed when it was prepared).
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
    ) -> Fit:
        """Measure the fit of one alignment (tempo ratio, offset, spectral shift).

        The dynamics measure, which alignment search does not use, is computed only when
        ``with_dynamics`` is set (``None`` otherwise).

        Parameters
        ----------
        rate : float
            Tempo ratio.
        offset : float
            Reference frame of the query's first frame.
        shift : float
            Spectral shift in bins (query up by ``shift`` relative to the reference).
        with_dynamics : bool

        Returns
        -------
        fit : Fit
        """
        positions = self.positions(rate, offset)
        inside = (positions >= 0) & (positions <= self.reference.n_frames - 1)
        usable = (self.query.weights * inside).astype(np.float32)
        band = self._band(shift)
        if band is None:
            zeros = np.zeros(len(positions), dtype=np.float32)
            return Fit(0.0, 0.0 if with_dynamics else None, 0.0, zeros, usable, positions)
        read = self.reference.positions_read(positions)
        raw, white = aligned_frames(read.spectrum_frames, positions, self.whiten_bins)
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
        return Fit(
            spectral=float(per_frame @ usable) / usable_total if usable_total > 0 else 0.0,
            dynamics=dynamics if with_dynamics else None,
            onsets=onsets,
            per_frame=per_frame,
            usable=usable,
            positions=positions,
        )

    def spectral_at(self, positions: np.ndarray, shift: float) -> np.ndarray:
        """Per-frame spectral correlation with the reference read at arbitrary ``positions``
        (one row of frames, or several rows: one curve per row).

        Parameters
        ----------
        positions : np.ndarray [shape=(n_frames,) or (n_rows, n_frames)]
            Fractional reference frames (clipped to the reference).
        shift : float
            Spectral shift in bins.

        Returns
        -------
        curves : np.ndarray [shape=positions.shape, dtype=float32]
            All zero when less than a quarter of the bins pair under ``shift``.
        """
        rows = np.atleast_2d(np.asarray(positions, dtype=np.float64))
        band = self._band(shift)
        if band is None:
            curves = np.zeros(rows.shape, dtype=np.float32)
        else:
            first, stop = band
            curves = spectral_curves(
                self.reference.positions_read(rows).spectrum_frames,
                np.ascontiguousarray(rows),
                self.whiten_bins,
                float(shift),
                first,
                stop - first,
                self.query.white_frames,
                self.query.weights,
            )
        return curves if np.ndim(positions) == 2 else curves[0]

    def null_curve(
        self, positions: np.ndarray, shift: float, offsets_s: tuple[float, ...]
    ) -> np.ndarray:
        """The coincidence level of every query frame: the median spectral correlation with
        the reference misaligned by each of ``offsets_s`` (wrapping around the reference).

        Parameters
        ----------
        positions : np.ndarray [shape=(n_frames,)]
            The alignment's reference frame of every query frame.
        shift : float
            Spectral shift in bins.
        offsets_s : tuple of float
            Misalignments in seconds (:attr:`VerifySettings.null_offsets_s`).

        Returns
        -------
        curve : np.ndarray [shape=(n_frames,), dtype=float32]
        """
        n_frames = max(self.reference.n_frames - 1, 1)
        offsets = np.array(offsets_s)[:, None] * self.reference.frame_rate_hz
        return np.median(self.spectral_at((positions + offsets) % n_frames, shift), axis=0)

    def _band(self, shift: float) -> tuple[int, int] | None:
        """Half-open range of query bins paired under ``shift`` (query bin ``j`` with
        reference bin ``j - shift``), or ``None`` when less than a quarter of the bins pair."""
        n_bins = self.query.white.shape[0]
        first, stop = paired_bins(n_bins, float(shift))
        return None if stop - first < n_bins // 4 else (first, stop)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else 0.0
