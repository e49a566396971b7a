"""Spectral screening, the third stage of verification.

Every chroma alignment (:mod:`tunetrace.alignment`) gets one quick look at the spectra: its
chroma roll profile gives the pitch shift modulo an octave, and each whole-octave
alternative is scored at the alignment in one compiled call
(:func:`~tunetrace.verification_kernels.alignment_objectives`). The best-screened
alignments go on to full verification (:mod:`tunetrace.verification`), which refines them
with the same objective (:func:`fit_objectives`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunetrace.alignment import ChromaAlignment
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.query import PreparedQuery, VerifySettings
from tunetrace.verification_kernels import alignment_objectives


@dataclass(frozen=True)
class Screening:
    """A quick spectral look at a chroma alignment (one evaluation per octave choice).

    Attributes
    ----------
    value : float
        Spectral plus onset similarity at the chroma alignment.
    roll_bins : float
        Chroma roll (fractional bins), the pitch shift modulo an octave.
    shift_bins : float
        Spectral shift, the roll plus the best whole number of octaves.
    """

    value: float
    roll_bins: float
    shift_bins: float


def screen_alignment(
    query: PreparedQuery,
    reference: Features,
    alignment: ChromaAlignment,
    *,
    params: FingerprintParams,
    settings: VerifySettings | None = None,
) -> Screening:
    """Score a chroma alignment cheaply on spectra, to pick which candidates to verify.

    Parameters
    ----------
    query : PreparedQuery
    reference : Features
    alignment : ChromaAlignment
    params : FingerprintParams
    settings : VerifySettings, optional

    Returns
    -------
    screening : Screening
    """
    settings = settings or VerifySettings()
    bins = params.bins_per_octave
    roll_scores = alignment.roll_scores
    best_roll = int(np.argmax(roll_scores))
    roll = best_roll + _parabolic_peak(roll_scores, best_roll)
    roll = (roll + bins / 2) % bins - bins / 2
    if roll <= -bins / 2:
        roll += bins
    shifts = np.array(
        [
            roll + octave * bins
            for octave in range(-settings.max_octaves, settings.max_octaves + 1)
            if abs(roll + octave * bins) <= params.n_bins / 2
        ],
        dtype=np.float64,
    )
    values = fit_objectives(
        query,
        reference,
        np.array([alignment.tempo_ratio]),
        np.array([alignment.offset_frames]),
        shifts,
        settings,
    )[0]
    best = int(np.argmax(values))  # the first of equal values, as a loop keeping the best
    best_value, best_shift = values[best], shifts[best]
    return Screening(float(best_value), float(roll), float(best_shift))


def fit_objectives(
    query: PreparedQuery,
    reference: Features,
    rates: np.ndarray,
    offsets: np.ndarray,
    shifts: np.ndarray,
    settings: VerifySettings,
) -> np.ndarray:
    """Fit objective of every alignment at every shift, in one compiled call.

    The objective is the one :meth:`~tunetrace.verification.SpectralFit.similarity` gives
    a single alignment (:attr:`~tunetrace.verification.Fit.objective`: spectral plus onset
    similarity); :func:`~tunetrace.verification_kernels.alignment_objectives` computes it.

    Parameters
    ----------
    query : PreparedQuery
    reference : Features
    rates, offsets : np.ndarray [shape=(n_alignments,)]
        Tempo ratios and offsets (reference frames at the query's first frame).
    shifts : np.ndarray [shape=(n_shifts,)]
        Spectral shifts in bins (query up by ``shift`` relative to the reference).
    settings : VerifySettings

    Returns
    -------
    objectives : np.ndarray [shape=(n_alignments, n_shifts), dtype=float64]
    """
    rates = np.asarray(rates, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)
    last = offsets + rates * (query.features.n_frames - 1)
    reference = reference.frames_read(  # a position reads its frame and the next
        float(np.minimum(offsets, last).min()),
        float(np.maximum(offsets, last).max()) + 2,
        chroma=False,
    )
    return alignment_objectives(
        reference.spectrum_frames,
        rates,
        offsets,
        np.asarray(shifts, dtype=np.float64),
        query.weights,
        settings.whiten_bins,
        query.white_frames,
        query.raw_changes,
    )


def _parabolic_peak(values: np.ndarray, index: int) -> float:
    """Sub-bin offset of a circular peak from a parabola through it and its neighbours."""
    n = len(values)
    left, centre, right = values[(index - 1) % n], values[index], values[(index + 1) % n]
    denominator = left - 2 * centre + right
    if denominator >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denominator, -0.5, 0.5))
