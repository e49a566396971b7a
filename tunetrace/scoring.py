"""Turn verification measurements into a calibrated score in [0, 1].

The score is a logistic model over the measurements a copy has and a coincidence lacks
(aligned spectral fit, agreement of spectral changes, the pair's own coincidence level,
pitch-corrected chroma fit, coverage, how much the harmony moves inside the match). Its
weights and the verdict threshold are fitted by
``python -m benchmarks.run_benchmark --calibrate`` on a calibration split of real music:
altered copies against hard negatives (other tracks by the same composers, same styles).
They ship with the package in ``calibration.json``; the queries reported in benchmarks are
never part of that split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from tunetrace.types import Verification

FEATURE_NAMES = (
    "spectral_similarity",
    "dynamics_similarity",
    "onset_similarity",
    "null_similarity",
    "local_similarity",
    "chroma_similarity",
    "coverage",
    "harmonic_change",
)
#: Measurements whose rise must never raise the score (coincidence levels).
DECREASING = frozenset({"null_similarity", "local_similarity"})


def measurement_vector(verification: Verification) -> np.ndarray:
    """The verification's measurements in :data:`FEATURE_NAMES` order."""
    return np.array([getattr(verification, name) for name in FEATURE_NAMES], dtype=np.float64)


@dataclass(frozen=True)
class ScoreModel:
    """Logistic score model with its verdict threshold.

    Attributes
    ----------
    weights : tuple of float
        One weight per entry of :data:`FEATURE_NAMES`.
    bias : float
    threshold : float
        Default minimum score of a reported match.
    provenance : str
        How and on what the model was fitted.
    tail_scale_logit : float or None
        Mean excess (log-odds) of the exponential tail fitted to the calibration queries' best
        coincidence scores: how fast the chance of a coincidence falls as the score rises.
        A part of a long query judged alone had ``n`` such chances, one per window; its
        log-odds are lowered by ``tail_scale_logit * log(n)`` (see :meth:`score_section`).
        ``None`` (a model fitted before sections were judged alone): no correction.
    """

    weights: tuple[float, ...]
    bias: float
    threshold: float
    provenance: str = ""
    tail_scale_logit: float | None = None

    def score(self, verification: Verification) -> float:
        """Probability-like score of one verification."""
        return self.score_measurements(measurement_vector(verification))

    def score_measurements(
        self, measurements: np.ndarray | list[float], *, windows: float = 1.0
    ) -> float:
        """Score of measurements given in :data:`FEATURE_NAMES` order (``windows``: see
        :meth:`score_section`)."""
        z = float(np.dot(self.weights, measurements) + self.bias)
        if self.tail_scale_logit is not None and windows > 1.0:
            z -= self.tail_scale_logit * float(np.log(windows))
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))

    def score_section(self, verification: Verification, *, windows: float) -> float:
        """Score of a verification of one part of a query, chosen among ``windows`` parts.

        The best-fitting of ``n`` windows of honest music reaches a given coincidence level
        about ``n`` times as often as one window does. With the exponential tail the
        calibration fitted (:attr:`tail_scale_logit`), the chance of exceeding log-odds ``z``
        falls as ``exp(-z / scale)``, so lowering ``z`` by ``scale * log(n)`` gives a long
        query the chance of a false match that one window has.

        Parameters
        ----------
        verification : Verification
        windows : float
            Query duration over the verified part's duration (at least 1).
        """
        return self.score_measurements(measurement_vector(verification), windows=windows)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "features": list(FEATURE_NAMES),
            "weights": list(self.weights),
            "bias": self.bias,
            "threshold": self.threshold,
            "provenance": self.provenance,
            "tail_scale_logit": self.tail_scale_logit,
        }

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ScoreModel:
        """Inverse of :meth:`to_dict` (checks the feature list)."""
        if tuple(values["features"]) != FEATURE_NAMES:  # type: ignore[arg-type]
            raise ValueError(f"score model features {values['features']} != {FEATURE_NAMES}")
        return cls(
            weights=tuple(float(w) for w in values["weights"]),  # type: ignore[union-attr]
            bias=float(values["bias"]),  # type: ignore[arg-type]
            threshold=float(values["threshold"]),  # type: ignore[arg-type]
            provenance=str(values.get("provenance", "")),
            tail_scale_logit=None
            if values.get("tail_scale_logit") is None
            else float(values["tail_scale_logit"]),  # type: ignore[arg-type]
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> ScoreModel:
        """Load a model file; by default the one shipped with the package."""
        if path is None:
            text = resources.files("tunetrace").joinpath("calibration.json").read_text()
        else:
            text = Path(path).read_text()
        return cls.from_dict(json.loads(text))
