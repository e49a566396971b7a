"""Query preparation, the first stage of verification.

A query's candidate places come from the patch-vector search (:mod:`tunetrace.candidates`).
Before any of them is checked, the query's spectrum is whitened along frequency and its frame
weights and spectral changes are computed once (:func:`prepare_query`): chroma alignment
(:mod:`tunetrace.alignment`), screening (:mod:`tunetrace.screening`) and full verification
(:mod:`tunetrace.verification`) of every candidate reuse them. :class:`VerifySettings` holds
the numbers that steer all of these stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunetrace.fingerprint.features import Features


@dataclass(frozen=True)
class VerifySettings:
    """Numbers that steer verification (search widths, segment rules).

    Attributes
    ----------
    rate_search : float
        Relative half-width of the tempo-ratio refinement (0.06 = +-6%).
    offset_search_frames : int
        Half-width of the offset refinement, in reference frames.
    null_offsets_s : tuple of float
        Misalignments (seconds) used to measure the coincidence level.
    local_offsets_s : tuple of float
        Small misalignments (seconds): a copy fits sharply at one offset, a coincidence of
        held notes fits about as well a second away.
    segment_margin : float
        A frame is matched when its smoothed aligned correlation exceeds the null level by
        this much ...
    segment_floor : float
        ... and is at least this high.
    near_perfect_fit : float
        A frame whose smoothed aligned correlation reaches this is matched too when it
        exceeds the null level by ...
    near_perfect_share : float
        ... this share of what the null leaves below a perfect fit (``1 - null``): where a
        reference repeats itself, its misaligned copies fit almost as well as the aligned
        one, and an exact copy cannot beat them by ``segment_margin``.
    smooth_s : float
        Length of the moving average applied to per-frame correlations.
    min_segment_s : float
        Matched runs shorter than this are dropped; gaps shorter than this are bridged.
    edge_gap_s : float
        Reported segments join matched runs across gaps up to this long (a noisy passage or a
        quiet bar inside a copy fits less clearly than the rest) ...
    edge_join_min_s : float
        ... when both runs are at least this long (a fragment beside a section is not drawn
        into it).
    whiten_bins : int
        Width (log bins) of the local mean removed along frequency before spectra are compared.
    spectral_refinement : tuple of (rate half-width, rate steps, offset half-width, offset steps)
        Grids searched, in turn, to refine the alignment on spectra and their changes.
    max_octaves : int
        Whole-octave alternatives tried for the spectral shift (speed changes move pitch by up
        to an octave over 0.5-2.0).
    """

    rate_search: float = 0.06
    offset_search_frames: int = 10
    null_offsets_s: tuple[float, ...] = (-23.0, -15.0, -9.0, 9.0, 15.0, 23.0)
    local_offsets_s: tuple[float, ...] = (-2.0, -1.2, -0.6, 0.6, 1.2, 2.0)
    segment_margin: float = 0.2
    segment_floor: float = 0.4
    near_perfect_fit: float = 0.85
    near_perfect_share: float = 0.5
    smooth_s: float = 1.0
    min_segment_s: float = 1.0
    edge_join_min_s: float = 3.0
    edge_gap_s: float = 2.0
    max_octaves: int = 2
    whiten_bins: int = 13
    spectral_refinement: tuple[tuple[float, int, float, int], ...] = (
        (0.02, 3, 2.0, 3),
        (0.007, 3, 0.7, 3),
    )


@dataclass(frozen=True)
class PreparedQuery:
    """A query's features with what every verification of it reuses.

    Attributes
    ----------
    features : Features
    weights : np.ndarray [shape=(n_frames,), dtype=float32]
        1 for sounding frames, 0 for silent ones.
    white_frames : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        The features' ``verification_spectrum`` whitened along frequency (see
        :func:`whiten_spectrum`), frames first.
    white_changes, raw_changes : np.ndarray [shape=(n_frames - 2, n_bins), dtype=float32]
        Frame ``t + 2`` minus frame ``t`` of the whitened and of the raw verification
        spectrum, frames first.
    """

    features: Features
    weights: np.ndarray
    white_frames: np.ndarray
    white_changes: np.ndarray
    raw_changes: np.ndarray

    @property
    def white(self) -> np.ndarray:
        """:attr:`white_frames` bins first, shape ``(n_bins, n_frames)`` (a view)."""
        return self.white_frames.T

    def frames(self, first: int, stop: int) -> PreparedQuery:
        """The prepared frames ``first`` to ``stop - 1`` (views, no copies): what
        :func:`prepare_query` makes of ``features.frames(first, stop)``, as every array is
        computed frame by frame (whitening and blurring along frequency; changes two frames
        apart within the part).

        Parameters
        ----------
        first, stop : int
            Frame range, half-open, ``0 <= first < stop <= n_frames``.
        """
        # aligned on chroma too: computed once for the whole query, each part slices it
        self.features.chroma_bin_spectrum  # noqa: B018
        return PreparedQuery(
            features=self.features.frames(first, stop),
            weights=self.weights[first:stop],
            white_frames=self.white_frames[first:stop],
            white_changes=self.white_changes[first : max(stop - 2, first)],
            raw_changes=self.raw_changes[first : max(stop - 2, first)],
        )


def prepare_query(features: Features, settings: VerifySettings | None = None) -> PreparedQuery:
    """Compute the per-query arrays that verification of every candidate reuses."""
    settings = settings or VerifySettings()
    white = whiten_spectrum(features.verification_spectrum, settings.whiten_bins)
    white_frames = np.ascontiguousarray(white.T)
    raw_frames = features.verification_spectrum.T
    return PreparedQuery(
        features=features,
        weights=features.active_frames().astype(np.float32),
        white_frames=white_frames,
        white_changes=np.ascontiguousarray(white_frames[2:] - white_frames[:-2]),
        raw_changes=np.ascontiguousarray(raw_frames[2:] - raw_frames[:-2], dtype=np.float32),
    )


def whiten_spectrum(spectrum: np.ndarray, width: int) -> np.ndarray:
    """Remove each frame's local mean along frequency (a moving average of ``width`` bins).

    What is left is the fine structure (harmonics, partials) that identifies a recording; the
    broad spectral envelope, which all music shares and EQ changes, is gone.

    Parameters
    ----------
    spectrum : np.ndarray [shape=(n_bins, n_frames)]
    width : int > 0, odd

    Returns
    -------
    whitened : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
    """
    half = width // 2
    padded = np.pad(spectrum, ((half + 1, half), (0, 0)), mode="edge")
    cumulative = np.cumsum(padded, axis=0, dtype=np.float64)
    local_mean = (cumulative[width:] - cumulative[:-width]) / width
    return (spectrum - local_mean).astype(np.float32)
