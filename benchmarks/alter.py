"""Make altered copies of audio with several independent tools.

Each alteration takes a WAV excerpt of a reference and writes the altered query. Tools differ
in how they stretch and shift (sox's WSOLA, Rubber Band's R2 and R3 engines, FFmpeg's atempo
and asetrate, librosa's phase vocoder), so nothing is tuned to one algorithm.

Besides stretching and shifting, an alteration can edit the excerpt first (insert silence,
remove a middle section), apply an effect after (EQ, reverb, fades, through sox), add white or
pink noise at a given SNR and encode with a lossy codec (MP3, AAC, Opus through FFmpeg).

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
    noise_color: str = "white"
    #: ``"insert_silence"`` or ``"remove_middle"``, done on the excerpt before stretching.
    edit: str | None = None
    edit_s: float = 0.0
    #: ``"eq_bass"``, ``"eq_treble"``, ``"reverb"`` or ``"fade"``, done after stretching.
    effect: str | None = None

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
            parts.append(f"{self.noise_color}{self.noise_snr_db:g}")
        if self.edit:
            parts.append(f"{self.edit}{self.edit_s:g}")
        if self.effect:
            parts.append(self.effect)
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
        if alteration.edit:
            edited = Path(tmp) / "edited.wav"
            _edit(source, edited, alteration.edit, alteration.edit_s)
            source = edited
        _stretch_and_shift(alteration, source, stage)
        if alteration.effect:
            with_effect = Path(tmp) / "effect.wav"
            _run("sox", str(stage), str(with_effect), *EFFECTS[alteration.effect])
            with_effect.replace(stage)
        if alteration.noise_snr_db is not None:
            _add_noise(stage, alteration.noise_snr_db, seed, color=alteration.noise_color)
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


#: sox effect chains (bass boost, treble cut, a large room, 3-s fades at both ends).
EFFECTS: dict[str, list[str]] = {
    "eq_bass": ["bass", "+10", "equalizer", "2500", "1q", "-8"],
    "eq_treble": ["treble", "-12", "equalizer", "400", "2q", "+6"],
    "reverb": ["reverb", "70", "50", "100", "100", "20", "0"],
    "fade": ["fade", "t", "3", "-0", "3"],
}


def _edit(source: Path, target: Path, edit: str, seconds: float) -> None:
    """Insert ``seconds`` of silence at the middle, or cut ``seconds`` out of the middle."""
    samples, rate = soundfile.read(str(source), dtype="float32", always_2d=True)
    middle, span = len(samples) // 2, int(seconds * rate)
    if edit == "insert_silence":
        gap = np.zeros((span, samples.shape[1]), dtype=np.float32)
        samples = np.concatenate([samples[:middle], gap, samples[middle:]])
    elif edit == "remove_middle":
        samples = np.concatenate(
            [samples[: middle - span // 2], samples[middle + span - span // 2 :]]
        )
    else:
        raise ValueError(f"unknown edit {edit}")
    soundfile.write(str(target), samples, rate)


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


def _pink(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Pink (1/f power) noise of unit variance per channel, shaped in the frequency domain."""
    white = np.fft.rfft(rng.standard_normal(shape), axis=0)
    scale = 1 / np.sqrt(np.maximum(np.arange(white.shape[0]), 1))
    pink = np.fft.irfft(white * scale[:, None], n=shape[0], axis=0)
    return pink / (pink.std(axis=0, keepdims=True) + 1e-12)


def _add_noise(path: Path, snr_db: float, seed: int, *, color: str = "white") -> None:
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    rng = np.random.default_rng(seed)
    signal_power = float(np.mean(samples**2)) or 1e-12
    if color == "pink":
        noise = _pink(rng, samples.shape).astype(np.float32)
    else:
        noise = rng.standard_normal(samples.shape).astype(np.float32)
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10))
    soundfile.write(str(path), np.clip(samples + noise, -1, 1), rate)


def _encode(source: Path, target: Path, codec: str) -> None:
    kind, _, bitrate = codec.partition("@")
    encoders = {
        "mp3": ["-c:a", "libmp3lame"],
        "aac": ["-c:a", "aac"],
        "opus": ["-c:a", "libopus", "-ar", "48000"],
    }
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
