"""Distinct works rendered to audio from the music21 corpus, for hard negatives and scale.

The music21 corpus holds hundreds of Bach chorales and Palestrina mass movements: the same
composer and style over and over, many pieces in the same key with similar progressions. Each
piece is written to MIDI by music21 and rendered by FluidSynth with the General MIDI SoundFont
that Debian ships (``fluidsynth``, ``fluid-soundfont-gm``), every part on one instrument chosen
per piece from a few (organ, choir, strings, piano), so timbre does not give pieces away.

Some pieces share a tune: Bach harmonised the same chorale melody several times, in several
keys. Each render records the pitch intervals of its top voice's first notes (``tune``); two
pieces with the same ``tune`` are arrangements of one melody, and the suite counts a match
between them as neither a hit nor a false positive, like corpus tracks that share material.

Rendered WAV files are cached outside the repository (``$TUNETRACE_BENCH_CACHE/renders``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
#: General MIDI programs (0-based): church organ, choir aahs, string ensemble, grand piano.
PROGRAMS = (19, 52, 48, 0)
COLLECTIONS = ("bach", "palestrina")
RENDER_RATE_HZ = 22050
TUNE_NOTES = 12


@dataclass(frozen=True)
class RenderedWork:
    """One rendered piece."""

    work_id: str
    path: Path
    collection: str
    key: str
    duration_s: float
    program: int
    tune: str = ""


def available() -> str | None:
    """Why rendering cannot run here, or None when it can."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (Debian package fluidsynth)"
    if not SOUNDFONT.exists():
        return f"{SOUNDFONT} is missing (Debian package fluid-soundfont-gm)"
    try:
        import music21  # noqa: F401
    except ImportError:
        return "music21 is not installed (pip install -e '.[bench]')"
    return None


def corpus_pieces(limit: int) -> list[tuple[str, Path]]:
    """Up to ``limit`` music21 corpus files, alternating collections, in a fixed order."""
    from music21 import corpus

    by_collection = [sorted(corpus.getComposer(name)) for name in COLLECTIONS]
    pieces: list[tuple[str, Path]] = []
    for position in range(max(len(paths) for paths in by_collection)):
        for name, paths in zip(COLLECTIONS, by_collection, strict=True):
            if position < len(paths):
                pieces.append((name, Path(paths[position])))
    return pieces[:limit]


def _program_for(work_id: str) -> int:
    digest = int(hashlib.sha1(work_id.encode()).hexdigest(), 16)
    return PROGRAMS[digest % len(PROGRAMS)]


def tune_of(score: object) -> str:
    """Semitone steps between the first :data:`TUNE_NOTES` notes of the top voice."""
    parts = getattr(score, "parts", None)
    if not parts:
        return ""
    pitches = [n.pitch.midi for n in parts[0].flatten().notes if hasattr(n, "pitch")]
    steps = np.diff(pitches[:TUNE_NOTES])
    return " ".join(str(int(s)) for s in steps) if len(steps) == TUNE_NOTES - 1 else ""


def shared_tunes(works: list[RenderedWork]) -> set[frozenset[str]]:
    """Pairs of works whose top voices open with the same tune."""
    by_tune: dict[str, list[str]] = {}
    for work in works:
        if work.tune:
            by_tune.setdefault(work.tune, []).append(work.work_id)
    return {
        frozenset((a, b))
        for ids in by_tune.values()
        for i, a in enumerate(ids)
        for b in ids[i + 1 :]
    }


def _render(job: tuple[str, Path, Path]) -> RenderedWork | None:
    collection, source, folder = job
    import soundfile
    from music21 import converter, instrument

    work_id = f"render/{collection}/{source.stem}"
    target = folder / f"{collection}-{source.stem}.wav"
    meta = target.with_suffix(".json")
    failed = target.with_suffix(".failed")
    if target.exists() and meta.exists():
        row = json.loads(meta.read_text())
        return RenderedWork(**{**row, "path": Path(row["path"])})
    if failed.exists():  # tried before: FluidSynth hung or music21 could not read it
        return None
    program = _program_for(work_id)
    try:
        score = converter.parse(str(source))
        if hasattr(score, "parts") and len(score.parts):
            for part in score.parts:
                for old in part.recurse().getElementsByClass(instrument.Instrument):
                    part.remove(old, recurse=True)
                chosen = instrument.instrumentFromMidiProgram(program)
                part.insert(0, chosen)
        key = str(score.analyze("key"))
        tune = tune_of(score)
        midi = target.with_suffix(".mid")
        score.write("midi", fp=str(midi))
        _run_fluidsynth(midi, target)
        midi.unlink(missing_ok=True)
        duration = float(soundfile.info(str(target)).duration)  # FluidSynth may write nothing
    except Exception as exc:  # a piece music21 cannot parse or FluidSynth cannot render
        logger.warning("skipping %s: %s", source.name, exc)
        target.unlink(missing_ok=True)
        target.with_suffix(".mid").unlink(missing_ok=True)
        failed.write_text(f"{exc}\n")
        return None
    work = RenderedWork(work_id, target, collection, key, duration, program, tune)
    meta.write_text(json.dumps({**asdict(work), "path": str(target)}))
    return work


#: A render growing past this is runaway: FluidSynth keeps writing a piece whose last note
#: never ends (seen: 12 GB in five minutes). Real renders here are under 25 MB.
MAX_RENDER_BYTES = 200 * 1024 * 1024
#: Longest time one render may take.
RENDER_TIMEOUT_S = 300.0


def _run_fluidsynth(midi: Path, target: Path) -> None:
    """Render ``midi`` to ``target`` with FluidSynth, stopping a runaway or hung render.

    Raises
    ------
    RuntimeError
        If the render grows past :data:`MAX_RENDER_BYTES`, takes longer than
        :data:`RENDER_TIMEOUT_S` or FluidSynth fails.
    """
    command = [
        *("fluidsynth", "-ni", "-q", "-g", "0.7", "-r", str(RENDER_RATE_HZ)),
        *("-F", str(target), str(SOUNDFONT), str(midi)),
    ]
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        while process.poll() is None:
            too_big = target.exists() and target.stat().st_size > MAX_RENDER_BYTES
            if too_big or time.monotonic() > deadline:
                process.kill()
                process.wait()
                reason = "grew past the size limit" if too_big else "timed out"
                raise RuntimeError(f"FluidSynth render of {midi.name} {reason}")
            time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"FluidSynth failed on {midi.name} (exit {process.returncode})")


def render_works(count: int, cache: Path, *, workers: int = 2) -> list[RenderedWork]:
    """Render (or reuse) the first ``count`` corpus pieces; pieces under 20 s are dropped.

    Parameters
    ----------
    count : int
        Pieces to try.
    cache : Path
        Folder for the WAV files.
    workers : int
        Rendering processes.

    Returns
    -------
    works : list of RenderedWork
    """
    reason = available()
    if reason:
        raise RuntimeError(f"cannot render music21 pieces: {reason}")
    folder = cache / "renders"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(collection, path, folder) for collection, path in corpus_pieces(count)]
    with ProcessPoolExecutor(workers) as pool:
        works = [w for w in pool.map(_render, jobs, chunksize=4) if w is not None]
    return [w for w in works if w.duration_s >= 20.0]
