"""Partial copies: uploads that hold only sections of catalogue works.

    python -m benchmarks.partial_copies --size quick|full [--split calibration|evaluation|both]

Every query is built from real corpus audio (``benchmarks.corpus``). Copied sections are cut
from catalogue tracks and altered with sox, Rubber Band (R2 and R3), FFmpeg or librosa
(``benchmarks.alter``): time-stretch and speed change 0.5-2.0, pitch shifts in (-6, 6],
some with a codec, noise or an effect on top. Filler is unaltered or lightly processed
(gain, MP3 at 128 kbit/s) music from corpus tracks outside the catalogue, from another
package than the copied work's whenever the split has one.

Families
--------
``section``
    one altered section of 8, 10, 20 or 45 s at a random place in an upload of 30 s to
    5 min (the total length is drawn per query);
``medley2``, ``medley3``
    two or three sections of 15-40 s of different works, each altered its own way, back to
    back or with 1-5 s of filler between;
``loop``
    one altered section of 10-15 s played 3 or 4 times, with 2-10 s of filler between;
``padded``
    a whole catalogue track (or its first 2-4 min) altered, with 10-60 s of unrelated intro,
    outro or both;
``negative``
    whole tracks outside the catalogue (their full length, at most 10 min; after one plain
    pass over the split's tracks, altered ones, half of them slowed down) and medleys of 2-3
    sections of such tracks, some altered.

Every query's truth lists its sections (work, query and reference times, tempo ratio, pitch
shift, tool); query times come from the sample counts of the generated pieces, measured
after each tool ran. Sources are split by track as the suite does
(``benchmarks.queries.split_of``): calibration queries are for fitting thresholds,
evaluation queries for the figures. tunetrace matches with no threshold (two
single-threaded worker processes) and the raw rows are kept in the results, so thresholds
can be refitted offline; figures use the shipped threshold (``benchmarks.partial_metrics``).

Results: ``benchmarks/results/partial.json`` and ``partial.md`` (``partial-full.*`` for the
full size). Audio is cached in ``$TUNETRACE_BENCH_CACHE/partial-queries`` (default
``~/.cache/tunetrace-bench``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
from tunetrace.index.catalogue import Catalogue

from benchmarks import corpus
from benchmarks import partial_metrics as pm
from benchmarks.alter import Alteration, apply
from benchmarks.corpus import Track
from benchmarks.grid import CODECS, SPEEDERS, STRETCHERS
from benchmarks.queries import in_catalogue, read_excerpt, split_of
from benchmarks.run_benchmark import CACHE, build_catalogue, list_tracks
from benchmarks.run_info import run_info
from benchmarks.suite_metrics import shares_material
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher
from tunetrace.report import report_to_dict
from tunetrace.scoring import ScoreModel
from tunetrace.threads import use_one_thread

logger = logging.getLogger("benchmarks.partial_copies")
RESULTS = Path(__file__).parent / "results"
SPLITS = ("calibration", "evaluation")
#: Queries per family and split (``section``: per section length).
SIZES: dict[str, dict[str, int]] = {
    "quick": {"section": 3, "medley2": 6, "medley3": 6, "loop": 6, "padded": 8, "negative": 30},
    "full": {
        "section": 20,
        "medley2": 30,
        "medley3": 30,
        "loop": 30,
        "padded": 40,
        "negative": 300,
    },
}
SECTION_S = (8.0, 10.0, 20.0, 45.0)
UPLOAD_S = (30.0, 300.0)
MEDLEY_SECTION_S = (15.0, 40.0)
LOOP_SECTION_S = (10.0, 15.0)
PADDING_S = (10.0, 60.0)
MAX_UPLOAD_S = 600.0
#: Uploads are written as mono FLAC at this rate (tunetrace analyses 8 kHz audio).
UPLOAD_RATE_HZ = 22050
#: Each piece is levelled to this RMS, then moved by a random gain of up to 3 dB.
PIECE_RMS = 0.1
FADE_S = 0.01
FILLER_LIGHT = Alteration("filler", "copy", codec="mp3@128k")
EFFECTS = ("eq_bass", "eq_treble", "reverb")
NOISE_SNR_DB = (5.0, 10.0, 20.0)
#: Version of the generation code: cached uploads of another version are made again.
GENERATOR = 3
#: A copied section must have sound (100-ms frames above :data:`SILENCE_DBFS`) in at least
#: this fraction of its frames; a silent stretch of a work is not a copy anyone could find.
MIN_ACTIVE_FRACTION = 0.8
SILENCE_DBFS = -50.0
#: Other places tried for a copied section that falls on silence.
PLACE_TRIES = 20
#: Matches kept per report in the rows (the figures keep those above the threshold).
ROW_TOP = 10


@dataclass(frozen=True)
class Piece:
    """One stretch of an upload, cut from a source track.

    ``role`` is ``"copy"`` (a section of a catalogue work: part of the truth), ``"filler"``
    or ``"negative"`` (material the catalogue does not hold). ``start_s`` and ``span_s`` are
    seconds of the source, ``source_s`` its whole length; ``repeat_of`` names an earlier piece
    whose audio this one repeats.
    """

    source_id: str
    path: str
    start_s: float
    span_s: float
    role: str
    alteration: Alteration | None = None
    gain_db: float = 0.0
    length_label: str = ""
    repeat_of: int | None = None
    source_s: float = 0.0


@dataclass(frozen=True)
class PartialPlan:
    """One planned upload: its pieces in playing order."""

    number: int
    split: str
    family: str
    label: str
    negative: bool
    pieces: tuple[Piece, ...]
    upload_s: float | None = None

    @property
    def digest(self) -> str:
        """Short digest of everything that decides the upload's audio."""
        text = f"{GENERATOR}|{dataclasses.replace(self, number=0)!r}"
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _pitch(rng: random.Random) -> float:
    semitones = rng.uniform(-6.0, 6.0)
    return 6.0 if semitones <= -6.0 else round(semitones, 2)


def draw_alteration(rng: random.Random, *, slower: bool = False) -> Alteration:
    """A random alteration of a copied section: stretch, speed, pitch or both, plus extras.

    Parameters
    ----------
    rng : random.Random
    slower : bool
        Draw only slowdowns (tempo ratio 0.5-0.8: the copy lasts longer than its source).

    Returns
    -------
    alteration : Alteration
        Its ``family`` is the kind (``stretch``, ``speed``, ``pitch``, ``stretch+pitch``).
        One in four also has a codec, one in five noise, one in five an effect.
    """
    kinds = ("stretch", "speed") if slower else ("stretch", "speed", "pitch", "stretch+pitch")
    kind = rng.choice(kinds)
    tempo = _log_uniform(rng, 0.5, 0.8) if slower else _log_uniform(rng, 0.5, 2.0)
    tempo = round(tempo, 3)
    if kind == "stretch":
        alteration = Alteration(kind, rng.choice(STRETCHERS), tempo_ratio=tempo)
    elif kind == "speed":
        alteration = Alteration(kind, rng.choice(SPEEDERS), tempo_ratio=tempo, resample=True)
    elif kind == "pitch":
        alteration = Alteration(kind, rng.choice(STRETCHERS), pitch_semitones=_pitch(rng))
    else:
        alteration = Alteration(
            kind,
            rng.choice(STRETCHERS),
            tempo_ratio=round(_log_uniform(rng, 0.7, 1.4), 3),
            pitch_semitones=_pitch(rng),
        )
    if rng.random() < 0.25:
        alteration = dataclasses.replace(alteration, codec=rng.choice(CODECS))
    if rng.random() < 0.2:
        alteration = dataclasses.replace(
            alteration,
            noise_snr_db=rng.choice(NOISE_SNR_DB),
            noise_color=rng.choice(("white", "pink")),
        )
    if rng.random() < 0.2:
        alteration = dataclasses.replace(alteration, effect=rng.choice(EFFECTS))
    return alteration


def _package(source_id: str) -> str:
    return source_id.split("/")[0]


class _Planner:
    """Seeded drawing of one split's uploads."""

    def __init__(self, tracks: list[Track], split: str, seed: int) -> None:
        self.split = split
        self.rng = random.Random(f"partial-{seed}-{split}")
        self.inside = [t for t in tracks if in_catalogue(t) and split_of(t) == split]
        self.outside = [t for t in tracks if not in_catalogue(t) and split_of(t) == split]
        if not self.inside or not self.outside:
            raise ValueError(f"the {split} split needs tracks inside and outside the catalogue")

    def filler(self, seconds: float, avoid: set[str]) -> list[Piece]:
        """Pieces of outside tracks, ``seconds`` long in all, from packages not in ``avoid``."""
        pieces: list[Piece] = []
        left = seconds
        while left > 0.05:
            pool = [t for t in self.outside if t.package not in avoid] or self.outside
            track = self.rng.choice(pool)
            take = min(left, track.duration_s - 2.0)
            start = self.rng.uniform(1.0, max(1.0, track.duration_s - take - 1.0))
            light = FILLER_LIGHT if self.rng.random() < 0.3 else None
            gain = self.rng.uniform(-3.0, 3.0)
            pieces.append(
                Piece(track.track_id, str(track.path), start, take, "filler", light, gain)
            )
            left -= take
        return pieces

    def copy(
        self,
        track: Track,
        query_s: float,
        label: str,
        alteration: Alteration | None = None,
        *,
        start_s: float | None = None,
    ) -> Piece:
        """An altered section lasting about ``query_s`` seconds in the upload."""
        alteration = alteration or draw_alteration(self.rng)
        span = min(query_s * alteration.tempo_ratio, track.duration_s - 1.0)
        if start_s is None:
            start_s = self.rng.uniform(3.0, max(3.0, track.duration_s - span - 3.0))
        return Piece(
            track.track_id,
            str(track.path),
            start_s,
            span,
            "copy",
            alteration,
            self.rng.uniform(-3.0, 3.0),
            label,
            source_s=track.duration_s,
        )

    def work(self, query_s: float, tempo: float = 2.0, exclude: tuple[str, ...] = ()) -> Track:
        """A catalogue track long enough for ``query_s`` seconds at any tempo up to ``tempo``."""
        pool = [
            t
            for t in self.inside
            if t.duration_s >= query_s * tempo + 8.0
            and t.track_id not in exclude
            and not any(shares_material(t.track_id, other) for other in exclude)
        ]
        return self.rng.choice(pool or self.inside)

    def section(self, query_s: float) -> tuple[list[Piece], float]:
        track = self.work(query_s)
        piece = self.copy(track, query_s, f"{query_s:g} s")
        upload = _log_uniform(self.rng, max(UPLOAD_S[0], query_s + 4.0), UPLOAD_S[1])
        before = self.rng.uniform(0.0, upload - query_s)
        avoid = {track.package}
        pieces = [
            *self.filler(before, avoid),
            piece,
            *self.filler(upload - query_s - before, avoid),
        ]
        return pieces, round(upload, 2)

    def medley(self, works: int) -> list[Piece]:
        chosen: list[Track] = []
        lengths = [self.rng.uniform(*MEDLEY_SECTION_S) for _ in range(works)]
        for query_s in lengths:
            chosen.append(self.work(query_s, exclude=tuple(t.track_id for t in chosen)))
        gaps = self.rng.random() < 0.5
        avoid = {t.package for t in chosen}
        pieces: list[Piece] = []
        for number, (track, query_s) in enumerate(zip(chosen, lengths, strict=True)):
            if number and gaps:
                pieces += self.filler(self.rng.uniform(1.0, 5.0), avoid)
            label = "15-25 s" if query_s < 25.0 else "25-40 s"
            pieces.append(self.copy(track, query_s, label))
        return pieces

    def loop(self) -> list[Piece]:
        query_s = self.rng.uniform(*LOOP_SECTION_S)
        track = self.work(query_s)
        avoid = {track.package}
        first = self.copy(track, query_s, "10-15 s")
        pieces: list[Piece] = []
        if self.rng.random() < 0.5:
            pieces += self.filler(self.rng.uniform(2.0, 20.0), avoid)
        index = len(pieces)
        pieces.append(first)
        for _ in range(self.rng.choice((3, 4)) - 1):
            pieces += self.filler(self.rng.uniform(2.0, 10.0), avoid)
            pieces.append(dataclasses.replace(first, repeat_of=index))
        if self.rng.random() < 0.5:
            pieces += self.filler(self.rng.uniform(2.0, 20.0), avoid)
        return pieces

    def padded(self) -> tuple[list[Piece], str]:
        track = self.work(120.0, tempo=1.0)
        alteration = draw_alteration(self.rng)
        whole = self.rng.random() < 0.5 and track.duration_s / alteration.tempo_ratio <= 480.0
        span = track.duration_s if whole else min(self.rng.uniform(120.0, 240.0), track.duration_s)
        span = min(span, (MAX_UPLOAD_S - 60.0) * alteration.tempo_ratio)
        label = "whole track" if whole else "first 2-4 min"
        piece = Piece(track.track_id, str(track.path), 0.0, span, "copy", alteration, 0.0, label)
        where = self.rng.choice(("intro", "outro", "both"))
        avoid = {track.package}
        pieces = [piece]
        if where in ("intro", "both"):
            pieces = [*self.filler(self.rng.uniform(*PADDING_S), avoid), *pieces]
        if where in ("outro", "both"):
            pieces += self.filler(self.rng.uniform(*PADDING_S), avoid)
        return pieces, f"{label}, {where}"

    def negative_whole(self, track: Track, altered: bool) -> list[Piece]:
        alteration = draw_alteration(self.rng, slower=self.rng.random() < 0.5) if altered else None
        tempo = alteration.tempo_ratio if alteration else 1.0
        span = min(track.duration_s, MAX_UPLOAD_S * tempo - 1.0)
        return [Piece(track.track_id, str(track.path), 0.0, span, "negative", alteration)]

    def negative_medley(self) -> list[Piece]:
        count = self.rng.choice((2, 3))
        tracks = self.rng.sample(self.outside, min(count, len(self.outside)))
        pieces = []
        for track in tracks:
            alteration = draw_alteration(self.rng) if self.rng.random() < 0.5 else None
            query_s = self.rng.uniform(*MEDLEY_SECTION_S)
            span = min(query_s * (alteration.tempo_ratio if alteration else 1.0), track.duration_s)
            start = self.rng.uniform(1.0, max(1.0, track.duration_s - span - 1.0))
            gain = self.rng.uniform(-3.0, 3.0)
            pieces.append(
                Piece(track.track_id, str(track.path), start, span, "negative", alteration, gain)
            )
        return pieces


def plan_split(
    tracks: list[Track], split: str, counts: dict[str, int], seed: int
) -> list[PartialPlan]:
    """The seeded plan of one split's uploads.

    Parameters
    ----------
    tracks : list of Track
        The whole corpus (the split and the catalogue membership are taken from each id).
    split : str
        ``"calibration"`` or ``"evaluation"``.
    counts : dict
        Uploads per family (``section``: per section length), as in :data:`SIZES`.
    seed : int

    Returns
    -------
    plans : list of PartialPlan
    """
    planner = _Planner(tracks, split, seed)
    drawn: list[tuple[str, str, bool, list[Piece], float | None]] = []
    for query_s in SECTION_S:
        for _ in range(counts["section"]):
            pieces, upload = planner.section(query_s)
            drawn.append(("section", f"{query_s:g} s", False, pieces, upload))
    for family, works in (("medley2", 2), ("medley3", 3)):
        for _ in range(counts[family]):
            drawn.append((family, family, False, planner.medley(works), None))
    for _ in range(counts["loop"]):
        drawn.append(("loop", "loop", False, planner.loop(), None))
    for _ in range(counts["padded"]):
        pieces, label = planner.padded()
        drawn.append(("padded", label, False, pieces, None))
    wholes = math.ceil(counts["negative"] * 0.6)
    order = planner.rng.sample(planner.outside, len(planner.outside))
    for number in range(wholes):
        track = order[number % len(order)]
        pieces = planner.negative_whole(track, altered=number >= len(order))
        drawn.append(("negative", "whole track", True, pieces, None))
    for _ in range(counts["negative"] - wholes):
        drawn.append(("negative", "medley", True, planner.negative_medley(), None))
    return [
        PartialPlan(number, split, family, label, negative, tuple(pieces), upload)
        for number, (family, label, negative, pieces, upload) in enumerate(drawn)
    ]


def _decode(path: Path) -> np.ndarray:
    """Mono samples of any file the tools wrote, at :data:`UPLOAD_RATE_HZ`."""
    raw = subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(path)),
            *("-ac", "1", "-ar", str(UPLOAD_RATE_HZ), "-f", "f32le", "-"),
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.float32).copy()


def active_fraction(samples: np.ndarray, rate: int) -> float:
    """Fraction of 100-ms frames of ``samples`` (shape (n, channels)) louder than silence."""
    frame = max(1, rate // 10)
    count = len(samples) // frame
    if count == 0:
        return 0.0
    frames = samples[: count * frame].reshape(count, frame, -1).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=(1, 2)))
    return float(np.mean(rms > 10 ** (SILENCE_DBFS / 20)))


def _sounding_excerpt(piece: Piece, seed: int) -> tuple[np.ndarray, int, float]:
    """The piece's source excerpt, moved (seeded) off silence if it is a copied section.

    Returns
    -------
    samples : np.ndarray [shape=(n, channels)]
    rate : int
    start_s : float
        Where the excerpt starts in the source (the planned start unless it was moved).
    """
    samples, rate = read_excerpt(Path(piece.path), piece.start_s, piece.span_s)
    if piece.role != "copy" or piece.start_s == 0.0:  # whole tracks keep their silences
        return samples, rate, piece.start_s
    rng = random.Random(seed)
    start = piece.start_s
    for _ in range(PLACE_TRIES):
        if active_fraction(samples, rate) >= MIN_ACTIVE_FRACTION:
            break
        start = rng.uniform(3.0, max(3.0, piece.source_s - piece.span_s - 3.0))
        samples, rate = read_excerpt(Path(piece.path), start, piece.span_s)
    return samples, rate, start


def _render_piece(piece: Piece, seed: int, folder: Path) -> tuple[np.ndarray, float, float]:
    """The piece's samples (mono, upload rate, levelled), the source seconds it took and
    where they start in the source."""
    samples, rate, start_s = _sounding_excerpt(piece, seed)
    taken_s = len(samples) / rate
    mono = samples.mean(axis=1).astype(np.float32)
    if rate != UPLOAD_RATE_HZ:
        mono = soxr.resample(mono, rate, UPLOAD_RATE_HZ).astype(np.float32)
    if piece.alteration is not None:
        source = folder / "piece.wav"
        soundfile.write(str(source), mono, UPLOAD_RATE_HZ)
        kind = (piece.alteration.codec or "").split("@")[0]
        suffix = {"mp3": ".mp3", "aac": ".m4a", "opus": ".opus"}.get(kind, ".wav")
        target = folder / f"altered{suffix}"
        apply(piece.alteration, source, target, seed=seed)
        mono = _decode(target)
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2))) if len(mono) else 0.0
    if rms > 1e-5:
        mono = mono * (PIECE_RMS / rms * 10 ** (piece.gain_db / 20))
    fade = min(int(FADE_S * UPLOAD_RATE_HZ), len(mono) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        mono[:fade] *= ramp
        mono[-fade:] *= ramp[::-1]
    return mono.astype(np.float32), taken_s, start_s


def _make(job: tuple[PartialPlan, Path]) -> dict | None:
    """Generate one upload (or reuse it from the cache) and return its truth."""
    plan, folder = job
    stem = f"{plan.split[:3]}-{plan.number:04d}_{plan.family}_{plan.digest}"
    audio_path, truth_path = folder / f"{stem}.flac", folder / f"{stem}.json"
    if audio_path.exists() and truth_path.exists():
        return json.loads(truth_path.read_text())
    rendered: list[tuple[np.ndarray, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for number, piece in enumerate(plan.pieces):
                if piece.repeat_of is not None:
                    rendered.append(rendered[piece.repeat_of])
                else:
                    seed = plan.number * 100 + number
                    rendered.append(_render_piece(piece, seed, Path(tmp)))
    except (subprocess.CalledProcessError, RuntimeError, ValueError) as exc:
        logger.warning("could not make %s: %s", stem, getattr(exc, "stderr", exc))
        return None
    sections, fillers = [], []
    position = 0
    for piece, (samples, taken_s, source_start_s) in zip(plan.pieces, rendered, strict=True):
        start_s, end_s = position / UPLOAD_RATE_HZ, (position + len(samples)) / UPLOAD_RATE_HZ
        position += len(samples)
        if piece.role != "copy":
            fillers.append(
                {
                    "source_id": piece.source_id,
                    "role": piece.role,
                    "query_start_s": round(start_s, 4),
                    "query_end_s": round(end_s, 4),
                    "source_start_s": round(piece.start_s, 4),
                    "alteration": piece.alteration.name if piece.alteration else None,
                }
            )
            continue
        alteration = piece.alteration or Alteration("copy", "copy")
        sections.append(
            {
                "work_id": piece.source_id,
                "query_start_s": round(start_s, 4),
                "query_end_s": round(end_s, 4),
                "reference_start_s": round(source_start_s, 4),
                "reference_end_s": round(source_start_s + taken_s, 4),
                "tempo_ratio": alteration.tempo_ratio,
                "pitch_semitones": round(alteration.true_pitch_semitones, 4),
                "tool": alteration.tool,
                "alteration": alteration.name,
                "length_label": piece.length_label,
                "repeat": piece.repeat_of is not None,
            }
        )
    upload = np.concatenate([samples for samples, _, _ in rendered])
    peak = float(np.abs(upload).max()) if len(upload) else 0.0
    if peak > 0.99:
        upload *= 0.99 / peak
    truth = {
        "path": str(audio_path),
        "split": plan.split,
        "number": plan.number,
        "family": plan.family,
        "label": plan.label,
        "negative": plan.negative,
        "duration_s": round(len(upload) / UPLOAD_RATE_HZ, 4),
        "drawn_upload_s": plan.upload_s,
        "sections": sections,
        "fillers": fillers,
        "sources": sorted({p.source_id for p in plan.pieces}),
    }
    soundfile.write(str(audio_path), upload, UPLOAD_RATE_HZ, subtype="PCM_16")
    truth_path.write_text(json.dumps(truth, indent=1))
    return truth


def _repeatable_tools() -> None:
    """Make sox seed its dither with a fixed number, so that an upload can be made again
    bit for bit (sox dithers whenever it writes 16-bit samples)."""
    os.environ["SOX_OPTS"] = "-R"


def make_uploads(plans: list[PartialPlan], folder: Path, *, workers: int = 2) -> list[dict]:
    """Generate (or reuse from ``folder``) every planned upload.

    Parameters
    ----------
    plans : list of PartialPlan
    folder : Path
        Cache folder (outside the repository).
    workers : int
        Generating processes.

    Returns
    -------
    truths : list of dict
        One per upload that could be made (a tool failing on one piece drops that upload).
    """
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers, initializer=_repeatable_tools) as pool:
        made = list(pool.map(_make, [(plan, folder) for plan in plans], chunksize=1))
    return [truth for truth in made if truth is not None]


_matcher: Matcher | None = None


def _open_matcher(directory: str) -> None:
    global _matcher
    use_one_thread()
    _matcher = Matcher(Catalogue(directory, read_only=True))


def _match(truth: dict) -> dict:
    assert _matcher is not None
    try:
        report = _matcher.match_path(truth["path"], min_score=0.0, top=ROW_TOP)
    except TunetraceError as exc:
        return {"truth": truth, "error": str(exc)}
    return {"truth": truth, "report": report_to_dict(report)}


def match_uploads(directory: Path, truths: list[dict], workers: int) -> list[dict]:
    """Rows (truth and report with no threshold) of every upload, from ``workers``
    single-threaded processes."""
    with ProcessPoolExecutor(
        workers, initializer=_open_matcher, initargs=(str(directory),)
    ) as pool:
        return list(pool.map(_match, truths, chunksize=1))


def latency_alone(directory: Path, rows: list[dict]) -> dict[str, float]:
    """p50 and p95 (ms) of the 4-minute uploads among ``rows`` matched again by one
    single-threaded process with the machine otherwise idle, its features cache warmed by a
    first pass over the same uploads (as a service's is by the queries before)."""
    paths = [
        row["truth"]["path"]
        for row in rows
        if "error" not in row
        and pm.FOUR_MINUTES_S[0] <= row["report"]["duration_s"] <= pm.FOUR_MINUTES_S[1]
    ]
    if not paths:
        return {}
    with ProcessPoolExecutor(1, initializer=_open_matcher, initargs=(str(directory),)) as pool:
        elapsed = pool.submit(_elapsed_second_pass, paths).result()
    return {
        "p50_ms": float(np.median(elapsed) * 1000),
        "p95_ms": float(np.percentile(elapsed, 95) * 1000),
        "n": len(elapsed),
    }


def _elapsed_second_pass(paths: list[str]) -> list[float]:
    assert _matcher is not None
    for path in paths:
        _matcher.match_path(path, min_score=0.0, top=ROW_TOP)
    return [_matcher.match_path(path, min_score=0.0, top=ROW_TOP).elapsed_s for path in paths]


def figures(rows: list[dict], threshold: float) -> dict:
    """Every figure of one split's rows at ``threshold``."""
    return {
        "sections": pm.section_table(rows, threshold),
        "medleys": pm.medley_table(rows, threshold),
        "loops": pm.loop_table(rows, threshold),
        "hygiene": pm.hygiene_table(rows, threshold),
        "false_positives": pm.false_positive_table(rows, threshold),
        "negative_best_scores": pm.negative_scores(rows),
        "estimates": pm.estimate_errors(rows, threshold),
        "latency": pm.latency_table(rows),
        "unusable_uploads": sum(1 for r in rows if "error" in r),
    }


def _counts(truths: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(t["family"] for t in truths).items()))


def catalogue_for(tracks: list[Track], size: str, workers: int) -> tuple[Path, str]:
    """The suite's catalogue when rendered pieces can be made here, else the corpus one.

    Returns
    -------
    directory : Path
    description : str
        Which catalogue, and why the corpus one when it is that.
    """
    from benchmarks import renders, suite

    reason = renders.available()
    if reason is None:
        count = int(suite.SIZES[size]["renders"])  # type: ignore[arg-type]
        works = renders.render_works(count, CACHE, workers=workers)
        directory, _ = suite.suite_catalogue(tracks, works)
        return directory, (
            f"the suite's catalogue at {size} size (corpus tracks and {count} rendered pieces)"
        )
    logger.warning("no rendered pieces (%s): matching against the corpus catalogue", reason)
    directory, _ = build_catalogue(tracks)
    return directory, f"the corpus catalogue only (rendered pieces unavailable: {reason})"


def run(
    directory: Path,
    tracks: list[Track],
    *,
    size: str,
    seed: int,
    splits: tuple[str, ...] = SPLITS,
    workers: int = 2,
    catalogue: str = "the suite's catalogue",
) -> dict:
    """Plan, generate and match the partial-copy uploads, write the results, return them.

    Parameters
    ----------
    directory : Path
        Catalogue to match against.
    tracks : list of Track
        The corpus.
    size : str
        ``"quick"`` or ``"full"`` (:data:`SIZES`).
    seed : int
    splits : tuple of str
        Splits to generate and match.
    workers : int
        Generating and matching processes.
    catalogue : str
        What ``directory`` is, for the results.

    Returns
    -------
    result : dict
        Run information, figures per split and the raw rows.
    """
    started = time.perf_counter()
    threshold = ScoreModel.load().threshold
    with Catalogue(directory, read_only=True) as opened:
        info = opened.info()
        references = opened.count()
    result: dict = {
        **run_info(),
        "size": size,
        "seed": seed,
        "settings": SIZES[size],
        "threshold": threshold,
        "edge_tolerance_s": pm.EDGE_TOLERANCE_S,
        "catalogue": {
            "description": catalogue,
            "references": references,
            "audio_hours": info.get("audio_hours"),
        },
        "queries": {},
        "figures": {},
        "timing_s": {},
        "rows": {},
    }
    for split in splits:
        split_started = time.perf_counter()
        plans = plan_split(tracks, split, SIZES[size], seed)
        truths = make_uploads(
            plans, CACHE / "partial-queries" / f"{split}-seed{seed}", workers=workers
        )
        made = time.perf_counter()
        logger.info("%s split: %d uploads made, matching them", split, len(truths))
        rows = match_uploads(directory, truths, workers)
        matched = time.perf_counter()
        result["queries"][split] = _counts(truths)
        result["figures"][split] = figures(rows, threshold)
        result["figures"][split]["latency_alone"] = latency_alone(directory, rows)
        result["timing_s"][split] = {"generate": made - split_started, "match": matched - made}
        result["rows"][split] = rows
    result["timing_s"]["total"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "partial" if size == "quick" else f"partial-{size}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(line) + " |" for line in lines),
        "",
    ]


def split_markdown(result: dict, split: str, heading: str = "###") -> list[str]:
    """Markdown tables of one split's figures."""
    fig = result["figures"][split]
    out = [f"{heading} {split.capitalize()} split", ""]
    out += [f"{heading}# Sections found and located", ""]
    out += _table(
        ["family / section length", "located", "found", "sections"],
        [
            [key, _pct(v["located"]), _pct(v["found"]), str(v["n"])]
            for key, v in fig["sections"].items()
        ],
    )
    out += [f"{heading}# Medleys and loops", ""]
    lines = [
        [f, _pct(v["every_work_found"]), _pct(v["every_section_located"]), str(v["n"])]
        for f, v in fig["medleys"].items()
    ]
    out += _table(["family", "every work found", "every section located", "medleys"], lines)
    loops = fig["loops"]
    out += [
        f"Loops: {_pct(loops['repeats_located'])} of {loops['repeats']} repeats located by a "
        f"segment of their own; every repeat located in "
        f"{_pct(loops['loops_with_every_repeat_located'])} of {loops['loops']} loops.",
        "",
    ]
    out += [f"{heading}# Segment hygiene (per query)", ""]
    out += _table(
        [
            "family",
            "stray segments",
            "fragments or duplicates",
            "wrong works",
            "queries with either",
            "n",
        ],
        [
            [
                f,
                f"{v['stray_per_query']:.2f}",
                f"{v['duplicate_per_query']:.2f}",
                f"{v['wrong_work_per_query']:.2f}",
                _pct(v["queries_with_stray_or_duplicate"]),
                str(v["n"]),
            ]
            for f, v in fig["hygiene"].items()
        ],
    )
    out += [f"{heading}# Long negatives", ""]
    out += _table(
        ["upload length / kind", "flagged", "95% upper bound"],
        [
            [k, f"{v['flagged']} of {v['n']}", _pct(v["upper_95"])]
            for k, v in fig["false_positives"].items()
        ],
    )
    scores = fig["negative_best_scores"]
    if scores.get("n"):
        out += [
            f"Best score of each negative (threshold {result['threshold']:.3f}): median "
            f"{scores['p50']:.3f}, p90 {scores['p90']:.3f}, p99 {scores['p99']:.3f}, "
            f"max {scores['max']:.3f} ({scores['n']} negatives).",
            "",
        ]
    out += [f"{heading}# Estimates of located sections", ""]
    out += _table(
        [
            "family",
            "tempo ratio abs error (median)",
            "within 2%",
            "pitch abs error (median)",
            "within 0.3 st",
            "sections",
        ],
        [
            [
                f,
                f"{v['tempo_ratio_abs_error_median']:.4f}",
                _pct(v["tempo_within_2pct"]),
                f"{v['pitch_semitones_abs_error_median']:.2f}",
                _pct(v["pitch_within_0.3"]),
                str(v["n"]),
            ]
            for f, v in fig["estimates"].items()
        ],
    )
    out += [f"{heading}# Latency (one thread per worker, two workers)", ""]
    out += _table(
        ["upload length", "p50 ms", "p95 ms", "uploads"],
        [
            [k, f"{v['p50_ms']:.0f}", f"{v['p95_ms']:.0f}", str(v["n"])]
            for k, v in fig["latency"].items()
        ],
    )
    alone = fig.get("latency_alone")
    if alone:
        out += [
            f"4-min uploads matched again alone (one process, one thread, the other core "
            f"idle, features cache warm): p50 {alone['p50_ms']:.0f} ms, p95 "
            f"{alone['p95_ms']:.0f} ms ({alone['n']} uploads).",
            "",
        ]
    return out


def markdown(result: dict) -> str:
    """The results page: run information, then every split's tables (evaluation first)."""
    counts = "; ".join(
        f"{split}: " + ", ".join(f"{n} {family}" for family, n in families.items())
        for split, families in result["queries"].items()
    )
    lines = [
        "# Partial copies",
        "",
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}), size "
        f"{result['size']}, seed {result['seed']}; matched against "
        f"{result['catalogue']['description']}, {result['catalogue']['references']} "
        f"references; shipped threshold {result['threshold']:.3f}; a section is located when "
        f"a segment of the right work overlaps it with both query edges within "
        f"{result['edge_tolerance_s']:g} s. Uploads: {counts}. Total time "
        f"{result['timing_s']['total'] / 60:.1f} min.",
        "",
    ]
    for split in sorted(result["figures"], key=lambda s: s != "evaluation"):
        lines += split_markdown(result, split, heading="##")
    return "\n".join(lines)


def suite_section(result: dict) -> str:
    """The evaluation split's tables as a section of the suite's results page."""
    lines = [
        "**Partial copies** (evaluation split; `benchmarks/results/partial.md` has both splits "
        f"and how the uploads are made; {result['catalogue']['references']} references, "
        f"threshold {result['threshold']:.3f}, edges within {result['edge_tolerance_s']:g} s)",
        "",
    ]
    if "evaluation" in result["figures"]:
        lines += split_markdown(result, "evaluation", heading="###")[2:]
    return "\n".join(lines)


def summary(result: dict) -> dict:
    """The results without the raw rows (for the suite's results file)."""
    return {k: v for k, v in result.items() if k != "rows"}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--split", choices=[*SPLITS, "both"], default="both")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--catalogue", type=Path, help="catalogue folder (default: the suite's, else the corpus')"
    )
    parser.add_argument(
        "--catalogue-size",
        choices=sorted(SIZES),
        help="size of the suite's catalogue to match against (default: --size)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tracks = corpus.installed_or_exit(list_tracks())
    if args.catalogue:
        directory, description = args.catalogue, f"the catalogue at {args.catalogue}"
    else:
        directory, description = catalogue_for(
            tracks, args.catalogue_size or args.size, args.workers
        )
    splits = SPLITS if args.split == "both" else (args.split,)
    result = run(
        directory,
        tracks,
        size=args.size,
        seed=args.seed,
        splits=splits,
        workers=args.workers,
        catalogue=description,
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
