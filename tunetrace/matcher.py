"""The matcher: query audio -> candidates -> verification -> scored report.

Both front ends (CLI and HTTP API) call :class:`Matcher`; it knows nothing of either.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tunetrace.alteration import classify_alteration
from tunetrace.candidates import find_candidates
from tunetrace.fingerprint.decode import DEFAULT_MAX_DURATION_S, load_audio
from tunetrace.fingerprint.features import Features, extract_features
from tunetrace.index.catalogue import Catalogue
from tunetrace.report import Match, MatchReport
from tunetrace.scoring import ScoreModel
from tunetrace.types import Verification
from tunetrace.verify import (
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
        Screened alignments (best first) verified in full.
    """

    n_neighbours: int = 20
    max_candidates: int = 16
    verify_top: int = 4


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
        return MatchReport(
            query=str(path) if query_name is None else query_name,
            duration_s=features.duration_s,
            elapsed_s=time.perf_counter() - started,
            matches=matches,
        )

    def verify(self, features: Features) -> list[Verification]:
        """All verified candidates of a query, scored, best first (nothing filtered)."""
        self.catalogue.refresh()
        params = self.catalogue.params
        candidates = find_candidates(
            features,
            self.catalogue,
            params=params,
            n_neighbours=self.settings.n_neighbours,
            max_candidates=self.settings.max_candidates,
        )
        query = prepare_query(features, self.verify_settings)
        screened = []
        for candidate in candidates:
            reference = self.catalogue.features(candidate.reference_key)
            alignment = align_on_chroma(query, reference, candidate, settings=self.verify_settings)
            if alignment is None:
                continue
            screening = screen_alignment(
                query, reference, alignment, params=params, settings=self.verify_settings
            )
            screened.append((screening.value, alignment, screening))
        screened.sort(key=lambda item: -item[0])
        verifications = []
        for _, alignment, screening in screened[: self.settings.verify_top]:
            reference = self.catalogue.features(alignment.candidate.reference_key)
            verification = verify_candidate(
                query,
                reference,
                alignment,
                params=params,
                settings=self.verify_settings,
                screening=screening,
            )
            if verification is not None:
                score = self.score_model.score(verification)
                verifications.append(_with_score(verification, score))
        verifications.sort(key=lambda v: -v.score)
        return verifications

    def match_features(
        self, features: Features, *, top: int = 5, min_score: float | None = None
    ) -> list[Match]:
        """Probable copies among the catalogue's references, best first."""
        threshold = self.default_min_score if min_score is None else min_score
        best_per_reference: dict[int, Verification] = {}
        for verification in self.verify(features):
            if verification.score < threshold:
                continue
            best_per_reference.setdefault(verification.reference_key, verification)
        matches = []
        for verification in list(best_per_reference.values())[:top]:
            record = self.catalogue.record_by_key(verification.reference_key)
            matches.append(
                Match(
                    reference_id=record.reference_id,
                    title=record.title,
                    artist=record.artist,
                    score=verification.score,
                    tempo_ratio=verification.tempo_ratio,
                    pitch_shift_semitones=verification.pitch_shift_semitones,
                    alteration=classify_alteration(
                        verification.tempo_ratio, verification.spectral_shift_semitones
                    ),
                    coverage=verification.coverage,
                    segments=verification.segments,
                )
            )
        return matches


def _with_score(verification: Verification, score: float) -> Verification:
    from dataclasses import replace

    return replace(verification, score=score)
