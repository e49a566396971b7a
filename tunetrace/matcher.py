"""The matcher: query audio -> candidates -> verification -> scored report.

Both front ends (CLI and HTTP API) call :class:`Matcher`; it knows nothing of either.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from tunetrace.alignment import align_on_chroma
from tunetrace.alteration import classify_alteration
from tunetrace.candidates import VectorSearcher, find_candidates, query_patch_vectors
from tunetrace.errors import DamagedReferenceError, ReferenceNotFoundError
from tunetrace.fingerprint.decode import DEFAULT_MAX_DURATION_S, load_audio
from tunetrace.fingerprint.features import Features, extract_features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.tonality import tonality
from tunetrace.index.catalogue import Catalogue
from tunetrace.places import Place, Window, places_to_screen, verification_order
from tunetrace.query import PreparedQuery, VerifySettings, prepare_query
from tunetrace.query_work import QueryWork
from tunetrace.repeats import self_similar_places
from tunetrace.report import Match, MatchReport
from tunetrace.scoring import ScoreModel
from tunetrace.screening import screen_alignment
from tunetrace.segment_edges import join_across_passages, reach_segments
from tunetrace.segments import (
    consistent,
    covered_seconds,
    is_section,
    merge_segments,
    section_runs,
    union_segments,
    without_fragments,
)
from tunetrace.threads import limit_blas_threads, map_in_threads
from tunetrace.types import Candidate, Verification
from tunetrace.verification import verify_candidate

logger = logging.getLogger(__name__)
#: What a step of verification returns (see :meth:`Matcher._unless_damaged`).
_Read = TypeVar("_Read")


@dataclass(frozen=True)
class MatchSettings:
    """How wide the matcher searches.

    Attributes
    ----------
    n_neighbours : int
        Nearest patches retrieved per query patch (at least 1).
    max_candidates : int
        References whose vote peaks go on to chroma alignment and a quick spectral screening,
        at least (all a query of up to a minute sends with the defaults; see
        :meth:`Matcher.candidate_count`).
    candidates_per_minute : float
        A longer query sends this many references per minute of it, up to ...
    most_candidates : int
        ... this many (or ``max_candidates`` if that is more): a long upload has a part
        for every work it holds, and more references that fit some part of it by chance
        (places are ranked by their votes in their own part of a long query; see
        :mod:`tunetrace.candidates`).
    verify_top : int
        Screened alignments (best first) verified in full; more than one leaves room for the
        second piece of a cut copy.
    min_vote_ratio : float
        Vote peaks weaker than this fraction of the strongest are not aligned at all: a found
        copy's reference peaks well above it, so the cut saves alignments of queries that hold
        a copy without losing it (queries that do not have only weak peaks).
    other_tempo_ratios : int
        Other tempo ratios kept per candidate place (vote peaks at the same offset).
    places_per_reference : int
        Distinct offsets per reference sent to alignment.
    retimed_candidates : int
        The strongest candidates (by votes) whose other tempo ratios are aligned and screened
        too, each on its own: patch votes locate a copy better than they time it, and chroma
        alone can prefer a wrong ratio that the spectral screening rejects.
    screen_top : int or None
        At most this many chroma alignments (best pitch-corrected chroma fit first) go on to
        spectral screening; ``None`` (the default) screens all of them, about 45 per query.
        Fewer saves verification time, but a copy's right alignment can rank low by chroma
        fit and first in screening; recall comes first, so everything is screened unless this
        is set.
    section_margin_s : float
        A candidate whose voters cover only part of the query is aligned, screened and
        verified on that part alone, widened by this much on each side: unrelated material
        around a copied section must not dilute its evidence.
    min_section_s : float
        A window's verification counts only if its matched segments cover this much: the
        best-fitting part of a long query, judged alone, can look like a copy for a few
        seconds by coincidence.
    section_pad_s : float
        The longest matched section of such a window is judged again alone, with this much
        around it, when the window held anything else.
    section_gap_s : float
        Matched segments this close are one section.
    other_work_screening : float
        After the first ``verify_top``, the best alignment of every other reference whose
        screening reaches this (and this fraction of the best screening) is verified too (a
        medley's other works; a reference whose chosen verifications came to nothing counts
        as other), as are other places of references found to be copied (a looped or moved
        section).
    max_extra_verifications : int
        At most this many such verifications.
    max_repeats : int
        Places searched for in the query of each work found to be copied (its vote peaks in
        that reference alone): other repeats of a looped section are verified there.
    min_section_window_s : float
        Such a window is widened to at least this length.
    whole_query_fraction : float
        A window covering at least this fraction of the query is the whole query.
    long_query_s : float
        A query longer than this is searched with ...
    long_query_search_effort : float
        ... this share of an IVF index's probed lists (each of its many patches needs fewer:
        a copied section's patches find it among the nearest lists) ...
    long_query_patch_hop : int
        ... and with patches this many frames (at reference tempo) apart, at least 1 and at
        most the catalogue's ``patch_frames`` (the catalogue's ``query_patch_hop`` for
        shorter queries): a third fewer patches to embed, search and count votes of than
        at 6. A hop with no common factor with the catalogue's ``reference_patch_hop`` (9
        against 8) still meets every phase of the reference's patches.
    shard_probe_share : bool
        Sharded catalogues only: each shard's IVF index probes the share of its lists that
        one index of the whole catalogue would probe of its own
        (:func:`~tunetrace.sharded_matcher.probe_share`), instead of ``nprobe`` of them:
        at ten shards about a third of the search, for fewer neighbours found (measured in
        docs/scaling.md). Shards sharing one training (what ``index build`` makes) probe
        the lists one index of the whole would whatever this says.
    """

    n_neighbours: int = 20
    max_candidates: int = 16
    candidates_per_minute: float = 16.0
    most_candidates: int = 32
    verify_top: int = 3
    min_vote_ratio: float = 0.2
    other_tempo_ratios: int = 3
    places_per_reference: int = 4
    retimed_candidates: int = 4
    screen_top: int | None = None
    section_margin_s: float = 3.0
    min_section_s: float = 6.0
    section_pad_s: float = 0.5
    section_gap_s: float = 2.0
    other_work_screening: float = 0.5
    max_extra_verifications: int = 6
    max_repeats: int = 8
    min_section_window_s: float = 12.0
    whole_query_fraction: float = 0.8
    long_query_s: float = 120.0
    long_query_search_effort: float = 0.125
    long_query_patch_hop: int = 9
    shard_probe_share: bool = False

    def __post_init__(self) -> None:
        if self.n_neighbours < 1:
            raise ValueError(
                f"n_neighbours (nearest indexed patches per query patch) must be at least 1, "
                f"not {self.n_neighbours}"
            )
        if self.max_candidates < 1 or self.most_candidates < 1:
            raise ValueError(
                f"max_candidates ({self.max_candidates}) and most_candidates "
                f"({self.most_candidates}) must be at least 1"
            )
        hop = self.long_query_patch_hop
        if isinstance(hop, bool) or not isinstance(hop, int | np.integer) or hop < 1:
            raise ValueError(
                f"long_query_patch_hop (frames between patches) must be a whole number of at "
                f"least 1, not {hop!r}"
            )
        if not 0.0 <= self.candidates_per_minute < float("inf"):
            raise ValueError(
                f"candidates_per_minute must be a finite number >= 0, not "
                f"{self.candidates_per_minute}"
            )


class Matcher:
    """Match queries against a catalogue.

    Parameters
    ----------
    catalogue : Catalogue
        A sharded catalogue gets a :class:`~tunetrace.sharded_matcher.ShardedMatcher`.
    score_model : ScoreModel, optional
        Defaults to the calibrated model shipped with tunetrace.
    settings : MatchSettings, optional
    verify_settings : VerifySettings, optional
    """

    def __new__(cls, catalogue: Catalogue, **kwargs: object) -> Matcher:
        # A sharded catalogue gets the matcher that scatters queries to its shards.
        if cls is Matcher:
            from tunetrace.sharded_catalogue import ShardedCatalogue

            if isinstance(catalogue, ShardedCatalogue):
                from tunetrace.sharded_matcher import ShardedMatcher

                return super().__new__(ShardedMatcher)
        return super().__new__(cls)

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        score_model: ScoreModel | None = None,
        settings: MatchSettings | None = None,
        verify_settings: VerifySettings | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.score_model = score_model or ScoreModel.load()
        self.settings = settings or MatchSettings()
        self.verify_settings = verify_settings or VerifySettings()
        hop, patch_frames = self.settings.long_query_patch_hop, catalogue.params.patch_frames
        if hop > patch_frames:  # music between patches would be searched by none
            raise ValueError(
                f"long_query_patch_hop ({hop}) must be at most the catalogue's patch length "
                f"({patch_frames} frames)"
            )
        self._damaged_seen: dict[int, str] = {}  # key -> id of rows found damaged
        self._damaged_lock = threading.Lock()  # verification threads add to the record
        limit_blas_threads()  # small products: a spinning BLAS thread only takes a core away
        damaged = self.damaged_references()
        if damaged:  # left out of the index when it was last rebuilt: never candidates
            shown = ", ".join(map(repr, damaged[:5])) + (", ..." if len(damaged) > 5 else "")
            logger.warning(
                "%d damaged reference(s) in %s cannot be found: %s; remove them and add them "
                "again", len(damaged), catalogue.directory, shown,
            )  # fmt: skip

    @property
    def default_min_score(self) -> float:
        """The calibrated verdict threshold."""
        return self.score_model.threshold

    def load_query(
        self, path: str | Path, *, max_duration_s: float | None = DEFAULT_MAX_DURATION_S
    ) -> Features:
        """Decode and fingerprint a query file."""
        params = self.catalogue.params
        audio = load_audio(
            path, sample_rate_hz=params.sample_rate_hz, max_duration_s=max_duration_s
        )
        return extract_features(audio, params=params)

    def match_path(
        self,
        path: str | Path,
        *,
        query_name: str | None = None,
        top: int = 5,
        min_score: float | None = None,
        max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    ) -> MatchReport:
        """Match one audio file.

        Parameters
        ----------
        path : str or Path
        query_name : str, optional
            Name reported as ``query`` (default: ``str(path)``).
        top : int
            Most matches reported.
        min_score : float, optional
            Threshold (default: the calibrated one).
        max_duration_s : float or None

        Returns
        -------
        report : MatchReport

        Raises
        ------
        AudioDecodeError, AudioTooShortError, AudioTooLongError
        """
        started = time.perf_counter()
        features = self.load_query(path, max_duration_s=max_duration_s)
        matches = self.match_features(features, top=top, min_score=min_score)
        query_tonality = tonality(features, params=self.catalogue.params)
        return MatchReport(
            query=str(path) if query_name is None else query_name,
            duration_s=features.duration_s,
            elapsed_s=time.perf_counter() - started,
            matches=matches,
            query_tonality=query_tonality,
            damaged_references=self.damaged_references(),
        )

    def candidates(
        self,
        features: Features,
        searcher: VectorSearcher | None = None,
        *,
        exclude_keys: frozenset[int] = frozenset(),
        patches: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> list[Candidate]:
        """Candidate places of a query, searched as this matcher's settings say.

        Parameters
        ----------
        features : Features
        searcher : VectorSearcher, optional
            Another vector index to search (default: the catalogue's own).
        exclude_keys : frozenset of int
            References left out of the search.
        patches : tuple of np.ndarray, optional
            The query's :meth:`query_patches`, if already made.

        Returns
        -------
        candidates : list of Candidate
            Best first.
        """
        if searcher is None:
            searcher = _AtEffort(self.catalogue, self.search_effort(features))
        if patches is None:
            patches = self.query_patches(features, self.catalogue.params)
        return find_candidates(
            features,
            searcher,
            params=self.catalogue.params,
            n_neighbours=self.settings.n_neighbours,
            max_candidates=self.candidate_count(features),
            min_vote_ratio=self.settings.min_vote_ratio,
            other_rates=self.settings.other_tempo_ratios,
            per_reference=self.settings.places_per_reference,
            exclude_keys=exclude_keys,
            patches=patches,
        )

    def candidate_count(self, features: Features) -> int:
        """References a query's vote sends on to alignment: ``candidates_per_minute`` for
        each minute of the query, at most ``most_candidates``, and never fewer than
        ``max_candidates`` (with the defaults: 16 for a query of up to a minute, one more per
        3.75 s past it, 32 from two minutes on).

        Parameters
        ----------
        features : Features
            The query.

        Returns
        -------
        count : int
        """
        settings = self.settings
        by_length = int(np.ceil(settings.candidates_per_minute * features.duration_s / 60.0))
        return max(settings.max_candidates, min(by_length, settings.most_candidates))

    def search_effort(self, features: Features) -> float:
        """Share of an IVF index's probed lists a query's patches search
        (:attr:`MatchSettings.long_query_search_effort` for long queries, else all)."""
        if features.duration_s > self.settings.long_query_s:
            return self.settings.long_query_search_effort
        return 1.0

    def patch_hop(self, features: Features, params: FingerprintParams) -> int:
        """Frames between a query's patches.

        Parameters
        ----------
        features : Features
            The query.
        params : FingerprintParams
            The catalogue's.

        Returns
        -------
        hop : int
            :attr:`MatchSettings.long_query_patch_hop` for a query longer than
            :attr:`MatchSettings.long_query_s` (checked against the catalogue's patch length
            when the matcher was made), else ``params.query_patch_hop``.
        """
        if features.duration_s <= self.settings.long_query_s:
            return params.query_patch_hop
        return self.settings.long_query_patch_hop

    def query_patches(
        self, features: Features, params: FingerprintParams
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A query's patch vectors as this matcher searches them: every call that takes
        ``patches`` (:meth:`verify`, :meth:`candidates`, :meth:`match_features`) expects these.
        Parameters as :meth:`patch_hop`'s.

        Returns
        -------
        vectors, rate_index, starts : np.ndarray
            As :func:`~tunetrace.candidates.query_patch_vectors` makes them, at
            :meth:`patch_hop`.
        """
        return query_patch_vectors(features, params=params, hop=self.patch_hop(features, params))

    def verify(
        self,
        features: Features,
        *,
        exclude_keys: frozenset[int] = frozenset(),
        timings: dict[str, float] | None = None,
        reference_key: int | None = None,
        patches: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        candidates: list[Candidate] | None = None,
    ) -> list[Verification]:
        """All verified candidates of a query, scored, best first (nothing filtered).

        ``exclude_keys`` are references left out of the search (a self-scan's own reference).
        When ``timings`` is given, the seconds spent in the candidate search and in the
        verification are stored in it under ``"search"`` and ``"verification"``.
        ``reference_key`` limits the search to that reference; ``patches`` are the query's
        :meth:`query_patches` if already made (a sharded
        catalogue's shards all search the same ones); ``candidates`` replace the candidate
        search (best first, as :meth:`candidates` returns them).
        """
        started = time.perf_counter()
        self.catalogue.refresh()
        params = self.catalogue.params
        searcher = None
        if reference_key is not None:  # that reference alone, however the others compare
            searcher = self.catalogue.reference_index(reference_key)
        # embedded once: searched here and, for works found, again in their own vectors
        if patches is None:
            patches = self.query_patches(features, params)
        if candidates is None:
            candidates = self.candidates(
                features, searcher, exclude_keys=exclude_keys, patches=patches
            )
        searched = time.perf_counter()
        work = self.query_work(features)
        retimed = one_ratio_each(candidates, self.settings.retimed_candidates)
        aligned = self.aligned_places(work, retimed)
        selected = places_to_screen(aligned, self.settings.screen_top)
        screened = verification_order(self.screened_places(work, selected))
        chosen = screened[: self.settings.verify_top]
        verifications = self.verified_places(work, chosen)
        # More works (a medley) and more sections of a work found (a loop, a section cut and
        # moved): the best place of every other clearly screened reference, and the other
        # places of the references already found.
        extra = self.more_places(screened, chosen, verifications)
        verifications += self.verified_places(work, extra)
        verifications += self.repeated_places(work, patches, verifications)
        verifications = self.finished(verifications)
        if timings is not None:
            timings["search"] = searched - started
            timings["verification"] = time.perf_counter() - searched
        return verifications

    def query_work(self, features: Features) -> QueryWork:
        """A query prepared for the verification stages (:meth:`aligned_places` to
        :meth:`repeated_places`), which keep in it the references they read.

        Parameters
        ----------
        features : Features

        Returns
        -------
        work : QueryWork
        """
        return QueryWork(features, prepare_query(features, self.verify_settings))

    def aligned_places(
        self, work: QueryWork, candidates: list[Candidate], ranks: list[int] | None = None
    ) -> list[Place]:
        """Candidates aligned on chroma, each on its window of the query (a candidate whose
        voters sit in one part of the query is judged on that part alone).

        Each reference is read once, before any is aligned, and in part: most are only
        aligned and screened, which read the frames around one alignment (threads aligning
        the same reference derive its parts in turn). A part found damaged leaves the
        reference out of the rest of the query, and of every later one; a reference removed
        (or replaced) since the index was searched is no candidate.

        Parameters
        ----------
        work : QueryWork
        candidates : list of Candidate
            Best first.
        ranks : list of int, optional
            Their ranks among all the query's candidates (default: their positions).

        Returns
        -------
        places : list of Place
            In candidate order.
        """
        if ranks is None:
            ranks = list(range(len(candidates)))
        windowed = [self._in_window(candidate, work.features) for candidate in candidates]
        work.prepare(window for window, _ in windowed)
        self._read_references(work, [candidate.reference_key for _, candidate in windowed])
        items = [(rank, window, candidate)
                 for rank, (window, candidate) in zip(ranks, windowed, strict=True)]  # fmt: skip
        # in candidate order whatever the threads, so that ties resolve as in one thread
        aligned = map_in_threads(lambda item: self._aligned_at(work, *item), items)
        return [place for place in aligned if place is not None]

    def screened_places(self, work: QueryWork, places: list[Place]) -> list[Place]:
        """Aligned places with their spectral screening, those screened out left out.

        Parameters
        ----------
        work : QueryWork
            That aligned them.
        places : list of Place

        Returns
        -------
        screened : list of Place
            In the order of ``places``.
        """
        params = self.catalogue.params

        def screen(place: Place) -> Place | None:
            key = place.reference_key
            screening = self._unless_damaged(key, lambda: screen_alignment(
                work.part(place.window), work.references[key], place.alignment,
                params=params, settings=self.verify_settings,
            ))  # fmt: skip
            return None if screening is None else replace(place, screening=screening)

        return [place for place in map_in_threads(screen, places) if place is not None]

    def verified_places(self, work: QueryWork, places: list[Place]) -> list[Verification]:
        """Screened places verified in full and scored (a window's verification judged as
        one of the query's windows, see :meth:`_judged_alone`); those that verify nothing
        left out.

        Parameters
        ----------
        work : QueryWork
        places : list of Place
            Screened (by this catalogue, or a shard of the same catalogue), with this
            catalogue's reference keys.

        Returns
        -------
        verifications : list of Verification
            In the order of ``places``.
        """
        params = self.catalogue.params
        work.prepare(place.window for place in places)
        self._read_references(work, [place.reference_key for place in places])
        places = [place for place in places if place.reference_key in work.references]

        def scored(verification: Verification | None, windows: float = 1.0) -> Verification | None:
            if verification is None:
                return None
            score = self.score_model.score_section(verification, windows=windows)
            return _with_score(verification, score)

        def verify_one(place: Place) -> Verification | None:
            verification = verify_candidate(
                work.part(place.window),
                work.references[place.reference_key],
                place.alignment,
                params=params,
                settings=self.verify_settings,
                screening=place.screening,
            )
            if verification is None or place.window is None:
                return scored(verification)
            verification = _from_window(verification, place.window[0], params.frame_rate_hz)
            return self._judged_alone(
                work.query, verification, work.references, place.window, scored
            )

        def verify(place: Place) -> Verification | None:
            return self._unless_damaged(place.reference_key, lambda: verify_one(place))

        return [v for v in map_in_threads(verify, places) if v is not None]

    def repeated_places(
        self,
        work: QueryWork,
        patches: tuple[np.ndarray, np.ndarray, np.ndarray],
        verifications: list[Verification],
    ) -> list[Verification]:
        """Every other occurrence of a found work's material (a looped section): candidate
        places searched in that reference alone, verified where nothing was found yet.

        Parameters
        ----------
        work : QueryWork
        patches : tuple of np.ndarray
            The query's :meth:`query_patches`.
        verifications : list of Verification
            The query's so far (of this catalogue's references); those scoring at least the
            calibrated threshold are found works.

        Returns
        -------
        verifications : list of Verification
            Of the repeats, new ones only.
        """
        repeats: list[Candidate] = []
        windows: list[Window] = []
        for key in {v.reference_key for v in verifications if v.score >= self.default_min_score}:
            found = [v for v in verifications if v.reference_key == key]
            places = self._repeat_places(work.features, key, found, patches)
            places += self._recurring_places(work.features, found)
            for candidate in places:
                window, moved = self._in_window(candidate, work.features)
                if window is None:
                    continue
                windows.append(window)
                repeats.append(moved)
        if not repeats:
            return []
        work.prepare(windows)
        self._read_references(work, [candidate.reference_key for candidate in repeats])
        items = [(REPEAT_RANK, w, moved) for w, moved in zip(windows, repeats, strict=True)]
        aligned = map_in_threads(lambda item: self._aligned_at(work, *item), items)
        aligned = [place for place in aligned if place is not None]
        return self.verified_places(work, self.screened_places(work, aligned))

    def finished(self, verifications: list[Verification]) -> list[Verification]:
        """A query's verifications as :meth:`verify` returns them: best first, without those
        of references found damaged since they were verified (a part read later was).

        Parameters
        ----------
        verifications : list of Verification

        Returns
        -------
        verifications : list of Verification
        """
        kept = [v for v in verifications if not self.found_damaged(v.reference_key)]
        kept.sort(key=lambda v: -v.score)
        return kept

    def _aligned_at(
        self, work: QueryWork, rank: int, window: Window, candidate: Candidate
    ) -> Place | None:
        """One candidate already seen from its window, aligned; ``None`` if its reference
        was not read (removed, damaged) or does not align."""
        key = candidate.reference_key
        if key not in work.references:
            return None
        alignment = self._unless_damaged(key, lambda: align_on_chroma(
            work.part(window), work.references[key], candidate, settings=self.verify_settings,
        ))  # fmt: skip
        return None if alignment is None else Place(rank, window, alignment)

    def _read_references(self, work: QueryWork, keys: list[int]) -> None:
        """Read the references of ``keys`` not yet in ``work`` (in part, in threads); those
        removed or damaged stay out."""
        missing = [key for key in dict.fromkeys(keys) if key not in work.references]
        in_part = functools.partial(self._reference_features, whole=False)
        for key, features in zip(missing, map_in_threads(in_part, missing), strict=True):
            if features is not None:
                work.references[key] = features

    def reported_verification(
        self,
        features: Features,
        verifications: list[Verification],
        *,
        query: PreparedQuery | None = None,
    ) -> tuple[Verification, list[Verification]]:
        """One reference's verifications as its report sees them: the one it follows, with
        the best one's score, and the others.

        When the best scores at least :data:`MIN_SCORE_TO_GROW` their segments are grown over
        the whole query (:func:`~tunetrace.segment_edges.reach_segments`); of those within
        :data:`SAME_SCORE` of the best and consistent with it (tempo ratio and pitch shift),
        the one covering most of the query is followed: music that repeats itself lets part
        of a section verify, as surely, at another place of the reference.

        Parameters
        ----------
        features : Features
            The query.
        verifications : list of Verification
            Of one reference, best first.
        query : PreparedQuery, optional
            ``features`` prepared (:func:`~tunetrace.query.prepare_query`), if already made.

        Returns
        -------
        followed : Verification
        others : list of Verification

        Raises
        ------
        ReferenceNotFoundError
            If the reference was removed since it was verified.
        """
        top = verifications[0]
        if top.score >= MIN_SCORE_TO_GROW:
            if query is None:
                query = prepare_query(features, self.verify_settings)
            verifications = self._grown(verifications, query)
        followed = _widest_of_the_best(verifications)
        others = [v for v in verifications if v is not followed]
        return _with_score(followed, top.score), others

    def _grown(
        self, verifications: list[Verification], query: PreparedQuery
    ) -> list[Verification]:
        """A reported reference's verifications with their segments grown over the whole query
        (:func:`~tunetrace.segment_edges.reach_segments`): a section verified on a window of
        the query may reach past it. Scores unchanged (and segments too, if the reference
        can no longer be read)."""
        reference = self._reference_features(verifications[0].reference_key)
        if reference is None:
            return verifications
        return map_in_threads(
            lambda verification: reach_segments(
                query,
                reference,
                verification,
                params=self.catalogue.params,
                settings=self.verify_settings,
            ),
            verifications,
        )

    def more_places(
        self, screened: list[Place], chosen: list[Place], verified: list[Verification]
    ) -> list[Place]:
        """Screened places to verify after the first ``verify_top``: the best of each other
        reference screened at least ``other_work_screening`` (and that fraction of the best
        screening) in a part of the query, including chosen references whose verifications
        came to nothing, and other windows of references verified as copies. A query short
        enough to be judged whole gets no more verifications than before: each one more is
        one more chance of a coincidence.

        Parameters
        ----------
        screened : list of Place
            The query's screened places, in :func:`~tunetrace.places.verification_order`.
        chosen : list of Place
            The first ``verify_top`` of them, verified.
        verified : list of Verification
            Their verifications.

        Returns
        -------
        places : list of Place
        """
        if not screened:
            return []
        done = {place.rank for place in chosen}
        found = {v.reference_key for v in verified if v.score >= self.default_min_score}
        # A reference whose every chosen verification came to nothing (no section of
        # ``min_section_s`` in its window: nothing matched, or only pieces that did not
        # grow into one) was not judged: its next alignment (another place or ratio, a wider
        # window) may be, once. Pieces grown into a section were judged.
        tried = {v.reference_key for v in verified}
        floor = max(self.settings.other_work_screening,
                    self.settings.other_work_screening * screened[0].value)  # fmt: skip
        windows_seen: dict[int, list[Window]] = {}
        for place in chosen:
            windows_seen.setdefault(place.reference_key, []).append(place.window)
        extra = []
        for place in screened:
            key, window = place.reference_key, place.window
            if place.rank in done:
                continue
            if key in found:
                seen = windows_seen.setdefault(key, [])
                if window is None or any(_overlap(window, w) > 0.5 for w in seen):
                    continue
                if len(seen) >= self.settings.places_per_reference:
                    continue
                seen.append(window)
                extra.append(place)
            elif key not in tried and place.value >= floor and window is not None:
                tried.add(key)
                extra.append(place)
            if len(extra) >= self.settings.max_extra_verifications:
                break
        return extra

    def _repeat_places(
        self,
        features: Features,
        key: int,
        found: list[Verification],
        patches: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> list[Candidate]:
        """Places of reference ``key`` in the query, at the tempo ratio of its best
        verification, away from every segment already found for it."""
        best = max(found, key=lambda v: v.score)
        try:
            searcher = self.catalogue.reference_index(key)
        except ReferenceNotFoundError:  # removed since it was verified
            return []
        except DamagedReferenceError as exc:  # damaged since its features were read
            self._note_damaged_row(key, exc)
            return []
        # only the patches resampled to about the best's tempo ratio can vote for a repeat
        rates = self.catalogue.params.rate_grid()
        near = np.abs(np.log(rates / best.tempo_ratio)) <= np.log1p(REPEAT_TEMPO_TOLERANCE) + 1e-9
        vectors, rate_index, starts = patches
        kept = near[rate_index]
        if not kept.any():
            return []
        places = find_candidates(
            features,
            searcher,
            params=self.catalogue.params,
            n_neighbours=self.settings.n_neighbours,
            max_candidates=1,
            # a reference that repeats itself puts many places on one part of the query
            per_reference=REPEAT_PLACES_SEARCHED,
            min_vote_ratio=self.settings.min_vote_ratio,
            patches=(vectors[kept], rate_index[kept], starts[kept]),
        )
        fps = features.frame_rate_hz
        taken = [(s.query_start_s, s.query_end_s) for v in found for s in v.segments]
        out: list[Candidate] = []
        offered: list[tuple[float, float]] = []
        for place in places:
            span = place.query_span_frames
            if span is None:
                continue
            start_s, end_s = span[0] / fps, span[1] / fps
            # A reference that repeats itself offers one part of the query several offsets,
            # and the most voted need not verify: the next one there is tried too.
            rivals = sum(_mostly_taken(start_s, end_s, [other]) for other in offered)
            if not _mostly_taken(start_s, end_s, taken) and rivals < REPEAT_OFFSETS_PER_PART:
                out.append(place)
                offered.append((start_s, end_s))
            if len(out) == self.settings.max_repeats:
                break
        return out

    def _recurring_places(
        self, features: Features, found: list[Verification]
    ) -> list[Candidate]:
        """Places where the best verified stretch of a work recurs in the query
        (:func:`~tunetrace.repeats.self_similar_places`), at its tempo ratio, away from the
        segments found (a place the vector search offered may have verified another repeat
        than its own)."""
        best = max(found, key=lambda v: v.score)
        sections = [s for s in best.segments
                    if s.query_end_s - s.query_start_s >= self.settings.min_section_s]  # fmt: skip
        if not sections:
            return []
        fps = features.frame_rate_hz
        longest = max(sections, key=lambda s: s.query_end_s - s.query_start_s)
        first, stop = int(longest.query_start_s * fps), int(longest.query_end_s * fps)
        taken = [(s.query_start_s * fps, s.query_end_s * fps) for v in found for s in v.segments]
        out = []
        for start in self_similar_places(
            features.chroma, first, stop, min_shift=stop - first, limit=self.settings.max_repeats
        ):
            end = start + stop - first
            if _mostly_taken(start, end, taken):
                continue
            taken.append((start, end))
            out.append(
                Candidate(
                    reference_key=best.reference_key,
                    tempo_ratio=best.tempo_ratio,
                    offset_frames=best.offset_frames + best.tempo_ratio * (first - start),
                    votes=best.votes,
                    query_span_frames=(float(start), float(end)),
                )
            )
        return out

    def _judged_alone(
        self,
        query: PreparedQuery,
        verification: Verification,
        references: dict[int, Features],
        window: tuple[int, int],
        scored: Callable[..., Verification | None],
    ) -> Verification | None:
        """A window's verification, judged again on its longest matched section alone (with
        ``section_pad_s`` around it) when the window held anything else; ``None`` when it
        matched less than ``min_section_s``. Each is scored as one of the query's many
        windows (:meth:`ScoreModel.score_section`); the better of the two scores stands.
        The measurements average over every sounding frame they are made on: the window's
        3-s margins of other music took a 20-s section's onset agreement from 0.78 to 0.27
        and its score under the threshold. ``query`` is the whole query, prepared.

        A window that matched only pieces, yet whose measurements already score it as a
        copy, has its pieces grown at their own alignment first (:meth:`_pieces_grown`): in
        music that repeats itself a misaligned reference fits almost as well as the aligned
        one, and a copy stretched by 1.13 matched only 2-3-s pieces every 7 s of its 45 s
        while scoring 0.999. Growing decides only whether a section is judged: the grown
        run that overlaps the window is verified again on its own frames, and judged on
        that alone (``None`` if it matches less than ``min_section_s`` there), with a length
        penalty never less than its window's (a grown run may reach past the window)."""
        fps = query.features.frame_rate_hz
        n_frames = query.features.n_frames
        wide_windows = n_frames / (window[1] - window[0])
        runs = section_runs(verification.segments, gap_s=self.settings.section_gap_s)
        grown = None
        if not runs or runs[0][1] - runs[0][0] < self.settings.min_section_s:
            grown = self._pieces_grown(query, verification, references)
            if grown is None:
                return None
            verification = grown
            gap_s, window_s = self.settings.section_gap_s, (window[0] / fps, window[1] / fps)
            runs = [(start, end) for start, end in section_runs(grown.segments, gap_s=gap_s)
                    if start < window_s[1] and end > window_s[0]]  # fmt: skip
            if not runs or runs[0][1] - runs[0][0] < self.settings.min_section_s:
                return None
        start_s, end_s = runs[0]
        pad = self.settings.section_pad_s
        first = max(0, int((start_s - pad) * fps))
        stop = min(n_frames, int(np.ceil((end_s + pad) * fps)))
        if grown is None and first <= window[0] and stop >= window[1]:
            return scored(verification, wide_windows)  # the window holds nothing else
        candidate = Candidate(
            reference_key=verification.reference_key,
            tempo_ratio=verification.tempo_ratio,
            offset_frames=verification.offset_frames + verification.tempo_ratio * first,
            votes=verification.votes,
        )
        part = query.frames(first, stop)
        reference = references[verification.reference_key]
        params = self.catalogue.params
        alignment = align_on_chroma(part, reference, candidate, settings=self.verify_settings)
        section = None if alignment is None else verify_candidate(
            part, reference, alignment, params=params, settings=self.verify_settings
        )  # fmt: skip
        if section is None or covered_seconds(section.segments) < self.settings.min_section_s:
            return None if grown is not None else scored(verification, wide_windows)
        section = _from_window(section, first, fps)
        # where the section lies: what either look matched of it
        in_run = [seg for seg in verification.segments
                  if seg.query_end_s > start_s and seg.query_start_s < end_s]  # fmt: skip
        joined = union_segments(section.segments + in_run, section.tempo_ratio)
        if grown is not None:
            windows = max(wide_windows, n_frames / (stop - first))
            return scored(replace(section, segments=joined), windows)
        section = scored(replace(section, segments=joined), n_frames / (stop - first))
        widest = scored(verification, wide_windows)
        return section if section.score >= widest.score else widest

    def _pieces_grown(
        self,
        query: PreparedQuery,
        verification: Verification,
        references: dict[int, Features],
    ) -> Verification | None:
        """A window's verification of pieces with its segments grown over the whole query
        (:func:`~tunetrace.segment_edges.reach_segments`, as a reported work's are), or
        ``None`` when it is no such thing: fewer than :data:`MIN_PIECES_TO_GROW` pieces of
        :data:`MIN_PIECE_S` or more (segments joined across ``section_gap_s``), none of them
        3 s long (shorter pieces cannot grow), or measurements that score it under
        :data:`MIN_WINDOW_SCORE_TO_GROW` as if its window were the whole query. ``query``
        is the whole query, prepared.

        The gate leaves out the query's length: the section then judged is scored as one of
        its many windows, with the length penalty that brings (pieces of a 20-s section of
        a 4.5-minute upload scored 0.87 as one window, 0.44 as one of 15)."""
        runs = section_runs(verification.segments, gap_s=self.settings.section_gap_s)
        if sum(end - start >= MIN_PIECE_S for start, end in runs) < MIN_PIECES_TO_GROW:
            return None
        if not any(is_section(segment) for segment in verification.segments):
            return None
        score = self.score_model.score_section(verification, windows=1.0)
        if not score >= MIN_WINDOW_SCORE_TO_GROW:  # a NaN measurement grows nothing either
            return None
        return reach_segments(
            query,
            references[verification.reference_key],
            verification,
            params=self.catalogue.params,
            settings=self.verify_settings,
        )

    def _in_window(
        self, candidate: Candidate, features: Features
    ) -> tuple[tuple[int, int] | None, Candidate]:
        """The query frames ``(first, stop)`` to judge ``candidate`` on (``None``: all of
        them), and the candidate with its offsets as seen from the window's first frame."""
        span = candidate.query_span_frames
        n_frames = features.n_frames
        if span is None:
            return None, candidate
        fps = features.frame_rate_hz
        margin = self.settings.section_margin_s * fps
        first, stop = span[0] - margin, span[1] + margin
        shortfall = self.settings.min_section_window_s * fps - (stop - first)
        if shortfall > 0:
            first, stop = first - shortfall / 2, stop + shortfall / 2
        first, stop = max(0, int(np.floor(first))), min(n_frames, int(np.ceil(stop)))
        if stop - first >= self.settings.whole_query_fraction * n_frames:
            return None, candidate
        return (first, stop), replace(
            candidate,
            offset_frames=candidate.offset_frames + candidate.tempo_ratio * first,
            other_alignments=tuple(
                (ratio, offset + ratio * first) for ratio, offset in candidate.other_alignments
            ),
        )

    def _reference_features(self, key: int, *, whole: bool = True) -> Features | None:
        """A candidate reference's stored features, ``None`` if it has been removed or its
        row is damaged (logged once per reference, by id: one damaged row must not stop
        every query). Unless ``whole``, a reference stored in tiles is derived as it is read
        (see :meth:`~tunetrace.index.catalogue.Catalogue.features`)."""
        with self._damaged_lock:
            if key in self._damaged_seen:  # even if its features are still cached (a row
                return None  # added again gets a new key)
        try:
            return self.catalogue.features(key, whole=whole)
        except ReferenceNotFoundError:
            return None
        except DamagedReferenceError as exc:
            self._note_damaged_row(key, exc)
            return None

    def found_damaged(self, key: int) -> bool:
        """Whether this matcher has found reference ``key``'s row damaged (in any query).

        Parameters
        ----------
        key : int
            Internal key of a reference.

        Returns
        -------
        damaged : bool
        """
        with self._damaged_lock:
            return key in self._damaged_seen

    def _unless_damaged(self, key: int, read: Callable[[], _Read]) -> _Read | None:
        """What ``read`` returns, or ``None`` when reference ``key`` was found damaged, before
        or by ``read`` (a damaged part of a reference stored in tiles, recorded)."""
        if self.found_damaged(key):
            return None
        try:
            return read()
        except DamagedReferenceError as exc:
            self._note_damaged_row(key, exc)
            return None

    def _note_damaged_row(self, key: int, exc: DamagedReferenceError) -> None:
        """Record a row found damaged (for :meth:`damaged_references`), logged once."""
        with self._damaged_lock:
            first_time = key not in self._damaged_seen
            self._damaged_seen[key] = exc.reference_id
        if first_time:
            logger.warning("%s; it is left out of matching", exc)

    def damaged_references(self) -> tuple[str, ...]:
        """Ids of the catalogue's references that no query is compared with because their
        stored rows are damaged: those the last index rebuild left out, and those whose rows
        this matcher has failed to read since.

        Returns
        -------
        ids : tuple of str
            Sorted; empty for a sound catalogue.
        """
        recorded = self.catalogue.damaged_references()
        with self._damaged_lock:
            seen = dict(self._damaged_seen)
        return tuple(sorted(set(recorded) | {i for k, i in seen.items() if self._holds(k, i)}))

    def _holds(self, key: int, reference_id: str) -> bool:
        """Whether the catalogue still holds this row (not removed, nor added again)."""
        try:
            return self.catalogue.record_by_key(key).reference_id == reference_id
        except ReferenceNotFoundError:
            return False

    def match_features(
        self,
        features: Features,
        *,
        top: int = 5,
        min_score: float | None = None,
        exclude_keys: frozenset[int] = frozenset(),
        patches: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        candidates: list[Candidate] | None = None,
    ) -> list[Match]:
        """Probable copies among the catalogue's references, best first.

        A reference's best verification decides its score and estimates. Other verifications
        of the same reference at another offset, with the same tempo ratio and pitch shift,
        add their matched segments: a copy with a section cut out, repeated or moved matches
        its reference in several pieces. ``patches``, ``candidates``: as in :meth:`verify`.
        """
        verifications = self.verify(
            features, exclude_keys=exclude_keys, patches=patches, candidates=candidates
        )
        return self.matches_from(features, verifications, top=top, min_score=min_score)

    def matches_from(
        self,
        features: Features,
        verifications: list[Verification],
        *,
        top: int = 5,
        min_score: float | None = None,
    ) -> list[Match]:
        """The matches :meth:`match_features` reports, from verifications already made.

        Parameters
        ----------
        features : Features
            The query they verified.
        verifications : list of Verification
            From :meth:`verify`, best first.
        top : int
        min_score : float, optional
            Default: the calibrated threshold.
        """
        threshold = self.default_min_score if min_score is None else min_score
        by_reference: dict[int, list[Verification]] = {}
        for verification in verifications:  # best first
            by_reference.setdefault(verification.reference_key, []).append(verification)
        matches = []
        query: PreparedQuery | None = None
        for verifications in by_reference.values():
            if verifications[0].score < threshold:
                continue
            if query is None:
                query = prepare_query(features, self.verify_settings)
            try:
                best, others = self.reported_verification(features, verifications, query=query)
            except ReferenceNotFoundError:
                continue  # removed while this query was verified
            # a place tried where the work was not verified adds no section
            sure = [other for other in others if other.score >= MIN_SCORE_OF_OTHER_SECTIONS]
            segments = merge_segments(best, sure)
            reference = self._reference_features(best.reference_key)  # read whole
            if reference is None:
                continue  # removed, or found damaged reading it whole
            # its stretches of one place, across what they leave
            segments = join_across_passages(
                query, reference, segments, best,
                params=self.catalogue.params, settings=self.verify_settings,
            )  # fmt: skip
            segments = without_fragments(segments)
            covered = covered_seconds(segments)
            try:
                record = self.catalogue.record_by_key(best.reference_key)
            except ReferenceNotFoundError:
                continue  # removed while this query was verified
            matches.append(
                Match(
                    reference_id=record.reference_id,
                    title=record.title,
                    artist=record.artist,
                    score=best.score,
                    tempo_ratio=best.tempo_ratio,
                    pitch_shift_semitones=best.pitch_shift_semitones,
                    alteration=classify_alteration(best.tempo_ratio, best.spectral_shift_semitones),
                    coverage=min(1.0, covered / features.duration_s),
                    segments=segments,
                )
            )
            if len(matches) == top:
                break
        return matches


#: Rank of a repeat's place: found after every candidate, never among those ranked.
REPEAT_RANK = -1
#: Places searched for in a found reference alone, before those on one part of the query are
#: set aside (see :meth:`Matcher._repeat_places`).
REPEAT_PLACES_SEARCHED = 48
#: A repeat of a found work is looked for at tempo ratios within this share of its best
#: verification's (a loop repeats one alteration; the grid's step is 6%).
REPEAT_TEMPO_TOLERANCE = 0.06
#: Offsets of a found reference tried on one part of the query when looking for repeats.
REPEAT_OFFSETS_PER_PART = 2


def one_ratio_each(candidates: list[Candidate], retimed: int) -> list[Candidate]:
    """The candidates with the first ``retimed`` split into one candidate per tempo ratio.

    Parameters
    ----------
    candidates : list of Candidate
        Best first, each with the other tempo ratios that won votes at its place.
    retimed : int
        How many of the first candidates are split.

    Returns
    -------
    candidates : list of Candidate
        Each split candidate followed by one candidate per other ratio (with that ratio's
        offset), none of them with other alignments left.
    """
    out = []
    for number, candidate in enumerate(candidates):
        out.append(replace(candidate, other_alignments=()))
        if number < retimed:
            out.extend(
                replace(candidate, tempo_ratio=ratio, offset_frames=offset, other_alignments=())
                for ratio, offset in candidate.other_alignments
            )
    return out


class _AtEffort:
    """The catalogue's vector search at a given effort (see :meth:`Catalogue.search`)."""

    def __init__(self, catalogue: Catalogue, effort: float) -> None:
        self.catalogue, self.effort = catalogue, effort

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.catalogue.search(vectors, k, effort=self.effort)


#: Segments of a reported reference grow to its sections' edges when its best verification
#: scores at least this (below, a report asked for with a low ``min_score`` shows them as
#: verified: the work is unlikely to be a copy).
MIN_SCORE_TO_GROW = 0.5
#: A window matched only in pieces (no run of ``min_section_s``) has them grown when it holds
#: at least this many pieces (runs of its segments joined across ``section_gap_s``) of
#: ``MIN_PIECE_S`` or more: the 2-3-s pieces a reference that repeats itself leaves of a copy,
#: not one piece just short of a section (what ``min_section_s`` keeps out) with a stray
#: fragment beside it ...
MIN_PIECES_TO_GROW = 2
MIN_PIECE_S = 2.0
#: ... and its measurements score it at least this as if the window were the whole query.
MIN_WINDOW_SCORE_TO_GROW = 0.5
#: Verifications of one reference scoring this close to its best are equally sure of it.
SAME_SCORE = 0.01
#: Another verification of a reported reference adds its segments to the report when it is
#: consistent with the best one (tempo ratio, pitch) and scores at least this: more than
#: unrelated uploads reach (the calibration split's 300 long negatives: 0.032 at most). Real
#: repeats of a loop verified at 0.12-0.65 there, places tried and not verified at 0.00.
MIN_SCORE_OF_OTHER_SECTIONS = 0.05


def _widest_of_the_best(verifications: list[Verification]) -> Verification:
    """Of a reference's verifications (best first), the one that covers most of the query
    among those scoring within :data:`SAME_SCORE` of the best and consistent with it."""
    top = verifications[0]
    equally_sure = [
        v for v in verifications if v.score >= top.score - SAME_SCORE and consistent(v, top)
    ]
    return max(equally_sure, key=lambda v: covered_seconds(v.segments))  # first of ties


def _mostly_taken(start: float, end: float, taken: list[tuple[float, float]]) -> bool:
    """Whether ranges already ``taken`` cover half of ``start``-``end`` or more."""
    covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in taken)
    return covered >= 0.5 * (end - start)


def _overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float:
    """Shared length of two frame ranges over the shorter one's (``None``: everything)."""
    if a is None or b is None:
        return 1.0
    shared = min(a[1], b[1]) - max(a[0], b[0])
    return max(0.0, shared) / max(1, min(a[1] - a[0], b[1] - b[0]))


def _from_window(verification: Verification, first_frame: int, fps: float) -> Verification:
    """A verification of a query window as seen from the whole query (offsets, segments)."""
    shift_s = first_frame / fps
    return replace(
        verification,
        offset_frames=verification.offset_frames - verification.tempo_ratio * first_frame,
        segments=[
            replace(s, query_start_s=s.query_start_s + shift_s, query_end_s=s.query_end_s + shift_s)
            for s in verification.segments
        ],
    )


def _with_score(verification: Verification, score: float) -> Verification:
    return replace(verification, score=score)
