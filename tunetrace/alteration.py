"""Name the kind of alteration from the estimated tempo ratio and pitch shift."""

from __future__ import annotations

import numpy as np

#: Tempo ratios within this relative distance of 1 count as unchanged tempo.
TEMPO_TOLERANCE = 0.015
#: Pitch shifts within this many semitones of the expectation count as equal.
PITCH_TOLERANCE_SEMITONES = 0.3

ALTERATIONS = ("none", "time_stretch", "pitch_shift", "speed_change", "time_stretch+pitch_shift")


def classify_alteration(tempo_ratio: float, spectral_shift_semitones: float) -> str:
    """Classify an alteration.

    A speed change (resampling) moves pitch by ``12 * log2(tempo_ratio)`` semitones; a
    time-stretch keeps pitch; a pitch-shift keeps tempo.

    Parameters
    ----------
    tempo_ratio : float > 0
        Reference duration / query duration.
    spectral_shift_semitones : float
        Query pitch minus reference pitch, not wrapped to an octave (as measured on the
        log-frequency spectrum, so a speed change by 2 reads +12, not 0).

    Returns
    -------
    alteration : str
        One of :data:`ALTERATIONS`.
    """
    tempo_changed = abs(np.log(tempo_ratio)) > np.log1p(TEMPO_TOLERANCE)
    pitch_changed = abs(spectral_shift_semitones) > PITCH_TOLERANCE_SEMITONES
    if not tempo_changed:
        return "pitch_shift" if pitch_changed else "none"
    speed_shift = 12.0 * np.log2(tempo_ratio)
    if abs(spectral_shift_semitones - speed_shift) <= PITCH_TOLERANCE_SEMITONES:
        return "speed_change"
    return "time_stretch+pitch_shift" if pitch_changed else "time_stretch"
