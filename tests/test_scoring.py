"""The score model's correction for a part judged among the many parts of a long query."""

from __future__ import annotations

import numpy as np
import pytest

from tunetrace.scoring import FEATURE_NAMES, ScoreModel

MEASUREMENTS = np.linspace(0.1, 0.8, len(FEATURE_NAMES))


def logit(score: float) -> float:
    return float(np.log(score / (1 - score)))


def test_a_part_loses_the_tail_scale_per_log_of_its_windows() -> None:
    model = ScoreModel(tuple([1.0] * len(FEATURE_NAMES)), -2.0, 0.87, "test", 0.8)
    whole = logit(model.score_measurements(MEASUREMENTS))
    for windows in (1.0, 4.0, 30.0):
        part = logit(model.score_measurements(MEASUREMENTS, windows=windows))
        assert part == pytest.approx(whole - 0.8 * np.log(windows))
    uncorrected = ScoreModel(model.weights, model.bias, model.threshold, "older model")
    assert uncorrected.score_measurements(MEASUREMENTS, windows=30.0) == pytest.approx(
        model.score_measurements(MEASUREMENTS)
    )


def test_the_shipped_model_survives_a_round_trip() -> None:
    shipped = ScoreModel.load()
    assert shipped.tail_scale_logit is not None and shipped.tail_scale_logit > 0
    assert ScoreModel.from_dict(shipped.to_dict()) == shipped
