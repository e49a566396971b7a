"""Chroma alignment, the second stage of verification.

Each candidate place from the patch-vector search (:mod:`tunetrace.candidates`) has a rough
tempo ratio and offset. On the prepared query (:mod:`tunetrace.query`) they are refined here,
cheaply, on pitch-corrected chroma: a coarse-to-fine grid search whose inner loops are
compiled (:mod:`tunetrace.alignment_kernels`). Every alignment then goes on to spectral
screening (:mod:`tunetrace.screening`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tunetrace.alignment_kernels import chroma_grid_search
from tunetrace.fingerprint.features import Features
from tunetrace.query import PreparedQuery, VerifySettings
from tunetrace.types import Candidate


@dataclass(frozen=True)
class ChromaAlignment:
    """A candidate's tempo ratio and offset refined on chroma, with its roll profile.

    Attributes
    ----------
    candidate : Candidate
    tempo_ratio : float
    offset_frames : float
    roll_scores : np.ndarray [shape=(bins_per_octave,)]
        Mean chroma correlation at each circular roll (query up by ``roll`` bins).
    """

    candidate: Candidate
    tempo_ratio: float
    offset_frames: float
    roll_scores: np.ndarray

    @property
    def chroma_similarity(self) -> float:
        """Best pitch-corrected chroma correlation."""
        return float(self.roll_scores.max())


def align_on_chroma(
    query: PreparedQuery,
    reference: Features,
    candidate: Candidate,
    *,
    settings: VerifySettings | None = None,
) -> ChromaAlignment | None:
    """Refine a candidate's tempo ratio and offset on pitch-corrected chroma (cheap).

    Parameters
    ----------
    query : PreparedQuery
    reference : Features
    candidate : Candidate
    settings : VerifySettings, optional

    Returns
    -------
    alignment : ChromaAlignment or None
        ``None`` when the candidate places too little of the query inside the reference.
    """
    settings = settings or VerifySettings()
    if query.weights.sum() == 0:
        return None
    rate, offset, roll_scores = _refine_alignment(
        query.features, reference, candidate, query.weights, settings
    )
    if roll_scores is None:
        return None
    return ChromaAlignment(candidate, rate, offset, roll_scores)


def centred_grid(
    rate: float,
    offset: float,
    centre_frame: float,
    rate_half_width: float,
    n_rates: int,
    offset_half_width: float,
    n_offsets: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A (tempo ratio, offset) grid that keeps the query's centre in place as the ratio moves.

    With offsets measured at the query's first frame, a change of ratio moves the whole
    alignment and the fit has a diagonal ridge that a coarse grid straddles; pivoting on the
    centre makes ratio and offset nearly independent.

    Parameters
    ----------
    rate, offset : float
        The point the grid is laid around (offset in reference frames, at the query's first
        frame).
    centre_frame : float
        Query frame kept in place as the ratio moves.
    rate_half_width, n_rates, offset_half_width, n_offsets
        The grid's shape, as for :func:`grid_pattern`.

    Returns
    -------
    rates, offsets : np.ndarray [shape=(n_rates * n_offsets,), dtype=float64]
        Every grid point, ratio fastest.
    """
    factors, deltas = grid_pattern(rate_half_width, n_rates, offset_half_width, n_offsets)
    grid_rates = rate * factors
    return grid_rates, offset + (rate - grid_rates) * centre_frame + deltas


@functools.lru_cache(maxsize=16)
def grid_pattern(
    rate_half_width: float, n_rates: int, offset_half_width: float, n_offsets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rate factors and offset steps of every point of a (tempo ratio, offset) grid.

    Shared by all grids of one shape (cached, read-only): verification lays thousands of them.

    Parameters
    ----------
    rate_half_width : float
        The ratios run from ``exp(-rate_half_width)`` to ``exp(rate_half_width)`` times the
        grid's ratio ...
    n_rates : int
        ... in this many steps, evenly spaced in log ratio.
    offset_half_width : float
        The offsets run this many frames either side of the grid's offset ...
    n_offsets : int
        ... in this many steps.

    Returns
    -------
    factors, deltas : np.ndarray [shape=(n_rates * n_offsets,), dtype=float64]
        Rate factor and offset step of every grid point, ratio fastest.
    """
    factors = np.exp(np.linspace(-rate_half_width, rate_half_width, n_rates))
    deltas = np.linspace(-offset_half_width, offset_half_width, n_offsets)
    grid_factors, grid_deltas = (a.reshape(-1) for a in np.meshgrid(factors, deltas))
    grid_factors.flags.writeable = False
    grid_deltas.flags.writeable = False
    return grid_factors, grid_deltas


def _refine_alignment(
    query: Features,
    reference: Features,
    candidate: Candidate,
    weights: np.ndarray,
    settings: VerifySettings,
) -> tuple[float, float, np.ndarray | None]:
    """Coarse-to-fine grid over (tempo ratio, offset) maximising pitch-corrected chroma fit.

    Each stage's grid is centred on the best point of the stage before (see
    :func:`centred_grid` and :func:`~tunetrace.alignment_kernels.chroma_grid_search`).
    """
    factors, deltas, stage_ends = _alignment_grids(
        settings.rate_search, float(settings.offset_search_frames)
    )
    cosines, sines = inverse_transform(query.chroma.shape[0])
    reference = reference.frames_read(
        *_frames_searched(candidate, query.n_frames, factors, deltas, stage_ends)
    )
    # The circular cross-correlation over chroma bins is computed in the Fourier domain of the
    # bins (each recording's transform is cached on its features). Interpolating frames is
    # linear, so the reference's transform is interpolated directly; the conjugate of the
    # weighted sum over frames is the cross-correlation's transform.
    rate, offset, scores, found = chroma_grid_search(
        reference.chroma_bin_spectrum,
        np.conj(query.chroma_bin_spectrum),
        np.asarray(weights, dtype=np.float32),
        float(candidate.tempo_ratio),
        float(candidate.offset_frames),
        query.n_frames / 2,
        factors,
        deltas,
        stage_ends,
        cosines,
        sines,
    )
    return (float(rate), float(offset), scores) if found else (rate, offset, None)


def _frames_searched(
    candidate: Candidate,
    n_query: int,
    factors: np.ndarray,
    deltas: np.ndarray,
    stage_ends: np.ndarray,
) -> tuple[float, float]:
    """The reference frames :func:`~tunetrace.alignment_kernels.chroma_grid_search` can read
    searching from ``candidate``'s alignment (a range that holds them all).

    Every stage keeps the query's centre frame where the best point before put it, moved by
    one of its offset steps, and multiplies that point's ratio by one of its factors: the
    centre stays within the sum of the stages' largest steps of where the candidate puts it,
    and the ratio within the product of their largest factors.
    """
    stages = np.split(np.arange(len(factors)), stage_ends[:-1])
    drift = sum(float(np.abs(deltas[s]).max()) for s in stages)
    fastest = float(candidate.tempo_ratio) * float(
        np.exp(sum(float(np.abs(np.log(factors[s])).max()) for s in stages))
    )
    centre = n_query / 2
    middle = float(candidate.offset_frames) + float(candidate.tempo_ratio) * centre
    # A position reads its frame and the next; alignments summed together (offsets whole
    # frames apart) read one frame more, weighted zero, after their last position's next.
    first = middle - drift - fastest * centre
    return first, middle + drift + fastest * (n_query - 1 - centre) + 3


@functools.lru_cache(maxsize=4)
def _alignment_grids(
    rate_search: float, offset_search_frames: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rate factors, offset steps and stage ends of the three alignment stages: +-``rate_search``
    in 9 ratios by +-``offset_search_frames`` in 11 offsets, then an eighth of the ratio
    range by +-2 frames, then a 32nd by +-0.5 frames (5 by 5 each)."""
    steps = (
        (rate_search, 9, offset_search_frames, 11),
        (rate_search / 8, 5, 2.0, 5),
        (rate_search / 32, 5, 0.5, 5),
    )
    patterns = [grid_pattern(*step) for step in steps]
    factors = np.concatenate([f for f, _ in patterns])
    deltas = np.concatenate([d for _, d in patterns])
    stage_ends = np.cumsum([len(f) for f, _ in patterns]).astype(np.int64)
    for array in (factors, deltas, stage_ends):
        array.flags.writeable = False
    return factors, deltas, stage_ends


@functools.lru_cache(maxsize=4)
def inverse_transform(n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrices that compute an inverse real FFT of conjugated half spectra as two products.

    ``X.real @ C + X.imag @ S == np.fft.irfft(np.conj(X), n_bins)`` for half spectra ``X``
    of length ``n_bins // 2 + 1`` (cheaper than an FFT call for the few dozen short rows an
    alignment grid has).

    Parameters
    ----------
    n_bins : int > 0
        Length of the inverse transform (chroma bins per octave: one value per circular roll).

    Returns
    -------
    cosines, sines : np.ndarray [shape=(n_bins // 2 + 1, n_bins), dtype=float64]
        ``C`` and ``S`` (cached, read-only).
    """
    n_coeffs = n_bins // 2 + 1
    angles = 2 * np.pi * np.outer(np.arange(n_coeffs), np.arange(n_bins)) / n_bins
    weights = np.full(n_coeffs, 2.0 / n_bins)
    weights[0] = 1.0 / n_bins
    if n_bins % 2 == 0:
        weights[-1] = 1.0 / n_bins
    cosines = weights[:, None] * np.cos(angles)
    sines = weights[:, None] * np.sin(angles)
    sines[0] = 0.0  # irfft ignores the imaginary part of the first coefficient ...
    if n_bins % 2 == 0:
        sines[-1] = 0.0  # ... and of the last one when n_bins is even
    cosines.flags.writeable = False
    sines.flags.writeable = False
    return cosines, sines
