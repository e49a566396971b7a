"""Matching against a sharded catalogue: scatter the query's fingerprint, gather verified
matches.

The query is decoded and fingerprinted once, here, and its patch vectors are embedded once;
both go to every shard. Each shard searches its own index, votes, aligns and verifies its own
candidates with its own stored spectra (they live together), and returns its verified matches.
The gather keeps the best ``top`` by score.

Scores mean the same on every shard: a verification's score is the calibrated model applied to
evidence about one query and one reference alone (aligned-spectrum similarities against that
pair's own misaligned baseline), never normalised by the other references of a shard or by
its size, and every shard applies the same shipped model and threshold. Each reference lives
in one shard, so a reference's match (its best verification plus its other sections) is made
entirely by that shard, exactly as an unsharded catalogue makes it. What a shard sees
differently is competition in the candidate search: the nearest patches of a smaller index,
and its own top candidates; a copy's reference only gains votes and rank from that.

A shard that cannot answer makes the whole query fail with
:class:`~tunetrace.errors.ShardUnavailableError` (an error line in reports, HTTP 503): never a
silent partial answer.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

import numpy as np

from tunetrace.candidates import query_patch_vectors
from tunetrace.errors import ReferenceNotFoundError
from tunetrace.fingerprint.features import Features
from tunetrace.matcher import Matcher
from tunetrace.report import Match
from tunetrace.shard_access import OpenShard
from tunetrace.sharded_catalogue import ShardedCatalogue, ShardView
from tunetrace.types import Verification

logger = logging.getLogger(__name__)

Patches = tuple[np.ndarray, np.ndarray, np.ndarray]


class ShardedMatcher(Matcher):
    """A :class:`~tunetrace.matcher.Matcher` for a
    :class:`~tunetrace.sharded_catalogue.ShardedCatalogue` (``tunetrace.Matcher`` makes one
    for such a catalogue). Reports are those of an unsharded catalogue holding the same
    references; reference keys in verifications are global (they name their shard)."""

    catalogue: ShardedCatalogue

    def match_features(
        self,
        features: Features,
        *,
        top: int = 5,
        min_score: float | None = None,
        exclude_keys: frozenset[int] = frozenset(),
        patches: Patches | None = None,
    ) -> list[Match]:
        """Probable copies among all shards' references, best first (see
        :meth:`Matcher.match_features`).

        Raises
        ------
        ShardUnavailableError
            If any shard could not answer.
        """
        self.catalogue.refresh()
        view = self.catalogue.view
        if patches is None:
            patches = query_patch_vectors(features, params=view.manifest.params)
        excluded = _excluded_by_shard(view, exclude_keys)
        found = view.access.call_all(
            _shard_matches,
            [(features, patches, top, min_score, excluded[s]) for s in range(len(excluded))],
        )
        merged = [match for matches in found for match in matches]
        merged.sort(key=lambda match: (-match.score, match.reference_id))
        return merged[:top]

    def verify(
        self,
        features: Features,
        *,
        exclude_keys: frozenset[int] = frozenset(),
        timings: dict[str, float] | None = None,
        reference_key: int | None = None,
        patches: Patches | None = None,
    ) -> list[Verification]:
        """Every shard's verifications of a query, best first, with global reference keys
        (see :meth:`Matcher.verify`; ``timings`` are not collected across shards).

        Raises
        ------
        ShardUnavailableError
            If any shard could not answer.
        """
        self.catalogue.refresh()
        view = self.catalogue.view
        if patches is None:
            patches = query_patch_vectors(features, params=view.manifest.params)
        if reference_key is not None:
            shard, local = view.split_key(reference_key)
            found = view.access.call(
                shard, _shard_verifications, features, patches, frozenset(), local
            )
            return [_globally(view, shard, v) for v in found]
        excluded = _excluded_by_shard(view, exclude_keys)
        per_shard = view.access.call_all(
            _shard_verifications,
            [(features, patches, excluded[s], None) for s in range(len(excluded))],
        )
        merged = [_globally(view, s, v) for s, found in enumerate(per_shard) for v in found]
        merged.sort(key=lambda v: -v.score)
        return merged


def _globally(view: ShardView, shard: int, verification: Verification) -> Verification:
    return replace(verification, reference_key=view.global_key(shard, verification.reference_key))


def _excluded_by_shard(view: ShardView, exclude_keys: frozenset[int]) -> list[frozenset[int]]:
    """Global keys to leave out, as each shard's own keys."""
    excluded: list[set[int]] = [set() for _ in range(view.manifest.count)]
    for key in exclude_keys:
        with contextlib.suppress(ReferenceNotFoundError):  # nothing to leave out
            shard, local = view.split_key(key)
            excluded[shard].add(local)
    return [frozenset(keys) for keys in excluded]


# Functions run where a shard is open (in this process or on a Dask worker).


def _shard_matches(
    shard: OpenShard,
    features: Features,
    patches: Patches,
    top: int,
    min_score: float | None,
    exclude_keys: frozenset[int],
) -> list[Match]:
    return shard.matcher.match_features(
        features, top=top, min_score=min_score, exclude_keys=exclude_keys, patches=patches
    )


def _shard_verifications(
    shard: OpenShard,
    features: Features,
    patches: Patches,
    exclude_keys: frozenset[int],
    reference_key: int | None,
) -> list[Verification]:
    return shard.matcher.verify(
        features, exclude_keys=exclude_keys, reference_key=reference_key, patches=patches
    )
