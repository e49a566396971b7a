"""Hostile clients and hostile audio against a live ``tunetrace serve`` on loopback.

``python -m benchmarks.hostile_audio`` builds a corpus of hostile uploads (channel and
sample-rate bombs, truncated and lying headers, random bytes, an empty file, bodies that never
end or never close), starts ``tunetrace serve`` on 127.0.0.1 with an empty catalogue and sends
each one, recording the status, the seconds to the answer and how far the worker processes'
memory rose (peak resident set, read from ``/proc``, with each worker's peak reset before
every upload). Then it opens 20 uploads that send their headers and stall, and counts how many
were spooled (a temporary file in the server's upload folder) and how many were answered 503
before sending any body. Results: ``benchmarks/results/hostile_audio.json`` and
``hostile_audio.md``.

Goals: every hostile upload answered 4xx within 2 s with worker memory growth within 200 MB;
under 20 stalled uploads at most ``workers + max_queue`` spooled, the rest answered 503.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile

from benchmarks.run_info import run_info
from tests.conftest import patch_wav_header
from tests.hostile_client import (
    KEY,
    endless_part,
    memory_mb,
    multipart,
    post_raw,
    reset_peak,
    server_processes,
    stalled_uploads,
    write_silence_flac,
)
from tests.live_server import running_server

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
ANSWER_GOAL_S = 2.0
MEMORY_GOAL_MB = 200.0


@dataclass(frozen=True)
class HostileUpload:
    """One hostile request body for ``POST /v1/match``.

    Attributes
    ----------
    name : str
    description : str
        What it claims or does, for the results table.
    body : callable
        Returns the request body: bytes, or an iterator of chunks (sent chunked).
    readable : bool
        Whether it holds audio to match all the same (damage a decoder reads past): answered
        200, not refused.
    """

    name: str
    description: str
    body: Callable[[], bytes | Iterator[bytes]]
    readable: bool = False


def _song(seconds: float, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    return (0.25 * tones * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


def build_corpus(directory: Path) -> list[HostileUpload]:
    """Write the hostile files under ``directory`` and describe every hostile upload.

    Parameters
    ----------
    directory : Path

    Returns
    -------
    uploads : list of HostileUpload
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, str, Path, bool, bool]] = []

    def add(
        name: str, description: str, path: Path, close: bool = True, readable: bool = False
    ) -> None:
        files.append((name, description, path, close, readable))

    rate_bomb = write_silence_flac(
        directory / "rate_bomb.flac", seconds=64, rate=655350, channels=8
    )
    add("flac_rate_bomb", "FLAC, 8 channels at 655,350 Hz, 64 s of silence", rate_bomb)
    wide = directory / "channel_bomb.wav"
    soundfile.write(str(wide), np.zeros(8000, np.int16), 8000, subtype="PCM_16")
    patch_wav_header(wide, channels=4096, rate=8000)
    add("wav_channel_bomb", "WAV header: 4,096 channels", wide)
    lying = directory / "lying_length.wav"
    soundfile.write(str(lying), np.zeros((48000, 8), np.int16), 192000, subtype="PCM_16")
    patch_wav_header(lying, channels=8, rate=192000, data_bytes=0xFFFFFFF0)
    add("wav_lying_length", "WAV header: 8 x 192 kHz, 4 GB of data; 0.25 s present", lying)
    long_flac = write_silence_flac(directory / "long.flac", seconds=3 * 3600, rate=8000, channels=1)
    add("flac_three_hours", "FLAC, 3 h of 8 kHz silence (over the duration limit)", long_flac)
    legal = write_silence_flac(directory / "wide_legal.flac", seconds=60, rate=192000, channels=8)
    add("flac_8ch_192k_60s", "FLAC, 8 x 192 kHz, 60 s of silence (within the limits)", legal)
    song = directory / "song.flac"
    soundfile.write(str(song), _song(20.0), 22050, format="FLAC")
    head = directory / "truncated_header.flac"
    head.write_bytes(song.read_bytes()[:60])
    add("flac_truncated_header", "FLAC cut inside its header (60 bytes)", head)
    cut = directory / "truncated.flac"
    cut.write_bytes(song.read_bytes()[: song.stat().st_size // 20])
    add("flac_truncated", "FLAC cut to its first 5% (1 s of 20 s)", cut)
    mp3 = directory / "song.mp3"
    soundfile.write(str(mp3), _song(20.0), 22050, format="MP3")
    mp3_cut = directory / "truncated.mp3"
    mp3_cut.write_bytes(mp3.read_bytes()[:2000])
    add("mp3_truncated", "MP3 cut to 2 KB", mp3_cut)
    damaged = bytearray(mp3.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 3000] = np.random.default_rng(1).bytes(3000)
    mp3_damaged = directory / "damaged.mp3"
    mp3_damaged.write_bytes(bytes(damaged))
    add("mp3_damaged_middle", "20-s MP3 with 3 KB overwritten in its middle", mp3_damaged,
        readable=True)  # fmt: skip
    zeros = directory / "zeros.mp3"
    zeros.write_bytes(bytes(100_000_000))
    add("mp3_zeros", "100 MB of zero bytes named .mp3 (no frame to find)", zeros)
    noise = directory / "random.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(1_000_000))
    add("random_bytes", "1 MB of random bytes named .wav", noise)
    empty = directory / "empty.flac"
    empty.write_bytes(b"")
    add("zero_length", "an empty file", empty)
    uploads = [
        HostileUpload(
            name,
            description,
            lambda p=path, c=close: multipart(p.name, p.read_bytes(), close=c),
            readable,
        )
        for name, description, path, close, readable in files
    ]
    uploads.append(
        HostileUpload(
            "no_closing_boundary",
            "a readable 20-s song, body ends without its closing boundary",
            lambda: multipart(song.name, song.read_bytes(), close=False),
        )
    )
    uploads.append(
        HostileUpload(
            "endless_ignored_part",
            "chunked body: a form part the API ignores, never ending",
            lambda: endless_part("junk"),
        )
    )
    uploads.append(
        HostileUpload(
            "endless_file_part",
            "chunked body: the file part, never ending",
            lambda: endless_part("file", "endless.wav"),
        )
    )
    return uploads


# --- the server's processes, from /proc ---------------------------------------------------


# --- sending -------------------------------------------------------------------------------


def send(port: int, upload: HostileUpload, workers: list[int]) -> dict[str, object]:
    """Send one hostile upload; its status, seconds to the answer and worker memory growth."""
    before = {pid: memory_mb(pid)[0] for pid in workers}
    for pid in workers:
        reset_peak(pid)
    status, answer, seconds = post_raw(port, upload.body())
    growth = max(memory_mb(pid)[1] - before[pid] for pid in workers)
    return {
        "name": upload.name,
        "description": upload.description,
        "status": status,
        "code": answer.get("error", {}).get("code"),
        "seconds": round(seconds, 3),
        "worker_peak_growth_mb": round(growth, 1),
        "readable": upload.readable,
    }


def run(directory: Path, *, workers: int, max_queue: int) -> dict[str, object]:
    """Build the corpus, start a server on an empty catalogue and measure everything."""
    uploads = build_corpus(directory / "corpus")
    upload_dir = directory / "spool"
    upload_dir.mkdir(exist_ok=True)
    with running_server(
        directory / "catalogue",
        api_keys=f"{KEY}:read",
        workers=workers,
        max_queue=max_queue,
        extra_env={"TUNETRACE_UPLOAD_DIR": str(upload_dir)},
        log_path=directory / "server.log",
    ) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        _, worker_pids = server_processes(port)
        rows = []
        for upload in uploads:
            row = send(port, upload, worker_pids)
            logger.info("%s: %s in %.2f s", upload.name, row["status"], row["seconds"])
            rows.append(row)
        stalled = stalled_uploads(port, upload_dir)
        time.sleep(0.5)
        health = httpx.get(f"{base_url}/v1/health", timeout=10).json()
        log = (directory / "server.log").read_text(errors="replace")
    capacity = workers + max_queue
    return {
        **run_info(),
        "workers": workers,
        "max_queue": max_queue,
        "uploads": rows,
        "stalled": {**stalled, "capacity": capacity},
        "after": {
            "admitted": health.get("admitted"),
            "spool_files_left": len(list(upload_dir.iterdir())),
            "tracebacks_in_log": log.count("Traceback"),
            "status_500_in_log": log.count('"status": 500'),
        },
        "goals": {
            "unreadable_4xx": all(
                400 <= int(r["status"]) < 500 for r in rows if not r["readable"]
            ),
            "readable_200": all(int(r["status"]) == 200 for r in rows if r["readable"]),
            "all_within_2s": all(float(r["seconds"]) <= ANSWER_GOAL_S for r in rows),
            "memory_within_200mb": all(
                float(r["worker_peak_growth_mb"]) <= MEMORY_GOAL_MB for r in rows
            ),
            "stalled_bounded": int(stalled["spooled"]) <= capacity
            and int(stalled["refused_503"]) == int(stalled["connections"]) - capacity,
        },
    }


def markdown(result: dict) -> str:
    """The short table for the benchmarks page of the docs."""
    rows = [
        f"| {r['name']} | {r['description']} | {r['status']} {r['code'] or ''} | "
        f"{r['seconds']:.2f} | {r['worker_peak_growth_mb']:.1f} |"
        for r in result["uploads"]
    ]
    stalled = result["stalled"]
    return "\n".join(
        [
            f"Run {result['date']} on {result['machine']} (commit {result['commit']}): "
            f"`tunetrace serve` with {result['workers']} workers and a queue of "
            f"{result['max_queue']}, default limits, empty catalogue, loopback HTTP.",
            "",
            "| upload | what it is | answer | seconds | worker peak memory growth (MB) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"{stalled['connections']} uploads that send their headers and stall: "
            f"{stalled['spooled']} spooled (capacity {stalled['capacity']}), "
            f"{stalled['refused_503']} answered 503 before any body "
            f"(the last after {stalled['seconds_to_refusals']:.2f} s), "
            f"{stalled['other_answers']} other answers.",
            "",
            "Goals: " + ", ".join(f"{name} {ok}" for name, ok in result["goals"].items()) + ".",
        ]
    )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tunetrace-hostile-") as directory:
        result = run(Path(directory), workers=args.workers, max_queue=args.max_queue)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hostile_audio.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "hostile_audio.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
