"""One index training for several catalogues: the shards of a sharded catalogue.

An inverted-list index's lists (IVF centroids) and codes (PQ codebooks, projection) come from
training on the vectors it will hold. Shards that each trained on their own vectors would
have different lists: a query probing ``nprobe`` lists of each reads other neighbours than
one index of all the references would, and the sharded catalogue's candidates, and so some of
its reports, would differ from one catalogue's. Trained once, on the sample one catalogue
holding every shard's vectors would draw (:func:`~tunetrace.index.training_sample.
sample_positions` over every shard's content keys), and given to every shard, the shards'
indexes are pieces of that one index: the same lists are probed in each, the same codes
score each vector, and the nearest patches merged over the shards are the whole index's.

The sample is drawn in two passes over the shards (their content keys, then the chosen rows),
so the vectors are never all in memory at once; the caller keeps writers out in between (a
sharded catalogue's writer lock), and a shard whose generation changed anyway makes the
training fail rather than train on rows other than those chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.training_sample import sample_positions
from tunetrace.index.vector_index import IndexSpec, VectorIndex, training_count

logger = logging.getLogger(__name__)


def train_shared(
    catalogues: Sequence[Catalogue], spec: IndexSpec, *, seed: int = 0
) -> VectorIndex | None:
    """An empty index of ``spec``'s kind trained for all of ``catalogues`` together, as one
    catalogue holding all their vectors would train it (``nlist=0`` and ``auto`` decided by
    their total).

    Parameters
    ----------
    catalogues : sequence of Catalogue
        With the same fingerprint parameters (a sharded catalogue's shards).
    spec : IndexSpec
    seed : int
        Picks another training sample (as for one catalogue).

    Returns
    -------
    trained : VectorIndex or None
        ``None`` when the kind, decided for the total, needs no training (flat, HNSW), and
        when the catalogues hold no vectors.

    Raises
    ------
    ValueError
        If the catalogues have different fingerprint parameters, or the kind cannot be made
        for them (too few vectors to train; a projection that does not fit).
    CatalogueError
        If a catalogue changed while the sample was drawn.
    """
    if not catalogues:
        return None
    params = {catalogue.params.digest() for catalogue in catalogues}
    if len(params) > 1:
        raise ValueError("catalogues with different fingerprint parameters cannot share an index")
    # the kind decided from the frame counts first: no vectors are derived for one that
    # needs no training, or for no vectors at all
    counted = sum(catalogue.vector_count() for catalogue in catalogues)
    if counted == 0 or not spec.resolved(counted).needs_training:
        return None
    read = [catalogue.training_keys(seed) for catalogue in catalogues]
    counts = [len(keys) for keys, _ in read]
    total = sum(counts)  # without damaged rows, which no index holds
    resolved = spec.resolved(total)
    catalogues[0].check_index_spec(resolved, total)
    if not resolved.needs_training:
        return None
    positions = sample_positions(
        np.concatenate([keys for keys, _ in read]), training_count(resolved, total)
    )
    generations = [generation for _, generation in read]
    del read
    starts = np.cumsum([0, *counts])
    owner = np.searchsorted(starts, positions, side="right") - 1
    sample = np.empty((len(positions), catalogues[0].params.embedding_dim), dtype=np.float32)
    for number, catalogue in enumerate(catalogues):
        mine = np.flatnonzero(owner == number)
        if len(mine):
            local = positions[mine] - starts[number]
            sample[mine] = catalogue.vectors_at(local, generations[number])
    trained = VectorIndex.trained(catalogues[0].params.embedding_dim, resolved, sample)
    logger.info(
        "trained one %s index (%d lists) for %d catalogues on %d of their %d vectors",
        resolved.kind, resolved.nlist, len(catalogues), len(sample), total,
    )  # fmt: skip
    return trained
