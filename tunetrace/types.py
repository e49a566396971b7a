"""Data passed between the matching stages, with explicit units."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """A reference position suggested by patch-vector votes.

    Attributes
    ----------
    reference_key : int
        Internal integer key of the reference.
    tempo_ratio : float
        Reference duration / query duration (the grid rate that won the vote).
    offset_frames : float
        Reference frame where the query's first frame lands.
    votes : float
        Vote strength: summed similarity of consistent patch hits per query patch (for a
        query longer than 30 s, those within its best two neighbouring 15-s stretches).
    other_alignments : tuple of (float, float)
        ``(tempo_ratio, offset_frames)`` of weaker vote peaks at the same place with other
        tempo ratios, each with the offset its own votes chose (a ratio off by a few percent
        moves the offset its votes agree on by several frames). Patch vectors pin down where
        a copy sits better than how fast it runs, so the matcher aligns the strongest
        candidates at these ratios too.
    query_span_frames : tuple of (float, float) or None
        First and last query frame (at the query's own tempo) of the patches that voted for
        this place, their densest run when stray votes lie far apart: where in the query the
        copied material sits. ``None`` when unknown.
    """

    reference_key: int
    tempo_ratio: float
    offset_frames: float
    votes: float
    other_alignments: tuple[tuple[float, float], ...] = ()
    query_span_frames: tuple[float, float] | None = None


@dataclass(frozen=True)
class Segment:
    """One matched stretch, in seconds on both time lines.

    Attributes
    ----------
    query_start_s, query_end_s : float
        Where the stretch lies in the query.
    reference_start_s, reference_end_s : float
        Where the same material lies in the reference.
    """

    query_start_s: float
    query_end_s: float
    reference_start_s: float
    reference_end_s: float


@dataclass(frozen=True)
class Verification:
    """Evidence that a query is an altered copy of one reference.

    Attributes
    ----------
    reference_key : int
    tempo_ratio : float
        Reference duration / query duration of the matched material (> 1: the query is faster).
    pitch_shift_semitones : float
        Query pitch minus reference pitch, wrapped to (-6, 6].
    spectral_shift_semitones : float
        The same shift without octave wrapping, as seen on the log-frequency spectrum.
    offset_frames : float
        Reference frame where the query's first frame lands.
    spectral_similarity : float
        Mean frame correlation of aligned log-frequency spectra over the query's sounding frames.
    null_similarity : float
        The same measure with the reference deliberately misaligned (median of several offsets):
        what this query and reference reach by coincidence.
    local_similarity : float
        The spectral measure with the reference misaligned by a second or two: how sharp the
        alignment is (a copy drops away quickly, held notes do not).
    chroma_similarity : float
        Mean frame correlation of aligned, pitch-corrected chroma.
    dynamics_similarity : float
        Correlation of aligned changes of the whitened spectra over time (which partials
        change when), pitch-corrected.
    onset_similarity : float
        The same on the unwhitened spectra: broadband changes (onsets, loudness) count too.
    coverage : float
        Fraction of the query's duration inside matched segments.
    harmonic_change : float
        How much the query's harmony moves inside its matched frames: the mean of one minus
        the correlation of chroma frames ``HARMONIC_LAG_S`` apart (0: one held chord).
    segments : list of Segment
    votes : float
        Candidate-stage vote strength.
    score : float
        Calibrated probability-like score in [0, 1].
    """

    reference_key: int
    tempo_ratio: float
    pitch_shift_semitones: float
    spectral_shift_semitones: float
    offset_frames: float
    spectral_similarity: float
    null_similarity: float
    local_similarity: float
    chroma_similarity: float
    dynamics_similarity: float
    onset_similarity: float
    coverage: float
    harmonic_change: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    votes: float = 0.0
    score: float = 0.0
