"""The matcher: query audio -> candidates -> verification -> scored report.

Both front ends (CLI and HTTP API) call :class:`Matcher`; it knows nothing of either.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tunetrace.alteration import classify_alteration
from tunetrace.candidates import VectorSearcher, find_candidates
from tunetrace.errors import ReferenceNotFoundError
from tunetrace.fingerprint.decode import DEFAULT_MAX_DURATION_S, load_audio
from tunetrace.fingerprint.features import Features, extract_features
from tunetrace.fingerprint.tonality import tonality
from tunetrace.index.catalogue import Catalogue
from tunetrace.report import Match, MatchReport
from tunetrace.scoring import ScoreModel
from tunetrace.threads import limit_blas_threads, map_in_threads
from tunetrace.types import Candidate, Segment, Verification
from tunetrace.verify import (
    ChromaAlignment,
    Screening,
    VerifySettings,
    align_on_chroma,
    prepare_query,
    screen_alignment,
    verify_candidate,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchSettings:
    """How wide the matcher searches.

    Attributes
    ----------
    n_neighbours : int
        Nearest patches retrieved per query patch.
    max_candidates : int
        References whose vote peaks go on to chroma alignment and a quick spectral screening.
    verify_top : int
        Screened alignments (best first) verified in full. On the calibration split 2, 3 and
        4 found the same copies; 3 leaves room for the second piece of a cut copy.
    min_vote_ratio : float
        Vote peaks weaker than this fraction of the strongest are not aligned at all. On the
        calibration split no true reference that was found had less than 0.24 of the best
        peak's votes; the cut saves about 30% of the alignments of queries that hold a copy
        (hardly any of queries that do not, whose peaks are all weak).
    other_tempo_ratios : int
        Other tempo ratios kept per candidate place (vote peaks at the same offset).
    places_per_reference : int
        Distinct offsets per reference sent to alignment.
    retimed_candidates : int
        The strongest candidates (by votes) whose other tempo ratios are aligned and screened
        too, each on its own: patch votes locate a copy better than they time it, and chroma
        alone can prefer a wrong ratio that the spectral screening rejects. On the
        calibration split this and a fourth place per reference raised top-1 recall at the
        threshold from 86.5% to 89.5% for about 20% more verification time.
    screen_top : int or None
        At most this many chroma alignments (best pitch-corrected chroma fit first) go on to
        spectral screening; ``None`` (the default) screens all of them, about 45 per query.
        Screening only the best 12 takes 30-45% off verification and, on the full
        calibration split, found the same 205 of 208 copies with the same negative scores;
        but on the quick evaluation split it lost a copy sped up 1.69 times (sox) whose right
        alignment ranked 17th by chroma fit (0.67 against 0.82 for the best wrong one) and
        first, by far, in screening (1.81 against 0.46). Recall comes first, so everything is
        screened unless this is set.
    """

    n_neighbours: int = 20
    max_candidates: int = 16
    verify_top: int = 3
    min_vote_ratio: float = 0.2
    other_tempo_ratios: int = 3
    places_per_reference: int = 4
    retimed_candidates: int = 4
    screen_top: int | None = None


class Matcher:
    """Match queries against a catalogue.

    Parameters
    ----------
    catalogue : Catalogue
    score_model : ScoreModel, optional
        Defaults to the calibrated model shipped with tunetrace.
    settings : MatchSettings, optional
    verify_settings : VerifySettings, optional
    """

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
        limit_blas_threads()  # small products: a spinning BLAS thread only takes a core away

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
        )

    def candidates(
        self,
        features: Features,
        searcher: VectorSearcher | None = None,
        *,
        exclude_keys: frozenset[int] = frozenset(),
    ) -> list[Candidate]:
        """Candidate places of a query, searched as this matcher's settings say.

        Parameters
        ----------
        features : Features
        searcher : VectorSearcher, optional
            Another vector index to search (default: the catalogue's own).
        exclude_keys : frozenset of int
            References left out of the search.

        Returns
        -------
        candidates : list of Candidate
            Best first.
        """
        return find_candidates(
            features,
            self.catalogue if searcher is None else searcher,
            params=self.catalogue.params,
            n_neighbours=self.settings.n_neighbours,
            max_candidates=self.settings.max_candidates,
            min_vote_ratio=self.settings.min_vote_ratio,
            other_rates=self.settings.other_tempo_ratios,
            per_reference=self.settings.places_per_reference,
            exclude_keys=exclude_keys,
        )

    def verify(
        self,
        features: Features,
        *,
        exclude_keys: frozenset[int] = frozenset(),
        timings: dict[str, float] | None = None,
    ) -> list[Verification]:
        """All verified candidates of a query, scored, best first (nothing filtered).

        ``exclude_keys`` are references left out of the search (a self-scan's own reference).
        When ``timings`` is given, the seconds spent in the candidate search and in the
        verification are stored in it under ``"search"`` and ``"verification"``.
        """
        started = time.perf_counter()
        self.catalogue.refresh()
        params = self.catalogue.params
        candidates = self.candidates(features, exclude_keys=exclude_keys)
        searched = time.perf_counter()
        query = prepare_query(features, self.verify_settings)

        retimed = _one_ratio_each(candidates, self.settings.retimed_candidates)
        # Each reference is read once, all of them side by side, before any is aligned: a
        # reference's places and tempo ratios follow each other in ``retimed``, and threads
        # aligning them together would each derive it.
        keys = list(dict.fromkeys(candidate.reference_key for candidate in retimed))
        read = dict(zip(keys, map_in_threads(self._reference_features, keys), strict=True))
        # a reference removed (or replaced) since the index was searched is no candidate
        references = {key: features for key, features in read.items() if features is not None}
        retimed = [c for c in retimed if c.reference_key in references]

        def align(candidate: Candidate) -> ChromaAlignment | None:
            reference = references[candidate.reference_key]
            return align_on_chroma(query, reference, candidate, settings=self.verify_settings)

        def screen(alignment: ChromaAlignment) -> tuple[float, ChromaAlignment, Screening]:
            reference = references[alignment.candidate.reference_key]
            screening = screen_alignment(
                query, reference, alignment, params=params, settings=self.verify_settings
            )
            return screening.value, alignment, screening

        def verify_screened(item: tuple[float, ChromaAlignment, Screening]) -> Verification | None:
            _, alignment, screening = item
            return verify_candidate(
                query,
                references[alignment.candidate.reference_key],
                alignment,
                params=params,
                settings=self.verify_settings,
                screening=screening,
            )

        # in candidate order whatever the threads, so that ties resolve as in one thread
        alignments = [a for a in map_in_threads(align, retimed) if a is not None]
        if self.settings.screen_top is not None:
            alignments.sort(key=lambda a: -a.chroma_similarity)  # stable: ties keep their order
            alignments = alignments[: self.settings.screen_top]
        screened = map_in_threads(screen, alignments)
        screened.sort(key=lambda item: -item[0])
        verifications = [
            _with_score(verification, self.score_model.score(verification))
            for verification in map_in_threads(
                verify_screened, screened[: self.settings.verify_top]
            )
            if verification is not None
        ]
        verifications.sort(key=lambda v: -v.score)
        if timings is not None:
            timings["search"] = searched - started
            timings["verification"] = time.perf_counter() - searched
        return verifications

    def _reference_features(self, key: int) -> Features | None:
        """A candidate reference's stored features, ``None`` if it has been removed."""
        try:
            return self.catalogue.features(key)
        except ReferenceNotFoundError:
            return None

    def match_features(
        self,
        features: Features,
        *,
        top: int = 5,
        min_score: float | None = None,
        exclude_keys: frozenset[int] = frozenset(),
    ) -> list[Match]:
        """Probable copies among the catalogue's references, best first.

        A reference's best verification decides its score and estimates. Other verifications
        of the same reference at another offset, with the same tempo ratio and pitch shift,
        add their matched segments: a copy with a section cut out, repeated or moved matches
        its reference in several pieces.
        """
        threshold = self.default_min_score if min_score is None else min_score
        by_reference: dict[int, list[Verification]] = {}
        for verification in self.verify(features, exclude_keys=exclude_keys):  # best first
            by_reference.setdefault(verification.reference_key, []).append(verification)
        matches = []
        for verifications in by_reference.values():
            best = verifications[0]
            if best.score < threshold:
                continue
            segments = _merge_segments(best, verifications[1:])
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


#: Other verifications of a reference join its match when their estimates agree this closely.
SAME_TEMPO_TOLERANCE = 0.03
SAME_PITCH_TOLERANCE_SEMITONES = 0.5
#: Segments of two alignments may share this much query time at a cut (edges are blurred).
MAX_SEGMENT_OVERLAP_S = 1.0


def _one_ratio_each(candidates: list[Candidate], retimed: int) -> list[Candidate]:
    """The candidates with the first ``retimed`` split into one candidate per tempo ratio."""
    out = []
    for number, candidate in enumerate(candidates):
        out.append(replace(candidate, other_alignments=()))
        if number < retimed:
            out.extend(
                replace(candidate, tempo_ratio=ratio, offset_frames=offset, other_alignments=())
                for ratio, offset in candidate.other_alignments
            )
    return out


def covered_seconds(segments: list[Segment]) -> float:
    """Query seconds inside the union of the segments."""
    covered, reach = 0.0, float("-inf")
    for segment in sorted(segments, key=lambda s: s.query_start_s):
        start = max(segment.query_start_s, reach)
        if segment.query_end_s > start:
            covered += segment.query_end_s - start
        reach = max(reach, segment.query_end_s)
    return covered


def _merge_segments(best: Verification, others: list[Verification]) -> list[Segment]:
    """The best verification's segments plus non-overlapping ones of consistent others."""
    segments = list(best.segments)
    for other in others:
        consistent = (
            abs(other.tempo_ratio / best.tempo_ratio - 1) <= SAME_TEMPO_TOLERANCE
            and abs(other.spectral_shift_semitones - best.spectral_shift_semitones)
            <= SAME_PITCH_TOLERANCE_SEMITONES
        )
        if not consistent:
            continue
        for segment in other.segments:
            overlaps = any(
                min(segment.query_end_s, kept.query_end_s)
                - max(segment.query_start_s, kept.query_start_s)
                > MAX_SEGMENT_OVERLAP_S
                for kept in segments
            )
            if not overlaps:
                segments.append(segment)
    return sorted(segments, key=lambda s: s.query_start_s)


def _with_score(verification: Verification, score: float) -> Verification:
    return replace(verification, score=score)
