"""Make altered copies of audio with several independent tools.

Each alteration takes a WAV excerpt of a reference and writes the altered query. Tools differ
in how they stretch and shift (sox's WSOLA, Rubber Band's R2 and R3 engines, FFmpeg's atempo
and asetrate, librosa's phase vocoder), so nothing is tuned to one algorithm.

Conventions: ``tempo_ratio`` is reference duration / query duration (> 1: the query plays
faster); ``pitch_semitones`` is query pitch minus reference pitch.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile


@dataclass(frozen=True)
class Alteration:
    """One way of altering an excerpt, with the truth it should be detected as.

    ``resample`` marks a speed change (tempo and pitch move together, like a turntable).
    """

    family: str
    tool: str
    tempo_ratio: float = 1.0
    resample: bool = False
    pitch_semitones: float = 0.0
    codec: str | None = None
    noise_snr_db: float | None = None

    @property
    def true_pitch_semitones(self) -> float:
        """Pitch shift the query really has (a speed change moves pitch with tempo)."""
        if self.resample:
            return float(12 * np.log2(self.tempo_ratio) + self.pitch_semitones)
        return self.pitch_semitones

    @property
    def name(self) -> str:
        """Short label, unique within a benchmark run."""
        parts = [
            self.family,
            self.tool,
            f"t{self.tempo_ratio:.3f}",
            f"p{self.pitch_semitones:+.2f}",
        ]
        if self.codec:
            parts.append(self.codec)
        if self.noise_snr_db is not None:
            parts.append(f"snr{self.noise_snr_db:g}")
        return "_".join(parts)


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def apply(alteration: Alteration, source: Path, target: Path, *, seed: int = 0) -> None:
    """Write ``source`` altered by ``alteration`` to ``target`` (WAV or, for codecs, MP3/M4A/Opus).

    Parameters
    ----------
    alteration : Alteration
    source : Path
        A WAV file.
    target : Path
        Output path; its suffix must suit the codec (``.wav`` when there is none).
    seed : int
        Seed for added noise.
    """
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "stage.wav"
        _stretch_and_shift(alteration, source, stage)
        if alteration.noise_snr_db is not None:
            _add_noise(stage, alteration.noise_snr_db, seed)
        if alteration.codec is None:
            stage.replace(target)
        else:
            _encode(stage, target, alteration.codec)


def _stretch_and_shift(alteration: Alteration, source: Path, target: Path) -> None:
    tempo, semis, tool = alteration.tempo_ratio, alteration.pitch_semitones, alteration.tool
    rate = soundfile.info(str(source)).samplerate
    if tool == "copy":
        _run("sox", str(source), str(target))
    elif tool == "sox":
        effects: list[str] = []
        if alteration.resample:
            effects += ["speed", f"{tempo:.6f}", "rate", "-v", str(rate)]
        else:
            if abs(semis) > 1e-9:
                effects += ["pitch", f"{semis * 100:.3f}"]
            if abs(tempo - 1) > 1e-9:
                effects += ["tempo", "-m", f"{tempo:.6f}"]
            if not effects:
                effects = ["gain", "0"]
        _run("sox", str(source), str(target), *effects)
    elif tool in ("rubberband", "rubberband-r3"):
        engine = ["--fine"] if tool == "rubberband-r3" else []
        args = ["-t", f"{1 / tempo:.6f}", "-p", f"{semis:.4f}"]
        if alteration.resample:
            args = ["-t", f"{1 / tempo:.6f}", "-p", f"{12 * np.log2(tempo):.4f}"]
        _run("rubberband", "-q", *engine, *args, str(source), str(target))
    elif tool == "ffmpeg":
        if alteration.resample:
            chain = f"asetrate={rate}*{tempo:.6f},aresample={rate}"
        else:
            chain = _atempo_chain(tempo)
            if abs(semis) > 1e-9:
                factor = 2 ** (semis / 12)
                chain = f"asetrate={rate}*{factor:.6f},aresample={rate}," + _atempo_chain(
                    tempo / factor
                )
        _run("ffmpeg", "-v", "error", "-y", "-i", str(source), "-af", chain, str(target))
    elif tool == "librosa":
        import librosa

        samples, rate = soundfile.read(str(source), dtype="float32")
        if samples.ndim > 1:
            samples = samples.mean(axis=1)
        if alteration.resample:
            samples = librosa.resample(samples, orig_sr=rate * tempo, target_sr=rate)
        else:
            if abs(tempo - 1) > 1e-9:
                samples = librosa.effects.time_stretch(samples, rate=tempo)
            if abs(semis) > 1e-9:
                samples = librosa.effects.pitch_shift(samples, sr=rate, n_steps=semis)
        soundfile.write(str(target), samples, rate)
    else:
        raise ValueError(f"unknown tool {tool}")


def _atempo_chain(tempo: float) -> str:
    """FFmpeg atempo filters whose product is ``tempo`` (each stage kept within 0.5-2.0)."""
    stages = []
    remaining = tempo
    while remaining > 2.0:
        stages.append(2.0)
        remaining /= 2.0
    while remaining < 0.5:
        stages.append(0.5)
        remaining /= 0.5
    stages.append(remaining)
    return ",".join(f"atempo={s:.6f}" for s in stages)


def _add_noise(path: Path, snr_db: float, seed: int) -> None:
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    rng = np.random.default_rng(seed)
    signal_power = float(np.mean(samples**2)) or 1e-12
    noise = rng.standard_normal(samples.shape).astype(np.float32)
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10))
    soundfile.write(str(path), np.clip(samples + noise, -1, 1), rate)


def _encode(source: Path, target: Path, codec: str) -> None:
    kind, _, bitrate = codec.partition("@")
    encoders = {"mp3": ["-c:a", "libmp3lame"], "aac": ["-c:a", "aac"], "opus": ["-c:a", "libopus"]}
    _run(
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-i",
        str(source),
        *encoders[kind],
        "-b:a",
        bitrate or "64k",
        str(target),
    )
