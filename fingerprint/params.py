"""All tunable fingerprint numbers in one frozen object, saved with each catalogue."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bumped whenever the meaning of stored features or vectors changes.
FEATURE_VERSION = 2


@dataclass(frozen=True)
class FingerprintParams:
    """Parameters of analysis, embedding and search.

    Attributes
    ----------
    sample_rate_hz : int
        Analysis sample rate; every input is decoded and resampled to it.
    n_fft : int
        STFT window length in samples.
    hop_length : int
        STFT hop in samples; ``sample_rate_hz / hop_length`` is the frame rate.
    fmin_hz : float
        Centre frequency of the lowest log-frequency bin.
    n_octaves : int
        Octaves covered by the log-frequency spectrogram.
    bins_per_octave : int
        Log-frequency (and chroma) bins per octave; 36 gives third-semitone resolution.
    log_gain : float
        Gain ``g`` of the magnitude compression ``log1p(g * |X|)``.
    chroma_fmin_hz, chroma_fmax_hz : float
        Edges of the raised-cosine window (over log frequency) that weighs the bins folded
        into chroma. A pitch shift moves partials across any band edge; a hard edge then
        changes chroma abruptly (an octave shift swaps a whole octave of partials), a smooth
        window only reweighs them. ``chroma_fmax_hz`` may lie above the spectrum's top bin.
    chroma_smooth_frames : int
        Length of the moving average applied to chroma along time (CENS-style smoothing).
    patch_frames : int
        Length of one embedded chroma patch, in frames at reference tempo.
    reference_patch_hop : int
        Hop between indexed reference patches, in frames.
    query_patch_hop : int
        Hop between query patches, in frames (after the query is resampled to a candidate rate).
    embed_chroma_coeffs : int
        Number of 2-D Fourier coefficients kept along the chroma axis.
    embed_time_coeffs : int
        Number of 2-D Fourier coefficients kept along the time axis.
    rate_min, rate_max : float
        Range of tempo ratios searched (reference duration / query duration).
    rate_step : float
        Geometric step of the tempo-ratio grid (1.06 means 6% apart). The patch vectors
        tolerate tempo errors of more than one step and verification refines the ratio, so a
        coarser grid costs no copies and leaves fewer query patches to search.
    min_query_s : float
        Shortest query accepted.
    """

    sample_rate_hz: int = 8000
    n_fft: int = 4096
    hop_length: int = 800
    fmin_hz: float = 55.0
    n_octaves: int = 6
    bins_per_octave: int = 36
    log_gain: float = 100.0
    chroma_fmin_hz: float = 78.0
    chroma_fmax_hz: float = 4300.0
    chroma_smooth_frames: int = 3
    patch_frames: int = 32
    reference_patch_hop: int = 8
    query_patch_hop: int = 6
    embed_chroma_coeffs: int = 10
    embed_time_coeffs: int = 10
    rate_min: float = 0.5
    rate_max: float = 2.0
    rate_step: float = 1.06
    min_query_s: float = 3.0

    @property
    def frame_rate_hz(self) -> float:
        """Frames per second of every feature sequence."""
        return self.sample_rate_hz / self.hop_length

    @property
    def n_bins(self) -> int:
        """Number of log-frequency bins."""
        return self.n_octaves * self.bins_per_octave

    @property
    def embedding_dim(self) -> int:
        """Length of one patch vector."""
        return self.embed_chroma_coeffs * (2 * self.embed_time_coeffs - 1)

    def rate_grid(self) -> np.ndarray:
        """Candidate tempo ratios, geometric, always containing 1.0.

        Returns
        -------
        rates : np.ndarray [shape=(n_rates,)]
            Ratios ``reference duration / query duration`` to search, ascending.
        """
        log_step = np.log(self.rate_step)
        lo = int(np.floor(np.log(self.rate_min) / log_step))
        hi = int(np.ceil(np.log(self.rate_max) / log_step))
        return np.exp(np.arange(lo, hi + 1) * log_step)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form stored in the catalogue."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FingerprintParams:
        """Rebuild parameters saved with :meth:`to_dict`.

        Raises
        ------
        ValueError
            If ``values`` names parameters this version does not have.
        """
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fingerprint parameters: {sorted(unknown)}")
        return cls(**values)

    def digest(self) -> str:
        """Short stable hash of the parameters and the feature version."""
        blob = json.dumps({"v": FEATURE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
