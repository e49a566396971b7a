"""The benchmark suite's query grid: seeded excerpts altered over a fixed grid of amounts.

Every alteration family has a grid of amounts (stretch and speed factors 0.5-2.0, pitch shifts
-12..+12 in fractional steps, codecs and bitrates, noise colours and SNRs, effects and edits,
combinations, excerpt lengths from 5 s to whole tracks). Each grid point gets ``repeats``
queries; the repeats rotate through the tools that can make that alteration and draw their
source and excerpt position from a seeded generator, so a run is reproducible and no figure
rests on one stretching algorithm.

Negative queries come from three kinds of sources outside the catalogue:

``other_track``
    corpus tracks outside the catalogue (mostly from the same packages: same composer, style
    and production as tracks inside);
``same_key_tempo``
    such tracks that share key and tempo (within 4%) with a catalogue track;
``render``
    rendered music21 pieces outside the catalogue while others of the same collection (Bach
    chorales, Palestrina masses: same style, often the same key) are inside.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.alter import Alteration
from benchmarks.queries import query_file_name, write_altered_excerpt

logger = logging.getLogger(__name__)

STRETCH_FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.4, 1.7, 2.0)
PITCH_SEMITONES = (-12, -8.5, -6, -4.5, -2.75, -1, -0.25, 0.5, 1.5, 3.25, 4.5, 6, 8.5, 12)
CODECS = ("mp3@32k", "mp3@64k", "aac@48k", "opus@24k")
NOISES = tuple((color, snr) for color in ("white", "pink") for snr in (0, 5, 10, 20))
EFFECTS = ("eq_bass", "eq_treble", "reverb", "fade")
EDITS = (("insert_silence", 2.0), ("remove_middle", 3.0))
TRIMMED_INTROS_S = (10.0, 30.0)
DURATIONS = (5.0, 10.0, 15.0, 30.0, None)  # None: the whole track
STRETCHERS = ("sox", "rubberband", "rubberband-r3", "ffmpeg", "librosa")
SPEEDERS = ("sox", "ffmpeg", "librosa", "rubberband")
EXCERPT_S = 10.0
#: Families whose amounts are a tempo or speed factor, a pitch shift, or a label.
FAMILIES = (
    "stretch",
    "pitch",
    "speed",
    "codec",
    "noise",
    "effect",
    "edit",
    "trimmed_intro",
    "combo",
    "duration",
)


@dataclass(frozen=True)
class Source:
    """A recording queries are cut from: a corpus track or a rendered piece."""

    source_id: str
    path: Path
    duration_s: float
    group: str


@dataclass(frozen=True)
class SuiteQuery:
    """One generated query and its truth."""

    path: str
    source_id: str
    positive: bool
    family: str
    amount: str
    tool: str
    tempo_ratio: float
    pitch_semitones: float
    reference_start_s: float
    query_s: float
    negative_kind: str | None = None


@dataclass(frozen=True)
class _Plan:
    source: Source
    alteration: Alteration
    amount: str
    start_s: float
    query_s: float | None
    negative_kind: str | None


def _combos(rng: random.Random) -> list[tuple[str, Alteration]]:
    tool = rng.choice(("sox", "rubberband", "ffmpeg", "rubberband-r3"))
    return [
        ("stretch1.15+pitch-2+mp3", Alteration("combo", tool, 1.15, False, -2.0, "mp3@64k")),
        (
            "speed0.85+pink10dB",
            Alteration("combo", rng.choice(SPEEDERS), 0.85, True, 0.0, None, 10.0, "pink"),
        ),
        (
            "stretch0.8+reverb+aac",
            Alteration("combo", tool, 0.8, False, 0.0, "aac@48k", effect="reverb"),
        ),
        (
            "pitch+3.5+eq+opus",
            Alteration("combo", tool, 1.0, False, 3.5, "opus@24k", effect="eq_bass"),
        ),
    ]


def _family_grid(family: str, rep: int, rng: random.Random) -> list[tuple[str, Alteration]]:
    """(amount label, alteration) for every grid point of ``family``.

    The tool of grid point ``i`` in repeat ``rep`` is tool ``(rep + i) mod n``: every tool
    makes some amounts in every repeat, and each amount gets another tool in the next repeat.
    """

    def stretcher(i: int) -> str:
        return STRETCHERS[(rep + i) % len(STRETCHERS)]

    def speeder(i: int) -> str:
        return SPEEDERS[(rep + i) % len(SPEEDERS)]

    if family == "stretch":
        return [
            (f"{f:g}", Alteration(family, stretcher(i), tempo_ratio=f))
            for i, f in enumerate(STRETCH_FACTORS)
        ]
    if family == "pitch":
        return [
            (f"{p:+g}", Alteration(family, stretcher(i), pitch_semitones=p))
            for i, p in enumerate(PITCH_SEMITONES)
        ]
    if family == "speed":
        return [
            (f"{f:g}", Alteration(family, speeder(i), tempo_ratio=f, resample=True))
            for i, f in enumerate(STRETCH_FACTORS)
        ]
    if family == "codec":
        return [(c, Alteration(family, "copy", codec=c)) for c in CODECS]
    if family == "noise":
        return [
            (f"{c} {s} dB", Alteration(family, "copy", noise_snr_db=s, noise_color=c))
            for c, s in NOISES
        ]
    if family == "effect":
        return [(e, Alteration(family, "copy", effect=e)) for e in EFFECTS]
    if family == "edit":
        return [(f"{e} {s:g} s", Alteration(family, "copy", edit=e, edit_s=s)) for e, s in EDITS]
    if family == "trimmed_intro":
        # Handled by the excerpt position: the query starts this far into the track.
        return [(f"{t:g} s", Alteration(family, "copy", effect="fade")) for t in TRIMMED_INTROS_S]
    if family == "combo":
        return _combos(rng)
    if family == "duration":
        return [
            (
                "whole" if d is None else f"{d:g} s",
                Alteration(family, stretcher(i), tempo_ratio=1.1, pitch_semitones=1.0),
            )
            for i, d in enumerate(DURATIONS)
        ]
    raise ValueError(family)


def _excerpt(
    source: Source, alteration: Alteration, amount: str, rng: random.Random
) -> tuple[float, float | None]:
    """Start and query length (None: to the end of the track) for one planned query."""
    if alteration.family == "trimmed_intro":
        return float(amount.split()[0]), 30.0
    if alteration.family == "duration":
        if amount == "whole":
            return 0.0, None
        query_s = float(amount.split()[0])
    else:
        query_s = EXCERPT_S
    span = query_s * alteration.tempo_ratio + (alteration.edit_s if alteration.edit else 0.0)
    return rng.uniform(0, max(0.0, source.duration_s - span - 1)), query_s


def plan_queries(
    positives: list[Source],
    negatives: dict[str, list[Source]],
    *,
    repeats: int,
    negatives_per_kind: int,
    seed: int,
) -> list[_Plan]:
    """The seeded plan of one split: the grid times ``repeats``, then the negatives."""
    rng = random.Random(seed)
    plans = []
    for family in FAMILIES:
        for rep in range(repeats):
            for amount, alteration in _family_grid(family, rep, rng):
                source = rng.choice(positives)
                start, query_s = _excerpt(source, alteration, amount, rng)
                plans.append(_Plan(source, alteration, amount, start, query_s, None))
    negative_families = ("stretch", "pitch", "speed", "codec", "noise", "combo")
    for kind, sources in negatives.items():
        for _ in range(negatives_per_kind if sources else 0):
            family = rng.choice(negative_families)
            amount, alteration = rng.choice(_family_grid(family, rng.randrange(5), rng))
            source = rng.choice(sources)
            start, query_s = _excerpt(source, alteration, amount, rng)
            plans.append(_Plan(source, alteration, amount, start, query_s, kind))
    return plans


def _make(job: tuple[int, _Plan, Path]) -> SuiteQuery | None:
    number, plan, folder = job
    alteration = plan.alteration
    target = folder / query_file_name(
        number, alteration, plan.source.source_id, plan.start_s, plan.query_s
    )
    if plan.query_s is None:
        span = plan.source.duration_s
    else:
        span = plan.query_s * alteration.tempo_ratio
        span += alteration.edit_s if alteration.edit == "remove_middle" else 0.0
    if not target.exists():
        try:
            write_altered_excerpt(plan.source.path, plan.start_s, span, alteration, target, number)
        except (subprocess.CalledProcessError, RuntimeError, ValueError) as exc:
            logger.warning("could not make %s: %s", target.name, getattr(exc, "stderr", exc))
            target.unlink(missing_ok=True)
            return None
    return SuiteQuery(
        path=str(target),
        source_id=plan.source.source_id,
        positive=plan.negative_kind is None,
        family=alteration.family,
        amount=plan.amount,
        tool=alteration.tool,
        tempo_ratio=alteration.tempo_ratio,
        pitch_semitones=alteration.true_pitch_semitones,
        reference_start_s=plan.start_s,
        query_s=round(span / alteration.tempo_ratio, 2),
        negative_kind=plan.negative_kind,
    )


def make_suite_queries(plans: list[_Plan], folder: Path, *, workers: int = 2) -> list[SuiteQuery]:
    """Generate (or reuse from ``folder``) the audio of every planned query.

    Parameters
    ----------
    plans : list
        From :func:`plan_queries`.
    folder : Path
        Cache folder for the generated files (outside the repository).
    workers : int
        Generating processes.

    Returns
    -------
    queries : list of SuiteQuery
        One per plan that could be made (a tool failing on one excerpt drops that query).
    """
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(number, plan, folder) for number, plan in enumerate(plans)]
    with ProcessPoolExecutor(workers) as pool:
        queries = [q for q in pool.map(_make, jobs, chunksize=2) if q is not None]
    (folder / "queries.json").write_text(json.dumps([asdict(q) for q in queries], indent=0))
    return queries
