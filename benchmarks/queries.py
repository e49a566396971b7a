"""Seeded altered-query sets from the corpus, split into calibration and evaluation.

Tracks are split by a hash of their id: three quarters go into the catalogue, one quarter
stays outside (negative queries). Both groups are halved again into a calibration split (used
only to fit the score model and threshold) and an evaluation split (used only for reported
figures), so no reported query shares a track with the calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from benchmarks.alter import Alteration, apply
from benchmarks.corpus import Track

logger = logging.getLogger(__name__)

#: Track pairs of the corpus that share recorded material. A match between them is correct,
#: so it counts neither as a hit nor as a false positive.
#: - colobot music007 / music009 (found while calibrating): about a third of music007's frames
#:   have a near-identical frame in music009.
#: - singularity By-Product / Inevitable (found as an evaluation "false positive"): 15-s
#:   windows of the original By-Product taken at 15 s and at 120 s both match Inevitable at
#:   the same tempo ratio (1.43) and pitch shift (+2.6 semitones), with strong onset
#:   agreement; By-Product reuses Inevitable's material re-timed and re-pitched.
#: - drascula track2 / track16 (found as evaluation "false positives" at the full size): 15-s
#:   windows of the original track2 starting at 55, 60, 64 and 68 s all match track16 at
#:   tempo ratio 1.07 and no pitch shift (scores 0.99-1.00, 89-97% coverage), each at the
#:   place the ratio predicts (track16 50.8-79 s); windows elsewhere in track2 match nothing.
#:   About 30 s of track2 is track16's passage played 7% faster.
SHARED_MATERIAL = frozenset(
    {
        frozenset({"colobot-common-sounds/music007", "colobot-common-sounds/music009"}),
        frozenset({"singularity-music/By-Product", "singularity-music/Inevitable"}),
        frozenset({"drascula-music/track2", "drascula-music/track16"}),
    }
)

FAMILIES = (
    "clean",
    "mp3",
    "noise",
    "stretch",
    "pitch",
    "speed",
    "combo",
    "wide_stretch",
    "wide_speed",
)


def _hash(track_id: str) -> int:
    return int(hashlib.sha1(track_id.encode()).hexdigest(), 16)


def in_catalogue(track: Track) -> bool:
    """Whether a track belongs to the benchmark catalogue (else it gives negatives)."""
    return _hash(track.track_id) % 4 != 0


def split_of_id(source_id: str) -> str:
    """``"calibration"`` or ``"evaluation"`` for any source id (corpus track, rendered piece)."""
    return "calibration" if (_hash(source_id) >> 8) % 2 == 0 else "evaluation"


def split_of(track: Track) -> str:
    """``"calibration"`` or ``"evaluation"``."""
    return split_of_id(track.track_id)


@dataclass(frozen=True)
class Query:
    """One generated query file and its truth."""

    path: str
    source_id: str
    positive: bool
    family: str
    tool: str
    tempo_ratio: float
    pitch_semitones: float
    reference_start_s: float


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _wide(rng: random.Random) -> float:
    return _log_uniform(rng, 0.5, 0.7) if rng.random() < 0.5 else _log_uniform(rng, 1.4, 2.0)


def random_alteration(family: str, rng: random.Random) -> Alteration:
    """Draw an alteration of ``family`` with random tool and amount."""
    stretchers = ["sox", "rubberband", "rubberband-r3", "ffmpeg", "librosa"]
    if family == "clean":
        return Alteration(family, "copy")
    if family == "mp3":
        return Alteration(family, "copy", codec="mp3@64k")
    if family == "noise":
        return Alteration(family, "copy", noise_snr_db=10.0)
    if family == "stretch":
        return Alteration(family, rng.choice(stretchers), tempo_ratio=_log_uniform(rng, 0.7, 1.4))
    if family == "pitch":
        semis = rng.uniform(-6, 6)
        return Alteration(family, rng.choice(stretchers), pitch_semitones=semis)
    if family == "speed":
        tool = rng.choice(["sox", "ffmpeg", "librosa"])
        return Alteration(family, tool, tempo_ratio=_log_uniform(rng, 0.7, 1.4), resample=True)
    if family == "combo":
        return Alteration(
            family,
            rng.choice(["sox", "rubberband", "ffmpeg"]),
            tempo_ratio=_log_uniform(rng, 0.8, 1.25),
            pitch_semitones=rng.uniform(-4, 4),
            codec="mp3@64k",
        )
    if family == "wide_stretch":
        return Alteration(
            family, rng.choice(["sox", "rubberband", "ffmpeg"]), tempo_ratio=_wide(rng)
        )
    if family == "wide_speed":
        return Alteration(
            family, rng.choice(["sox", "ffmpeg"]), tempo_ratio=_wide(rng), resample=True
        )
    raise ValueError(family)


def read_excerpt(path: Path, start_s: float, duration_s: float) -> tuple[np.ndarray, int]:
    """Samples ``[start_s, start_s + duration_s)`` at the file's own rate (FFmpeg fallback)."""
    try:
        with soundfile.SoundFile(str(path)) as handle:
            rate = handle.samplerate
            handle.seek(int(start_s * rate))
            return handle.read(int(duration_s * rate), dtype="float32", always_2d=True), rate
    except (RuntimeError, soundfile.LibsndfileError):
        raw = subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-ss",
                str(start_s),
                "-t",
                str(duration_s),
                "-i",
                str(path),
                "-ac",
                "2",
                "-ar",
                "44100",
                "-f",
                "f32le",
                "-",
            ],
            capture_output=True,
            check=True,
        ).stdout
        return np.frombuffer(raw, np.float32).reshape(-1, 2), 44100


def query_file_name(
    number: int, alteration: Alteration, source_id: str, start_s: float, span_s: float | None
) -> str:
    """Cache file name of a query: its number, alteration and a digest of what it was cut
    from, so that a cached file is only reused for the very same excerpt (plans of other
    sizes or track lists number their queries differently). The suffix is the codec's
    container, else WAV."""
    digest = hashlib.sha1(f"{source_id}|{start_s:.3f}|{span_s}".encode()).hexdigest()[:8]
    kind = (alteration.codec or "").split("@")[0]
    suffix = {"mp3": ".mp3", "aac": ".m4a", "opus": ".opus"}.get(kind, ".wav")
    return f"{number:05d}_{alteration.name}_{digest}{suffix}"


def write_altered_excerpt(
    path: Path, start_s: float, span_s: float, alteration: Alteration, target: Path, seed: int
) -> None:
    """Cut ``[start_s, start_s + span_s)`` of ``path`` and write it altered to ``target``.

    Raises
    ------
    subprocess.CalledProcessError
        When a tool fails.
    """
    source = target.parent / f".src-{target.stem}.wav"
    try:
        samples, rate = read_excerpt(path, start_s, span_s)
        soundfile.write(str(source), samples, rate)
        apply(alteration, source, target, seed=seed)
    finally:
        source.unlink(missing_ok=True)


def _make(job: tuple[Track, Alteration, float, float, Path, int, bool]) -> Query | None:
    track, alteration, start_s, query_s, target_dir, number, positive = job
    target = target_dir / query_file_name(number, alteration, track.track_id, start_s, query_s)
    if not target.exists():
        try:
            write_altered_excerpt(
                track.path, start_s, query_s * alteration.tempo_ratio, alteration, target, number
            )
        except subprocess.CalledProcessError as exc:
            logger.warning("could not make %s: %s", target.name, exc.stderr)
            return None
    return Query(
        path=str(target),
        source_id=track.track_id,
        positive=positive,
        family=alteration.family,
        tool=alteration.tool,
        tempo_ratio=alteration.tempo_ratio,
        pitch_semitones=alteration.true_pitch_semitones,
        reference_start_s=start_s,
    )


def make_queries(
    tracks: list[Track],
    *,
    split: str,
    per_family: int,
    negatives: int,
    cache: Path,
    seed: int,
    workers: int = 2,
    query_s: tuple[float, float] = (10.0, 15.0),
) -> list[Query]:
    """Generate (or reuse from ``cache``) the queries of one split.

    Parameters
    ----------
    tracks : list of Track
    split : str
        ``"calibration"`` or ``"evaluation"``.
    per_family : int
        Positive queries per alteration family.
    negatives : int
        Queries from tracks outside the catalogue (random families).
    cache : Path
        Folder for generated audio (outside the repository).
    seed : int
    """
    rng = random.Random(f"{seed}-{split}")
    inside = [t for t in tracks if in_catalogue(t) and split_of(t) == split]
    outside = [t for t in tracks if not in_catalogue(t) and split_of(t) == split]
    target_dir = cache / f"{split}-seed{seed}"
    target_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    plan = [(family, True) for family in FAMILIES for _ in range(per_family)]
    plan += [(rng.choice(FAMILIES), False) for _ in range(negatives)]
    for number, (family, positive) in enumerate(plan):
        track = rng.choice(inside if positive else outside)
        alteration = random_alteration(family, rng)
        query_s_now = rng.uniform(*query_s)
        span = query_s_now * alteration.tempo_ratio
        start = rng.uniform(0, max(0.0, track.duration_s - span - 1))
        jobs.append((track, alteration, start, query_s_now, target_dir, number, positive))
    with ProcessPoolExecutor(workers) as pool:
        queries = [q for q in pool.map(_make, jobs) if q is not None]
    (target_dir / "queries.json").write_text(json.dumps([asdict(q) for q in queries], indent=1))
    return queries
