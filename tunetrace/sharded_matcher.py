"""Matching against a sharded catalogue: scatter the query's fingerprint, gather verified
matches.

The query is decoded and fingerprinted once, here, and its patch vectors are embedded once.
Two to four rounds; each shard does the work on its own references (its
vectors and spectra live together) and every choice between references is made here, as one
catalogue makes it:

1. the patch vectors go to every shard, which returns each one's ``k`` nearest patches in its
   own index (a few kilobytes); merged, these are the nearest patches one catalogue holding
   every shard would return (:func:`merge_neighbours`), and the vote over them chooses the
   candidate places as one catalogue's vote does (the same vote floor and candidate count);
2. each shard holding candidates aligns them on chroma and screens them on spectra, and
   returns the small :class:`~tunetrace.places.Place` records;
3. the best ``verify_top`` screened places of all shards (:mod:`tunetrace.places`) are
   verified in full by their shards, each of which then looks for repeats of its works found
   in its own references and makes its matches. The shard holding the best-voted candidate,
   when it holds at least half of the candidates, does this for its own best places in
   round 2 already; when those are the chosen places (always with one shard, and when a
   copy's places outscreen every other shard's), this round is not needed;
4. only if further places are chosen from all shards' verifications (a medley's other works,
   other sections of the works found: :meth:`~tunetrace.matcher.Matcher.more_places`;
   rare in short queries), the shards holding them verify them and finish again.

Verification, the costly part, runs about as often as in one catalogue, not once per shard, and a
shard without candidates does none. With exact indexes a sharded catalogue's reports are one
catalogue's (ties of equal scores aside), and with IVF indexes too when the shards share one
training (:mod:`tunetrace.index.shared_training`: what ``index build`` and ``shards init``
make), as every shard then probes the same lists of the one index; with HNSW graphs, or IVF
shards trained apart, each shard ranks its nearest patches its own way, so the candidates can
differ.

Scores mean the same on every shard: a verification's score is the calibrated model applied to
evidence about one query and one reference alone (aligned-spectrum similarities against that
pair's own misaligned baseline), never normalised by the other references of a shard or by
its size, and every shard applies the same shipped model and threshold. Each reference lives
in one shard, so a reference's match (its verifications, its repeats, its grown segments) is
made by that shard alone.

A shard that cannot answer makes the whole query fail with
:class:`~tunetrace.errors.ShardUnavailableError` (an error line in reports, HTTP 503): never a
silent partial answer. Every shard's answer also carries the ids of its references known to
have damaged rows, so a sharded report names them as one catalogue's does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tunetrace.candidates import find_candidates
from tunetrace.errors import ShardUnavailableError
from tunetrace.fingerprint.features import Features
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.ids import PATCH_BITS, split_vector_ids
from tunetrace.index.joined_lists import JoinedListsCache, joinable
from tunetrace.index.vector_index import (
    IndexSpec,
    LayeredIndex,
    ListAssignment,
    VectorIndex,
    best_of,
)
from tunetrace.matcher import Matcher, MatchSettings, one_ratio_each
from tunetrace.places import Place, places_to_screen, verification_order
from tunetrace.query import VerifySettings
from tunetrace.query_work import QueryWork
from tunetrace.report import Match
from tunetrace.scoring import ScoreModel
from tunetrace.shard_access import OpenShard, together
from tunetrace.shard_hosts import Outcome
from tunetrace.sharded_catalogue import ShardedCatalogue, ShardView
from tunetrace.types import Candidate, Verification

logger = logging.getLogger(__name__)

Patches = tuple[np.ndarray, np.ndarray, np.ndarray]
#: Bits a reference key can take in a vector id (the rest of a non-negative int64 after the
#: patch number); a shard's number goes above them in :func:`merge_neighbours`.
KEY_BITS = 63 - PATCH_BITS
KEY_MASK = (1 << KEY_BITS) - 1
#: A matcher's settings, verification settings and score model, sent to the shards.
Configuration = tuple[MatchSettings, VerifySettings, ScoreModel]


class ShardedMatcher(Matcher):
    """A :class:`~tunetrace.matcher.Matcher` for a
    :class:`~tunetrace.sharded_catalogue.ShardedCatalogue` (``tunetrace.Matcher`` makes one
    for such a catalogue). The vote runs once over all shards' nearest patches, so the
    candidates are those an unsharded catalogue holding the same references would choose (for
    exact indexes); each shard aligns, screens and verifies its own share of them with this
    matcher's settings and score model, and the places verified are chosen among all shards'
    as one catalogue chooses them (see the module's description). Reference keys in
    verifications are global (they name their shard)."""

    catalogue: ShardedCatalogue

    def __init__(
        self,
        catalogue: ShardedCatalogue,
        *,
        score_model: ScoreModel | None = None,
        settings: MatchSettings | None = None,
        verify_settings: VerifySettings | None = None,
    ) -> None:
        # what each shard last said of its damaged rows, for one generation of the shards
        self._shards_damaged: dict[int, tuple[str, ...]] = {}
        self._damaged_generation: int | None = None
        self._shards_damaged_lock = threading.Lock()
        # the shards' shared index training, fetched for a generation of the shards, with
        # the lists digest shard 0's index had then (fetched again when it changes)
        self._training: tuple[int, str | None, VectorIndex | None] | None = None
        self._training_lock = threading.Lock()
        super().__init__(
            catalogue,  # type: ignore[arg-type]
            score_model=score_model, settings=settings, verify_settings=verify_settings,
        )  # fmt: skip

    def damaged_references(self) -> tuple[str, ...]:
        """Ids of references with damaged stored rows, as the shards said in their latest
        answers to this matcher (each shard's recorded ones and those its matchers found);
        empty before the first query.

        Returns
        -------
        ids : tuple of str
            Sorted.
        """
        with self._shards_damaged_lock:
            known = {i for ids in self._shards_damaged.values() for i in ids}
        return tuple(sorted(known))

    def _note_damaged(self, view: ShardView, shard: int, ids: tuple[str, ...]) -> None:
        """Keep what ``shard`` of ``view`` last said of its damaged rows. A reshard's new
        shards replace every earlier answer; a late answer from shards a reshard has since
        replaced (a query that began before it) is dropped."""
        generation = view.manifest.generation
        with self._shards_damaged_lock:
            if self._damaged_generation is not None and generation < self._damaged_generation:
                return
            if self._damaged_generation != generation:
                self._shards_damaged = {}
                self._damaged_generation = generation
            self._shards_damaged[shard] = ids

    def _answers(
        self, view: ShardView, answered: dict[int, object], form: type | None = None
    ) -> dict[int, Any]:
        """Shards' answers without the damaged ids each carried (noted on the way); with
        ``form``, each answer must be one.

        Raises
        ------
        ShardUnavailableError
            If a shard answered in another form (a worker running another tunetrace).
        """
        answers = {}
        for shard, answer in answered.items():
            if not (
                isinstance(answer, tuple)
                and len(answer) == 2
                and isinstance(answer[1], tuple)
                and all(isinstance(i, str) for i in answer[1])
                and (form is None or isinstance(answer[0], form))
            ):
                raise ShardUnavailableError(
                    f"shard {shard} answered in a form this tunetrace does not know: the Dask "
                    "workers must run the same tunetrace version as the client"
                )
            self._note_damaged(view, shard, answer[1])
            answers[shard] = answer[0]
        return answers

    @property
    def _configuration(self) -> Configuration:
        """What a shard's matcher needs to verify and score as this one would."""
        return (self.settings, self.verify_settings, self.score_model)

    def candidates(self, *args: object, **kwargs: object) -> list[Candidate]:
        """Not offered: a sharded catalogue's candidates are chosen from all shards' nearest
        patches inside :meth:`match_features` and :meth:`verify`."""
        raise TypeError("a sharded catalogue has no single index to search; use match_features")

    def match_features(
        self,
        features: Features,
        *,
        top: int = 5,
        min_score: float | None = None,
        exclude_keys: frozenset[int] = frozenset(),
        patches: Patches | None = None,
        candidates: list[Candidate] | None = None,
    ) -> list[Match]:
        """Probable copies among all shards' references, best first (see
        :meth:`Matcher.match_features`; ``candidates`` is not taken: they are chosen from all
        shards' nearest patches).

        Raises
        ------
        ShardUnavailableError
            If any shard could not answer.
        TypeError
            If ``candidates`` is given.
        """
        _refuse_candidates(candidates)
        _, found = self._scattered(features, exclude_keys, patches, (top, min_score))
        if any(matches is None for _, matches in found.values()):  # never a partial answer
            raise ShardUnavailableError("a shard answered without the matches it was asked for")
        merged = [match for _, matches in found.values() for match in matches or []]
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
        candidates: list[Candidate] | None = None,
    ) -> list[Verification]:
        """Every shard's verifications of a query, best first, with global reference keys
        (see :meth:`Matcher.verify`; ``timings`` and ``candidates`` are not taken).

        Raises
        ------
        ShardUnavailableError
            If any shard could not answer.
        TypeError
            If ``candidates`` is given.
        """
        _refuse_candidates(candidates)
        if reference_key is not None:
            self.catalogue.refresh()
            view = self.catalogue.view
            if patches is None:
                patches = self.query_patches(features, view.manifest.params)
            shard, local = view.split_key(reference_key)
            answer = view.access.call(
                shard, _shard_verifications, features, patches, local, self._configuration
            )
            found = self._answers(view, {shard: answer})[shard]
            return [_globally(view, shard, v) for v in found]
        view, found = self._scattered(features, exclude_keys, patches, None)
        merged = [_globally(view, s, v) for s, (verified, _) in found.items() for v in verified]
        merged.sort(key=lambda v: -v.score)
        return merged

    def _scattered(
        self,
        features: Features,
        exclude_keys: frozenset[int],
        patches: Patches | None,
        reported: tuple[int, float | None] | None,
    ) -> tuple[ShardView, dict[int, Finished]]:
        """The query verified as one catalogue verifies it, each shard doing the work on its
        own references and the choices between references made here
        (:mod:`tunetrace.places`). Rounds: the vote over all shards' nearest patches
        (:meth:`_chosen_candidates`); the candidates aligned and screened by their shards;
        the best ``verify_top`` screened places of all shards verified by theirs, each of
        which also looks for repeats of its works found and, when ``reported`` (``top``,
        ``min_score``) is given, makes its matches, as if nothing further were verified (the
        shard holding the best-voted candidate, if it holds at least half of them, does this
        for its own best places while it screens: when those are the chosen ones, that round
        is saved).
        Further places (a medley's other works, other sections of works found: chosen here,
        from every shard's verifications) are rare in short queries; only when there are
        any, a last round has each shard holding some verify them and finish again from all
        its verifications. Returns each answering shard's verifications (its own keys) and
        matches."""
        view, patches, by_shard = self._chosen_candidates(features, exclude_keys, patches)
        configuration = self._configuration
        # The shard holding the best-voted candidate verifies its own best places ahead when
        # it holds at least half of the candidates: when they are the catalogue's (one shard,
        # or a copy's places outscreening all others), the round that verifies the chosen
        # places is not needed. Where candidates spread over many shards, its own best are
        # seldom the chosen ones, and verifying them ahead only delays its worker's answer.
        # (Work done ahead and not used can still find a damaged row, as any read does.)
        lead = next((s for s, ranked in by_shard.items() if ranked[0][0] == 0), None)
        if lead is not None and 2 * len(by_shard[lead]) < sum(map(len, by_shard.values())):
            lead = None
        answered = self._answers(view, view.access.call_many(_shard_places, {
            shard: (features, [c for _, c in ranked], [r for r, _ in ranked],
                    (patches, reported) if shard == lead else None, configuration)
            for shard, ranked in by_shard.items()
        }))  # fmt: skip
        aligned = {shard: places for shard, (places, _) in answered.items()}
        shard_of_rank = {place.rank: shard for shard, places in aligned.items() for place in places}
        # the places of all shards, with global keys, chosen among as one catalogue does
        every = [place.with_key(view.global_key(shard, place.reference_key))
                 for shard, places in aligned.items() for place in places]  # fmt: skip
        selected = places_to_screen(every, self.settings.screen_top)
        screened = verification_order([p for p in selected if p.screening is not None])
        chosen = screened[: self.settings.verify_top]
        ahead = answered[lead][1] if lead is not None else None
        if ahead is not None and ahead[0] == [place.rank for place in chosen]:
            verified = {lead: ahead[1]}
        else:
            verified = self._answers(view, view.access.call_many(_shard_verified, {
                shard: (features, patches, places, reported, configuration)
                for shard, places in _by_shard(view, chosen, shard_of_rank).items()
            }))  # fmt: skip
        verifications = [_globally(view, s, v) for s, (found, _) in verified.items() for v in found]
        verifications.sort(key=lambda v: -v.score)
        extra = _by_shard(
            view, self.more_places(screened, chosen, verifications), shard_of_rank
        )
        finished = {shard: answer for shard, (_, answer) in verified.items()}
        if extra:  # those shards finish again, from all their verifications
            finished |= self._answers(view, view.access.call_many(_shard_finished, {
                shard: (features, patches, places, verified[shard][0] if shard in verified else [],
                        reported, configuration)
                for shard, places in sorted(extra.items())
            }))  # fmt: skip
        return view, finished

    def _chosen_candidates(
        self, features: Features, exclude_keys: frozenset[int], patches: Patches | None
    ) -> tuple[ShardView, Patches, dict[int, list[tuple[int, Candidate]]]]:
        """First round: every shard's nearest patches to the query's; then the candidate
        places the vote over all of them chooses (:func:`merge_neighbours`), one per tempo
        ratio tried (:func:`~tunetrace.matcher.one_ratio_each`), by shard, each with its
        rank among all and its shard's own key."""
        self.catalogue.refresh()
        view = self.catalogue.view
        params = view.manifest.params
        if patches is None:
            patches = self.query_patches(features, params)
        k = self.settings.n_neighbours
        effort = self.search_effort(features)
        shards = range(view.manifest.count)
        # probing as one index of the whole would, or each shard as fully as its own
        probed_as = view.manifest.count if self.settings.shard_probe_share else 1
        # the lists to probe chosen once, here, when the shards share one training
        training = self._shared_training(view)
        assignment = None if training is None else training.assign(patches[0], effort=effort)
        asked = dict.fromkeys(shards, (patches[0], k, effort, probed_as, assignment))
        found = self._answers(
            view, view.access.call_many(_shard_neighbours, asked), form=Neighbours
        )
        self._note_lists(view, found[0].lists_digest)
        merged = merge_neighbours([found[s].found for s in shards], k)
        places = _places_of(view, exclude_keys)
        excluded = frozenset(merged.key_of[p] for p in places if p in merged.key_of)
        candidates = find_candidates(
            features,
            merged,
            params=params,
            n_neighbours=k,
            max_candidates=self.candidate_count(features),
            min_vote_ratio=self.settings.min_vote_ratio,
            other_rates=self.settings.other_tempo_ratios,
            per_reference=self.settings.places_per_reference,
            exclude_keys=excluded,
            patches=patches,
        )
        retimed = one_ratio_each(candidates, self.settings.retimed_candidates)
        by_shard: dict[int, list[tuple[int, Candidate]]] = {}
        for rank, candidate in enumerate(retimed):
            shard, local = merged.places[candidate.reference_key]
            by_shard.setdefault(shard, []).append((rank, replace(candidate, reference_key=local)))
        return view, patches, by_shard

    def _shared_training(self, view: ShardView) -> VectorIndex | None:
        """The training every shard's index is built on, if they share one: fetched from
        shard 0 for a generation of the shards, and again once shard 0 answers with another
        lists digest than it had then (an index built again); ``None`` when they share none
        (flat or graph indexes, shards trained apart, an unreadable training), and each
        shard then chooses its own lists."""
        generation = view.manifest.generation
        with self._training_lock:
            if self._training is not None and self._training[0] == generation:
                return self._training[2]
        answer = self._answers(view, {0: view.access.call(0, _shard_training)})[0]
        if not (isinstance(answer, tuple) and len(answer) == 2):
            raise ShardUnavailableError("shard 0 answered in a form this tunetrace does not know")
        digest, payload = answer
        training = None
        if payload is not None:
            try:
                described, data = payload
                training = VectorIndex.from_training_bytes(
                    view.manifest.params.embedding_dim, IndexSpec.from_dict(described), data
                )
            except (ValueError, TypeError) as exc:
                logger.warning("the shards' index training cannot be read (%s): each shard "
                               "chooses its own lists", exc)  # fmt: skip
        with self._training_lock:
            self._training = (generation, digest, training)
        return training

    def _note_lists(self, view: ShardView, digest: str | None) -> None:
        """Shard 0's lists digest as it just answered: if its index was built again since
        the training was fetched, fetch it again before the next query."""
        with self._training_lock:
            held = self._training
            if held is not None and held[0] == view.manifest.generation and held[1] != digest:
                self._training = None


def _refuse_candidates(candidates: list[Candidate] | None) -> None:
    """A sharded catalogue chooses its candidates from all shards' nearest patches: given
    ones (with one catalogue's keys) would mean nothing here."""
    if candidates is not None:
        raise TypeError(
            "a sharded catalogue chooses its own candidates; 'candidates' cannot be given"
        )


def _by_shard(
    view: ShardView, places: list[Place], shard_of_rank: dict[int, int]
) -> dict[int, list[Place]]:
    """Places (global keys) grouped by the shard that aligned them, with its own keys, in
    their order."""
    grouped: dict[int, list[Place]] = {}
    for place in places:
        shard = shard_of_rank[place.rank]
        local = view.split_key(place.reference_key)[1]
        grouped.setdefault(shard, []).append(place.with_key(local))
    return grouped


@dataclass
class MergedNeighbours:
    """All shards' nearest patches merged into one catalogue's: per query patch, the ``k``
    most similar over every shard.

    References are numbered afresh for this query (``places[key]`` is ``(shard, the shard's
    own key)``, ``key_of`` the inverse), so vector ids stay within 64 bits whatever the
    shards' keys. :meth:`search` hands the merged lists to the candidate vote.
    """

    similarities: np.ndarray
    ids: np.ndarray
    places: list[tuple[int, int]]
    key_of: dict[tuple[int, int], int]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The merged lists (made for these query vectors and this ``k``)."""
        if len(vectors) != len(self.ids) or k != self.ids.shape[1]:
            raise ValueError("the merged neighbours were made for other query vectors")
        return self.similarities, self.ids


def merge_neighbours(per_shard: list[tuple[np.ndarray, np.ndarray]], k: int) -> MergedNeighbours:
    """Each query patch's ``k`` nearest patches over all shards.

    For exact indexes this is what one catalogue holding every shard's references returns
    (ties aside): the vote sees the same neighbours, and chooses the same candidates, however
    the references are sharded.

    Parameters
    ----------
    per_shard : list of (np.ndarray, np.ndarray)
        Each shard's ``(similarities, ids)`` for the same query vectors, ``k`` per row (id
        ``-1`` where a shard had fewer).
    k : int

    Returns
    -------
    merged : MergedNeighbours
    """
    similarities = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in per_shard], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in per_shard], axis=1)
    shards = np.concatenate(
        [np.full(np.shape(i), shard, dtype=np.int64) for shard, (_, i) in enumerate(per_shard)],
        axis=1,
    )
    similarities = np.where(ids >= 0, similarities, -np.inf).astype(np.float32)
    best = np.argsort(-similarities, axis=1, kind="stable")[:, :k]  # ties keep shard order
    similarities = np.take_along_axis(similarities, best, axis=1)
    ids = np.take_along_axis(ids, best, axis=1)
    shards = np.take_along_axis(shards, best, axis=1)
    valid = ids >= 0
    keys, patch_numbers = split_vector_ids(ids[valid])
    # one integer per (shard, key), ordered as the pairs are: a 1-D unique, not a row-wise one
    codes = (shards[valid] << KEY_BITS) | keys
    distinct, numbers = np.unique(codes, return_inverse=True)
    renumbered = np.full(ids.shape, -1, dtype=np.int64)
    renumbered[valid] = (numbers.reshape(-1).astype(np.int64) << PATCH_BITS) | patch_numbers
    places = [(int(code >> KEY_BITS), int(code & KEY_MASK)) for code in distinct]
    return MergedNeighbours(
        similarities, renumbered, places, {place: n for n, place in enumerate(places)}
    )


def _places_of(view: ShardView, keys: frozenset[int]) -> list[tuple[int, int]]:
    """Global keys as ``(shard, the shard's own key)``.

    Raises
    ------
    ReferenceNotFoundError
        If a key was given before a reshard: leaving a reference out by a stale key would
        silently leave nothing out (a self-scan would find the reference itself).
    """
    return [view.split_key(key) for key in keys]


def _globally(view: ShardView, shard: int, verification: Verification) -> Verification:
    return replace(verification, reference_key=view.global_key(shard, verification.reference_key))


# Functions run where a shard is open (in this process or on a Dask worker).


# Each returns its answer and the shard's damaged references (OpenShard.damaged_references).
Damaged = tuple[str, ...]
#: A shard's verifications of a query, finished, and its matches (``None`` unless asked).
Finished = tuple[list[Verification], list[Match] | None]
#: A shard's best places verified ahead: their ranks, their verifications and the finish.
Ahead = tuple[list[int], tuple[list[Verification], Finished]]


@dataclass(frozen=True)
class Neighbours:
    """A shard's nearest patches to a query's, and its index's lists digest."""

    found: tuple[np.ndarray, np.ndarray]
    lists_digest: str | None


def _neighbours_together(shards: list[OpenShard], args: list[tuple[Any, ...]]) -> list[Outcome]:
    """:func:`_shard_neighbours` of several shards open in this process, asked the same: when
    their published indexes are fast-scan lists on the training whose lists the query's
    assignment chose, one search of their lists joined
    (:class:`~tunetrace.index.joined_lists.JoinedLists`) answers for all, each shard's share
    merged with its newer references' exact search; else each shard searches on its own."""
    first = args[0]
    assignment = first[4] if len(first) > 4 else None
    joined = None
    if assignment is not None and all(asked is first for asked in args):
        try:
            layers = []
            for shard in shards:
                shard.catalogue.refresh()
                layers.append(shard.catalogue.search_layers())
            joined = _joined_search(shards[0], layers, assignment, first[1])
        except Exception:  # each shard then searches, and fails, on its own
            logger.warning("shards searched one by one after a failure", exc_info=True)
            joined = None
    if joined is None:
        return [
            _outcome(_shard_neighbours, shard, *asked)
            for shard, asked in zip(shards, args, strict=True)
        ]
    vectors, k = first[0], first[1]
    outcomes: list[Outcome] = []
    for shard, layer, found in zip(shards, layers, joined, strict=True):
        try:
            if layer.delta is not None and layer.delta.size:
                found = best_of([found, layer.delta.search(vectors, k)], k)
            digest = layer.base.lists_digest if layer.base is not None else None
            outcomes.append((True, (Neighbours(found, digest), shard.damaged_references())))
        except Exception as exc:  # one shard's fault is not the others'
            outcomes.append((False, exc))
    return outcomes


def _joined_search(
    first: OpenShard, layers: list[LayeredIndex], assignment: ListAssignment, k: int
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Each shard's share of the ``k`` nearest in their published indexes' lists joined, or
    ``None`` when they cannot be searched so."""
    bases = [layer.base for layer in layers]
    if any(base is None or not joinable(base, assignment.digest) for base in bases):
        return None
    training = first.catalogue.index_training()
    if training is None or training.lists_digest != assignment.digest:
        return None
    joined = _JOINED.get(training, bases)  # type: ignore[arg-type]
    return None if joined is None else joined.search_assigned(assignment, k)


def _outcome(function: Any, *args: Any) -> Outcome:
    try:
        return (True, function(*args))
    except Exception as exc:  # one shard's fault is not the others'
        return (False, exc)


#: This process's join of the lists of the shards it searches together.
_JOINED = JoinedListsCache()


@together(_neighbours_together)
def _shard_neighbours(
    shard: OpenShard,
    vectors: np.ndarray,
    k: int,
    effort: float,
    shard_count: int,
    assignment: ListAssignment | None = None,
) -> tuple[Neighbours, Damaged]:
    """The shard's nearest patches: in the lists ``assignment`` chose if its index is built
    on that training, else with its inverted lists probed as one index of ``shard_count``
    shards' vectors would be (:func:`probe_share`; 1: as fully as its own). Also its
    index's :meth:`~tunetrace.index.catalogue.Catalogue.lists_digest`."""
    catalogue = shard.catalogue
    catalogue.refresh()
    share = catalogue_probe_share(catalogue, shard_count)
    found = catalogue.search(vectors, k, effort=effort * share, assignment=assignment)
    return Neighbours(found, catalogue.lists_digest()), shard.damaged_references()


def _shard_training(
    shard: OpenShard,
) -> tuple[tuple[str | None, tuple[dict, bytes] | None], Damaged]:
    """The shard's index's lists digest, and the shared training the index is built on
    (its spec and bytes) if there is one."""
    catalogue = shard.catalogue
    catalogue.refresh()
    trained = catalogue.index_training()
    payload = None if trained is None else (trained.spec.to_dict(), trained.training_bytes())
    return (catalogue.lists_digest(), payload), shard.damaged_references()


def catalogue_probe_share(catalogue: Catalogue, shard_count: int) -> float:
    """:func:`probe_share` of one shard's catalogue among ``shard_count`` (its index is not
    looked at for one)."""
    if shard_count <= 1:
        return 1.0
    return probe_share(catalogue.inverted_lists(), catalogue.index_spec, shard_count)


def probe_share(
    lists: tuple[int, int] | None, spec: IndexSpec, shard_count: int
) -> float:
    """Share of its probed lists a shard's inverted-list index searches so that, over all
    shards, a query reads as many vectors as one index of the whole catalogue would.

    One index of ``n`` vectors has ``spec.resolved(n).nlist`` lists (about ``4 sqrt(n)`` by
    default) and probes ``nprobe`` of them; a shard holding ``n / shard_count`` of them has
    fewer, shorter lists. Probing ``nprobe`` in each would read ``sqrt(shard_count)`` times
    the vectors one index reads (at ten shards, over three times), for neighbours one index
    would not look at either. The shard probes ``nprobe * its lists / the whole index's
    lists`` (at least one): the same share of its vectors as one index of the whole probes
    of all (shards hold even shares: references go to them by a hash of their ids).

    Parameters
    ----------
    lists : tuple of (int, int) or None
        The shard's lists and vectors (:meth:`~tunetrace.index.catalogue.Catalogue.inverted_lists`);
        ``None`` for an exact or graph index, which searches as always.
    spec : IndexSpec
        The index kind the catalogue asks for (``nlist=0``: decided by size).
    shard_count : int

    Returns
    -------
    share : float in (0, 1]
    """
    if lists is None or shard_count <= 1:
        return 1.0
    shard_lists, vectors = lists
    whole_lists = spec.resolved(vectors * shard_count).nlist
    return min(1.0, shard_lists / max(whole_lists, 1))


def _shard_places(
    shard: OpenShard,
    features: Features,
    candidates: list[Candidate],
    ranks: list[int],
    ahead: tuple[Patches, tuple[int, float | None] | None] | None,
    configuration: Configuration,
) -> tuple[tuple[list[Place], Ahead | None], Damaged]:
    """The shard's candidates aligned, those it would send to screening screened (every
    place the whole catalogue's choice can screen is among them). With ``ahead``
    (``patches``, ``reported``), also the shard's own best ``verify_top`` screened places
    verified and finished as :func:`_shard_verified` does: their ranks, verifications and
    what finishing gave."""
    matcher = shard.matcher_with(*configuration)
    work = matcher.query_work(features)
    aligned = matcher.aligned_places(work, candidates, ranks)
    screened = matcher.screened_places(
        work, places_to_screen(aligned, matcher.settings.screen_top)
    )
    by_rank = {place.rank: place for place in screened}
    places = [by_rank.get(place.rank, place) for place in aligned]
    verified_ahead = None
    if ahead is not None:
        patches, reported = ahead
        best = verification_order(screened)[: matcher.settings.verify_top]
        verified_ahead = (
            [place.rank for place in best],
            _verified_and_finished(matcher, work, patches, best, reported),
        )
    return (places, verified_ahead), shard.damaged_references()


def _shard_verified(
    shard: OpenShard,
    features: Features,
    patches: Patches,
    places: list[Place],
    reported: tuple[int, float | None] | None,
    configuration: Configuration,
) -> tuple[tuple[list[Verification], Finished], Damaged]:
    """The shard's chosen places verified; and its verifications finished as if no further
    place were verified (repeats of its works found, its matches when ``reported``)."""
    matcher = shard.matcher_with(*configuration)
    work = matcher.query_work(features)
    answer = _verified_and_finished(matcher, work, patches, places, reported)
    return answer, shard.damaged_references()


def _shard_finished(
    shard: OpenShard,
    features: Features,
    patches: Patches,
    places: list[Place],
    verified: list[Verification],
    reported: tuple[int, float | None] | None,
    configuration: Configuration,
) -> tuple[Finished, Damaged]:
    """The shard's further places verified, then all its verifications (those of its chosen
    places, ``verified``, and these) finished as :func:`_finished` does."""
    matcher = shard.matcher_with(*configuration)
    work = matcher.query_work(features)
    verifications = list(verified) + matcher.verified_places(work, places)
    return _finished(matcher, work, patches, verifications, reported), shard.damaged_references()


def _verified_and_finished(
    matcher: Matcher,
    work: QueryWork,
    patches: Patches,
    places: list[Place],
    reported: tuple[int, float | None] | None,
) -> tuple[list[Verification], Finished]:
    """Chosen places verified, and the verifications finished (:func:`_finished`) as if no
    further place were verified."""
    verified = matcher.verified_places(work, places)
    return verified, _finished(matcher, work, patches, verified, reported)


def _finished(
    matcher: Matcher,
    work: QueryWork,
    patches: Patches,
    verifications: list[Verification],
    reported: tuple[int, float | None] | None,
) -> Finished:
    """Repeats of the works found verified, the verifications finished
    (:meth:`Matcher.finished`), and the matches made from them when ``reported`` (``top``,
    ``min_score``) is given, as :meth:`Matcher.verify` and :meth:`Matcher.matches_from` end."""
    verifications = verifications + matcher.repeated_places(work, patches, verifications)
    verifications = matcher.finished(verifications)
    matches = None
    if reported is not None:
        top, min_score = reported
        matches = matcher.matches_from(
            work.features, verifications, top=top, min_score=min_score
        )
    return verifications, matches


def _shard_verifications(
    shard: OpenShard,
    features: Features,
    patches: Patches,
    reference_key: int,
    configuration: Configuration,
) -> tuple[list[Verification], Damaged]:
    verifications = shard.matcher_with(*configuration).verify(
        features, reference_key=reference_key, patches=patches
    )
    return verifications, shard.damaged_references()
