"""Real, freely licensed music from Debian packages, for the demo, benchmarks and integration tests.

``python -m benchmarks.corpus install`` installs the packages (root; Debian); ``list`` prints one
track per line. Tracks under 60 s (jingles) are skipped; zipped game data is extracted into the
cache folder ($TUNETRACE_CORPUS_CACHE, else ~/.cache/tunetrace-corpus); a few pieces that
repeat another under a new name are skipped. Nothing here is committed: it is fetched from the
distribution's own archive on the user's machine.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import soundfile

logger = logging.getLogger(__name__)

#: package -> (style, where its tracks are)
PACKAGES: dict[str, tuple[str, str]] = {
    "nexuiz-music": ("electronic", "zip:/usr/share/games/nexuiz/data/music.pk3"),
    "singularity-music": ("ambient/electronic", "dpkg"),
    "planetblupi-music-ogg": ("game/orchestral", "dpkg"),
    "drascula-music": ("adventure-game score", "glob:/usr/share/scummvm/drascula/audio/*.ogg"),
    "asc-music": ("rock/electronic", "dpkg"),
    "ufoai-music": ("orchestral/ambient score", "zip:/usr/share/games/ufoai/base/0music.pk3"),
    "colobot-common-sounds": ("electronic/ambient", "glob:/usr/share/games/colobot/music/*.ogg"),
    "hedgewars-data": ("casual game music", "glob:/usr/share/games/hedgewars/Data/Music/*.ogg"),
}
#: The smallest set that still gives a demo real, varied music.
DEMO_PACKAGES = ("nexuiz-music", "asc-music", "singularity-music")
#: The same piece under another name.
SKIP = frozenset({"drascula-music/track30", "colobot-common-sounds/music008"})
AUDIO_SUFFIXES = (".ogg", ".opus", ".flac", ".wav", ".mp3")
MIN_TRACK_S = 60.0
CACHE = Path(os.environ.get("TUNETRACE_CORPUS_CACHE", Path.home() / ".cache" / "tunetrace-corpus"))


@dataclass(frozen=True)
class Track:
    """One full track of the corpus."""

    track_id: str
    path: Path
    duration_s: float
    package: str
    style: str


#: What the full benchmark suite needs beyond the alteration tools: FluidSynth and a General
#: MIDI SoundFont to render music21 pieces, and fpcalc for the Chromaprint peer.
SUITE_TOOLS = ("fluidsynth", "fluid-soundfont-gm", "libchromaprint-tools")


def install(
    packages: tuple[str, ...] = tuple(PACKAGES), *, tools: bool = True, suite_tools: bool = False
) -> None:
    """``apt-get install`` the music packages (and sox, ffmpeg, rubberband for alterations).

    With ``suite_tools``, also what the benchmark suite renders and compares with.
    """
    names = [p for p in packages if not _installed(p)]
    if suite_tools:
        names += [p for p in SUITE_TOOLS if not _installed(p)]
    if tools:
        names += [
            t
            for t, binary in (
                ("sox", "sox"),
                ("libsox-fmt-all", None),
                ("ffmpeg", "ffmpeg"),
                ("rubberband-cli", "rubberband"),
            )
            if binary is None or not shutil.which(binary)
        ]
        if any(n == "libsox-fmt-all" for n in names) and len(names) == 1:
            names = []
    if not names:
        return
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-q", *names], check=True, env=env)


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True)
    return done.returncode == 0 and "Status: install ok installed" in done.stdout


def _files_of(package: str, where: str) -> list[Path]:
    kind, _, argument = where.partition(":")
    if kind == "dpkg":
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout
        return sorted(Path(p) for p in listing.splitlines() if p.lower().endswith(AUDIO_SUFFIXES))
    if kind == "glob":
        return sorted(Path("/").glob(argument.lstrip("/")))
    if kind == "zip":
        target = CACHE / package
        if not target.exists() and Path(argument).exists():
            partial = target.with_suffix(".partial")
            with zipfile.ZipFile(argument) as archive:
                for name in archive.namelist():
                    if name.lower().endswith(AUDIO_SUFFIXES):
                        archive.extract(name, partial)
            partial.rename(target)
        return sorted(p for p in target.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    raise ValueError(where)


def _duration_s(path: Path) -> float:
    try:
        return float(soundfile.info(str(path)).duration)
    except (RuntimeError, soundfile.LibsndfileError):
        import av

        with av.open(str(path)) as container:
            return (container.duration or 0) / 1_000_000


def _content_hash(path: Path) -> str:
    """Hash of a decoded excerpt (catches the same audio shipped twice under two names)."""
    import numpy as np
    import soxr

    try:
        with soundfile.SoundFile(str(path)) as handle:
            handle.seek(min(20 * handle.samplerate, max(handle.frames - 1, 0)))
            samples = handle.read(10 * handle.samplerate, dtype="float32", always_2d=True)
            rate = handle.samplerate
        excerpt = soxr.resample(samples.mean(axis=1), rate, 4000)
    except (RuntimeError, soundfile.LibsndfileError):
        from tunetrace.fingerprint.decode import load_audio

        audio = load_audio(path, sample_rate_hz=4000, max_duration_s=None)
        excerpt = audio.samples[20 * 4000 : 30 * 4000]
    return hashlib.sha1(np.round(excerpt * 64).astype("int8").tobytes()).hexdigest()


def installed_or_exit(found: list[Track]) -> list[Track]:
    """``found`` itself, or exit with how to install the corpus when it is empty (benchmarks)."""
    if not found:
        raise SystemExit("no corpus tracks: run `python -m benchmarks.corpus install` first")
    return found


def tracks(packages: tuple[str, ...] = tuple(PACKAGES)) -> list[Track]:
    """Full tracks of the installed packages, in a stable order (missing packages are skipped)."""
    found: list[Track] = []
    seen: set[str] = set()
    for package in packages:
        style, where = PACKAGES[package]
        for path in _files_of(package, where):
            track_id = f"{package}/{path.stem}"
            if track_id in SKIP:
                continue
            try:
                duration = _duration_s(path)
            except Exception as exc:  # an unreadable file is skipped, not fatal
                logger.warning("skipping %s: %s", path, exc)
                continue
            if duration < MIN_TRACK_S:
                continue
            digest = _content_hash(path)
            if digest in seen:
                continue
            seen.add(digest)
            found.append(Track(track_id, path, duration, package, style))
    return found


def main() -> None:
    """Command line: install or list."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["install", "list"])
    parser.add_argument("--packages", nargs="*", default=list(PACKAGES))
    parser.add_argument(
        "--suite-tools",
        action="store_true",
        help="also install FluidSynth, its SoundFont and fpcalc (for benchmarks.suite)",
    )
    args = parser.parse_args()
    if args.action == "install":
        install(tuple(args.packages), suite_tools=args.suite_tools)
        return
    for track in tracks(tuple(args.packages)):
        sys.stdout.write(
            f"{track.track_id}\t{track.path}\t{track.duration_s:.2f}\t{track.package}\t{track.style}\n"
        )


if __name__ == "__main__":
    main()
