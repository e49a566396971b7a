"""Fit the packaged grid that full-vector index files store patch vectors on.

python -m benchmarks.vector_grid

Reads the patch vectors of the core benchmark's catalogue (real music, the reference tracks
only; building it first if needed), fits :class:`~tunetrace.index.compact_vectors.VectorGrid`
to their range with a margin, writes ``index/vector_grid.npz`` and reports how the grid's
steps compare with the alteration noise of the packaged noise model, and how many values of
the vectors fall outside it.
"""

from __future__ import annotations

import logging

import numpy as np
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.compact_vectors import GRID_FILE, VectorGrid
from tunetrace.index.projection import packaged_noise

from benchmarks import corpus
from benchmarks.run_benchmark import build_catalogue, list_tracks

logger = logging.getLogger(__name__)


def main() -> None:
    """Command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    directory, _ = build_catalogue(corpus.installed_or_exit(list_tracks()))
    with Catalogue(directory, read_only=True) as catalogue:
        vectors, _ = catalogue._all_vectors()
        digest = catalogue.params.digest()
    grid = VectorGrid.fit(vectors, params_digest=digest)
    grid.save(GRID_FILE)
    noise_sd = np.sqrt(np.diag(packaged_noise().covariance))
    ratio = grid.step / noise_sd
    error = np.abs(grid.rounded(vectors) - vectors).max()
    logger.info(
        "grid of %d dimensions fitted on %d vectors, written to %s: steps %.1f-%.1f%% of the "
        "alteration noise's standard deviation (median %.1f%%), largest rounding error %.4f",
        grid.dim, len(vectors), GRID_FILE, 100 * ratio.min(), 100 * ratio.max(),
        100 * np.median(ratio), error,
    )  # fmt: skip


if __name__ == "__main__":
    main()
