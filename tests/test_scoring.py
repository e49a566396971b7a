"""The score model's correction for a part judged among the many parts of a long query."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.run_benchmark import TARGET_FALSE_POSITIVE_RATE, tail_quantile
from benchmarks.window_penalty import best_coincidences, fit_penalty
from tunetrace.scoring import FEATURE_NAMES, ScoreModel

MEASUREMENTS = np.linspace(0.1, 0.8, len(FEATURE_NAMES))


def model(**extra: float | None) -> ScoreModel:
    return ScoreModel(tuple([1.0] * len(FEATURE_NAMES)), -2.0, 0.87, "test", **extra)


def logit(score: float) -> float:
    return float(np.log(score / (1 - score)))


def test_a_part_loses_the_fitted_penalty_per_log_of_its_windows() -> None:
    plain = logit(model().score_measurements(MEASUREMENTS))
    tail_only = model(tail_scale_logit=0.8)
    fitted = model(tail_scale_logit=0.8, window_penalty_logit=0.3)
    for windows in (1.0, 4.0, 30.0):
        expected_tail = plain - 0.8 * np.log(windows)
        expected_fitted = plain - 0.3 * np.log(windows)
        assert logit(tail_only.score_measurements(MEASUREMENTS, windows=windows)) == pytest.approx(
            expected_tail
        )
        assert logit(fitted.score_measurements(MEASUREMENTS, windows=windows)) == pytest.approx(
            expected_fitted
        )
    assert model(tail_scale_logit=0.8, window_penalty_logit=0.0).score_measurements(
        MEASUREMENTS, windows=30.0
    ) == pytest.approx(model().score_measurements(MEASUREMENTS))


def test_the_penalty_survives_a_round_trip_and_older_files_load() -> None:
    fitted = model(tail_scale_logit=0.8, window_penalty_logit=0.25)
    assert ScoreModel.from_dict(fitted.to_dict()) == fitted
    older = fitted.to_dict()
    del older["window_penalty_logit"]
    assert ScoreModel.from_dict(older).window_penalty_logit is None
    assert ScoreModel.from_dict(older).penalty_per_log_window == 0.8


def test_the_fitted_penalty_is_the_smallest_that_keeps_the_tail_under_the_threshold() -> None:
    rng = np.random.default_rng(5)
    # best coincidences that climb with the number of parts an upload offers
    uploads = [
        [(float(z + 0.6 * np.log(n)), float(n))]
        for z, n in zip(rng.normal(-3.0, 0.7, 400), rng.uniform(1, 60, 400), strict=True)
    ]
    threshold = 0.87
    penalty, figures = fit_penalty(uploads, threshold, ceiling=2.0)
    assert 0.0 < penalty < 2.0
    assert figures["tail_quantile_logit"] <= logit(threshold)
    assert figures["tail_quantile_logit_without_penalty"] > logit(threshold)
    smaller, _ = fit_penalty(uploads, 0.999, ceiling=2.0)
    assert smaller < penalty  # a higher threshold needs less of a penalty
    # the grid's step below the fitted penalty would not do
    below = best_coincidences(uploads, penalty - 0.005)
    assert tail_quantile(below, TARGET_FALSE_POSITIVE_RATE) > logit(threshold)
    # uploads that never come near the threshold need none; ones that always do get the ceiling
    calm = [[(z - 10.0, n)] for [(z, n)] in uploads]
    assert fit_penalty(calm, threshold, ceiling=2.0)[0] == 0.0
    wild = [[(z + 30.0, n)] for [(z, n)] in uploads]
    assert fit_penalty(wild, threshold, ceiling=0.5)[0] == 0.5


def test_an_upload_s_best_coincidence_is_its_highest_after_the_penalty() -> None:
    uploads = [[(1.0, 1.0), (2.0, np.e**2)], [], [(-1.0, 1.0)]]
    assert best_coincidences(uploads, 0.0).tolist() == [2.0, -1.0]
    assert best_coincidences(uploads, 1.0).tolist() == [1.0, -1.0]
