"""The alteration-discriminant projection and its packaged noise model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.projection import (
    AlterationNoise,
    discriminant_projection,
    projection_transforms,
)


def _noise(covariance: np.ndarray) -> AlterationNoise:
    return AlterationNoise(covariance, "test", n_pairs=100, n_recordings=10)


def test_projection_prefers_directions_alterations_leave_alone() -> None:
    rng = np.random.default_rng(0)
    # Works differ equally along the first three axes; alterations move the second and third
    # a lot and the first hardly at all, and the fourth axis does not tell works apart.
    sample = rng.normal(size=(5_000, 4)) * np.array([1.0, 1.0, 1.0, 0.05])
    noise = _noise(np.diag([0.01, 1.0, 0.5, 0.01]))
    matrix, bias = discriminant_projection(sample, noise, 2, ridge=0.0)
    assert matrix.shape == (2, 4) and bias.shape == (2,)
    first, second = np.abs(matrix[0]) / np.abs(matrix[0]).sum(), np.abs(matrix[1])
    assert first[0] > 0.95  # the alteration-proof direction comes first
    assert np.argmax(second) == 2  # then the less noisy of the two others
    # the catalogue's mean maps to the origin
    np.testing.assert_allclose(matrix @ sample.mean(axis=0) + bias, 0, atol=1e-5)


def test_faiss_transforms_project_then_normalise() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(3, 5)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    linear, norm = projection_transforms(matrix, bias)
    y = norm.apply(linear.apply(x))
    expected = x @ matrix.T + bias
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_noise_model_is_measured_from_pairs_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    originals = rng.normal(size=(500, 6))
    altered = originals + rng.normal(size=(500, 6)) * np.array([0.1, 0.1, 0.1, 1, 1, 1])
    noise = AlterationNoise.from_pairs(altered, originals, params_digest="abc", n_recordings=9)
    assert noise.n_pairs == 500
    variances = np.diag(noise.covariance)
    assert variances[:3].max() < 0.05 and variances[3:].min() > 0.5
    noise.save(tmp_path / "noise.npz")
    again = AlterationNoise.load(tmp_path / "noise.npz")
    assert (again.params_digest, again.n_pairs, again.n_recordings) == ("abc", 500, 9)
    np.testing.assert_allclose(again.covariance, noise.covariance, rtol=1e-6)
    with pytest.raises(ValueError, match="matched"):
        AlterationNoise.from_pairs(altered[:10], originals, params_digest="abc", n_recordings=1)
    with pytest.raises(ValueError, match="6-dimensional"):
        discriminant_projection(rng.normal(size=(50, 4)), noise, 2)
    with pytest.raises(ValueError, match="between 1 and 6"):
        discriminant_projection(rng.normal(size=(50, 6)), noise, 7)


def test_packaged_noise_model_matches_the_default_fingerprint() -> None:
    # Changing the fingerprint parameters without measuring the model again fails here.
    noise = AlterationNoise.load()
    params = FingerprintParams()
    assert noise.params_digest == params.digest()
    dim = params.embedding_dim
    assert noise.covariance.shape == (dim, dim)
    np.testing.assert_allclose(noise.covariance, noise.covariance.T, atol=1e-6)
    assert np.linalg.eigvalsh(noise.covariance.astype(np.float64)).min() > -1e-6
    assert noise.n_pairs >= 1_000 and noise.n_recordings >= 100
