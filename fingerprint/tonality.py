"""How tonal a recording is, and so how much a "no copy found" about it is worth.

tunetrace finds candidates through chroma, so its evidence rests on pitched material. In
passages that are mostly drums, noise or effects the chroma of a frame is nearly flat: its
shape is set by noise-like detail that a time-stretch redraws, so a stretched copy of such
a passage fits its original's chroma and patch vectors far worse than a tonal passage does.

The measure is the median, over sounding frames, of a frame's largest chroma bin over its
mean bin (before normalisation): close to 1 for noise, higher the more a few pitch classes
stand out.
"""

from __future__ import annotations

import numpy as np
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import fold_chroma

#: Below this tonality a query that matches nothing is weaker evidence of "no copy": altered
#: copies of such non-tonal queries are missed far more often than those of tonal ones.
LOW_TONALITY = 2.0


def tonality(features: Features, *, params: FingerprintParams) -> float:
    """Median peak-to-mean ratio of the folded chroma over the sounding frames.

    Parameters
    ----------
    features : Features
    params : FingerprintParams
        The parameters the features were computed with.

    Returns
    -------
    tonality : float >= 1
        1.0 when no frame is sounding.
    """
    active = features.active_frames()
    if not active.any():
        return 1.0
    folded = fold_chroma(features.spectrum[:, active], params=params)
    ratios = folded.max(axis=0) / np.maximum(folded.mean(axis=0), 1e-9)
    return float(np.median(ratios))


def low_tonality_caution(value: float | None) -> str | None:
    """A sentence for a reviewer when a query without matches is mostly non-tonal.

    Parameters
    ----------
    value : float or None
        The query's :func:`tonality` (``None``: not measured).

    Returns
    -------
    caution : str or None
        ``None`` when the query is tonal enough (or was not measured).
    """
    if value is None or value >= LOW_TONALITY:
        return None
    return (
        f"the query is mostly non-tonal (tonality {value:.1f}, below {LOW_TONALITY:.1f}: drums, "
        "noise or effects), where altered copies are missed more often; treat "
        "'no probable copy' as weaker evidence"
    )
