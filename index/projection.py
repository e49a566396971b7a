"""Alteration-discriminant projection of patch vectors, for compressed (IVF-PQ) indexes.

Product quantisation spends the same bytes on every direction of a vector, whether or not it
tells works apart. This projection keeps the directions in which different patches of the
catalogue differ most *relative to* how much an alteration moves a patch: the leading
solutions of the generalised eigenproblem ``between @ v = lambda * noise @ v`` (linear
discriminant analysis with each original/altered pair as a class), where

- ``between`` is the covariance of the catalogue's own patch vectors (what varies between
  works), computed when the index is trained, and
- ``noise`` is the covariance of the difference between a reference patch and the same
  patch of an altered copy (time-stretched, pitch-shifted, re-encoded, noisy), measured once
  on altered recordings and shipped with the package (:data:`NOISE_FILE`).

The projected vectors are L2-normalised again, so that inner products stay cosine
similarities. Scaling each kept direction by its alteration noise also whitens it: the
quantiser's error then lands where alterations already blur the vectors.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import scipy.linalg

logger = logging.getLogger(__name__)

#: The packaged alteration-noise model (see ``benchmarks/alteration_noise.py`` for how it is
#: measured).
NOISE_FILE = Path(__file__).with_name("alteration_noise.npz")
#: Ridge added to the noise covariance, as a fraction of its mean variance: keeps directions
#: the measured pairs barely explore from looking noise-free.
NOISE_RIDGE = 0.1


@dataclass(frozen=True)
class AlterationNoise:
    """How altering a recording moves its patch vectors.

    Attributes
    ----------
    covariance : np.ndarray [shape=(dim, dim)]
        Covariance of ``altered - original`` over matched patch pairs.
    params_digest : str
        Digest of the fingerprint parameters the vectors were made with.
    n_pairs : int
        Patch pairs it was measured on.
    n_recordings : int
        Altered recordings those pairs came from.
    """

    covariance: np.ndarray
    params_digest: str
    n_pairs: int
    n_recordings: int

    @classmethod
    def from_pairs(
        cls, altered: np.ndarray, originals: np.ndarray, *, params_digest: str, n_recordings: int
    ) -> AlterationNoise:
        """Measure the noise model from matched patch vectors (row ``i`` of each is a pair).

        Parameters
        ----------
        altered, originals : np.ndarray [shape=(n_pairs, dim)]
        params_digest : str
        n_recordings : int

        Returns
        -------
        noise : AlterationNoise
        """
        if altered.shape != originals.shape or altered.ndim != 2:
            raise ValueError("altered and original vectors must be matched (n_pairs, dim) arrays")
        difference = altered.astype(np.float64) - originals.astype(np.float64)
        covariance = difference.T @ difference / max(len(difference), 1)
        return cls(covariance, params_digest, len(difference), n_recordings)

    @classmethod
    def load(cls, path: Path = NOISE_FILE) -> AlterationNoise:
        """Read a model written by :meth:`save`."""
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                data["covariance"].astype(np.float64),
                meta["params_digest"],
                int(meta["n_pairs"]),
                int(meta["n_recordings"]),
            )

    def save(self, path: Path = NOISE_FILE) -> None:
        """Write the model (float32 covariance and its provenance)."""
        meta = {
            "params_digest": self.params_digest,
            "n_pairs": self.n_pairs,
            "n_recordings": self.n_recordings,
        }
        with open(path, "wb") as handle:
            np.savez_compressed(
                handle, covariance=self.covariance.astype(np.float32), meta=json.dumps(meta)
            )


@functools.cache
def packaged_noise() -> AlterationNoise:
    """The noise model shipped with the package (:data:`NOISE_FILE`), read once per process."""
    return AlterationNoise.load(NOISE_FILE)


def discriminant_projection(
    sample: np.ndarray, noise: AlterationNoise, dims: int, *, ridge: float = NOISE_RIDGE
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``x -> matrix @ x + bias`` onto the ``dims`` most discriminant directions.

    Parameters
    ----------
    sample : np.ndarray [shape=(n, dim)]
        Patch vectors of the catalogue (a random sample is enough).
    noise : AlterationNoise
    dims : int
        Output dimensions, at most ``dim``.
    ridge : float
        See :data:`NOISE_RIDGE`.

    Returns
    -------
    matrix : np.ndarray [shape=(dims, dim), dtype=float32]
    bias : np.ndarray [shape=(dims,), dtype=float32]
        ``-matrix @ mean``: the catalogue's mean vector maps to the origin.
    """
    dim = sample.shape[1]
    if noise.covariance.shape != (dim, dim):
        raise ValueError(
            f"the alteration-noise model is for {len(noise.covariance)}-dimensional vectors, "
            f"not {dim}"
        )
    if not 1 <= dims <= dim:
        raise ValueError(f"projection dimensions must be between 1 and {dim}")
    sample = sample.astype(np.float64)
    mean = sample.mean(axis=0)
    centred = sample - mean
    between = centred.T @ centred / max(len(sample) - 1, 1)
    noise_cov = noise.covariance + ridge * np.trace(noise.covariance) / dim * np.eye(dim)
    values, vectors = scipy.linalg.eigh(between, noise_cov, subset_by_index=(dim - dims, dim - 1))
    order = np.argsort(values)[::-1]
    matrix = vectors[:, order].T
    logger.info(
        "discriminant projection to %d dimensions: between/noise variance %.2f down to %.2f",
        dims, values[order[0]], values[order[-1]],
    )  # fmt: skip
    return matrix.astype(np.float32), (-matrix @ mean).astype(np.float32)


def projection_transforms(matrix: np.ndarray, bias: np.ndarray) -> list[faiss.VectorTransform]:
    """FAISS transforms applying the projection, then L2 normalisation, in that order."""
    dims, dim = matrix.shape
    linear = faiss.LinearTransform(dim, dims, True)
    faiss.copy_array_to_vector(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), linear.A)
    faiss.copy_array_to_vector(np.ascontiguousarray(bias, dtype=np.float32), linear.b)
    linear.is_trained = True
    return [linear, faiss.NormalizationTransform(dims, 2.0)]
