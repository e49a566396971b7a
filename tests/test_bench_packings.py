"""The packing comparison benchmark: every packing gives the codes back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import packings


@pytest.fixture(scope="module")
def spectra_codes() -> list[np.ndarray]:
    """5-bit codes with a spectrum's runs and jumps, of lengths off the tile size."""
    rng = np.random.default_rng(3)
    out = []
    for frames in (1, 99, 257):
        walk = np.cumsum(rng.integers(-2, 3, size=(216, frames)), axis=1)
        out.append(np.clip(walk + rng.integers(0, 32, size=(216, 1)), 0, 31).astype(np.uint8))
    return out


def test_every_packing_gives_the_codes_back(spectra_codes: list[np.ndarray]) -> None:
    for packing in packings.packings():
        figures = packings.measure(packing, spectra_codes, frame_rate_hz=10.0)
        assert figures["mb_per_hour"] > 0, packing.name
        assert figures["decode_ms_per_minute"] > 0, packing.name


def test_differences_are_undone_modulo_256() -> None:
    codes = np.array([[0, 31, 2], [255, 0, 7]], dtype=np.uint8)
    assert np.array_equal(packings.undo_time_differences(packings.time_differences(codes)), codes)
    assert np.array_equal(
        packings.undo_planar_differences(packings.planar_differences(codes)), codes
    )


def test_a_packing_that_loses_codes_is_caught(spectra_codes: list[np.ndarray]) -> None:
    lossy = packings.Packing(
        "drops the top code", lambda c: np.minimum(c, 30).tobytes(),
        lambda b, s: np.frombuffer(b, dtype=np.uint8).reshape(s),
    )  # fmt: skip
    with pytest.raises(AssertionError, match="did not give the codes back"):
        packings.measure(lossy, spectra_codes, frame_rate_hz=10.0)
