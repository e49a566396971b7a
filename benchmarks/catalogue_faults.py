"""Catalogue integrity under random kills and churn, with readers matching all along.

``python -m benchmarks.catalogue_faults [--kills 200] [--cycles 1000]``

1. Random kills: a writer process adds, replaces and removes four references in a loop and
   is killed with SIGKILL at a random moment, again and again on the same catalogue, while a
   reader process matches an excerpt of every reference throughout. After every kill the
   catalogue must open, hold only known references, and each excerpt must find exactly its
   own reference if it is present and nothing if not.
2. Churn: one reference is deleted and added again ``--cycles`` times while another thread
   matches it and a second reference: no match may fail.

Results: ``benchmarks/results/catalogue_faults.json`` and ``.md``. Synthetic songs, so it needs
no corpus.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue

from benchmarks.run_info import run_info
from tests.conftest import synth_song, write_audio
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import Matcher

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
IDS = ("a", "b", "c", "d")

WRITER = """
import pickle, random, sys
from tunetrace.index.catalogue import Catalogue
data = pickle.load(open(sys.argv[2], "rb"))
rng = random.Random(int(sys.argv[3]))
with Catalogue(sys.argv[1], create=True) as catalogue:
    print("ready", flush=True)
    while True:
        name = rng.choice(sorted(data))
        if catalogue.contains(name) and rng.random() < 0.5:
            catalogue.remove(name)
        else:
            catalogue.add(name, data[name], replace=True)
"""

READER = """
import json, sys, time
from pathlib import Path
from tunetrace.index.catalogue import Catalogue
from tunetrace.matcher import Matcher
excerpts = json.loads(sys.argv[2])
stop = Path(sys.argv[3])
matches = errors = 0
messages = []
with Catalogue(sys.argv[1], read_only=True) as catalogue:
    matcher = Matcher(catalogue)
    while not stop.exists():
        for excerpt in excerpts:
            try:
                matcher.match_path(excerpt)
                matches += 1
            except Exception as exc:
                errors += 1
                messages.append(repr(exc)[:200])
print(json.dumps({"matches": matches, "errors": errors, "messages": messages[:5]}))
"""


def prepare(folder: Path) -> tuple[dict, dict[str, Path]]:
    """Four fingerprinted synthetic songs and a 9-s excerpt of each."""
    data, excerpts = {}, {}
    for seed, name in enumerate(IDS, start=41):
        samples = synth_song(seed, duration_s=20)
        song = write_audio(folder / f"{name}.wav", samples)
        excerpts[name] = write_audio(folder / f"{name}-excerpt.wav", samples[66150:264600])
        data[name] = fingerprint_reference(song, params=FingerprintParams())
    return data, excerpts


def check(directory: Path, excerpts: dict[str, Path]) -> str | None:
    """What is wrong with the catalogue, or ``None`` if it is whole."""
    try:
        with Catalogue(directory, read_only=True) as catalogue:
            ids = {record.reference_id for record in catalogue.list(limit=100)}
            if not ids <= set(IDS):
                return f"unknown references {sorted(ids - set(IDS))}"
            matcher = Matcher(catalogue)
            for name, excerpt in excerpts.items():
                found = [m.reference_id for m in matcher.match_path(excerpt).matches]
                if found != ([name] if name in ids else []):
                    return f"excerpt of {name} matched {found} (catalogue holds {sorted(ids)})"
    except Exception as exc:
        return repr(exc)
    return None


def random_kills(work: Path, data: dict, excerpts: dict[str, Path], kills: int) -> dict:
    """Kill a looping writer ``kills`` times while a reader matches; check after each."""
    directory = work / "killed"
    data_file = work / "data.pickle"
    data_file.write_bytes(pickle.dumps(data))
    Catalogue(directory, create=True).close()
    stop = work / "stop-reader"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(directory),
         json.dumps([str(p) for p in excerpts.values()]), str(stop)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    rng = random.Random(0)
    problems, writes_killed = [], 0
    started = time.perf_counter()
    for number in range(kills):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(data_file), str(number)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert writer.stdout is not None
        writer.stdout.readline()  # "ready": imports done, catalogue open
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writes_killed += writer.returncode == -signal.SIGKILL
        problem = check(directory, excerpts)
        if problem:
            problems.append(f"kill {number}: {problem}")
            logger.error("kill %d: %s", number, problem)
        if number % 20 == 19:
            logger.info("%d kills, %d inconsistent", number + 1, len(problems))
    stop.touch()
    reader_result = json.loads(reader.communicate(timeout=600)[0].strip().splitlines()[-1])
    return {
        "kills": kills,
        "writers_killed_by_sigkill": writes_killed,
        "inconsistent_catalogues": len(problems),
        "problems": problems[:10],
        "reader_matches": reader_result["matches"],
        "reader_errors": reader_result["errors"],
        "reader_error_messages": reader_result["messages"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def churn(work: Path, data: dict, excerpts: dict[str, Path], cycles: int) -> dict:
    """Delete and re-add ``a`` ``cycles`` times while matching ``a`` and ``b``."""
    directory = work / "churn"
    with Catalogue(directory, create=True) as writer:
        writer.add("a", data["a"])
        writer.add("b", data["b"])
    done = threading.Event()

    def cycle() -> None:
        with Catalogue(directory) as writer:
            for _ in range(cycles):
                writer.remove("a")
                writer.add("a", data["a"])
        done.set()

    started = time.perf_counter()
    thread = threading.Thread(target=cycle)
    thread.start()
    counts = {"matches": 0, "failed": 0, "a_found": 0, "b_found": 0, "b_missed": 0, "wrong": 0}
    messages: list[str] = []
    with Catalogue(directory, read_only=True) as reader:
        matcher = Matcher(reader)
        while not done.is_set():
            for name in ("a", "b"):
                try:
                    found = [m.reference_id for m in matcher.match_path(excerpts[name]).matches]
                except Exception as exc:
                    counts["failed"] += 1
                    messages.append(repr(exc)[:200])
                    continue
                counts["matches"] += 1
                if found == [name]:
                    counts[f"{name}_found"] += 1
                elif found:
                    counts["wrong"] += 1
                elif name == "b":
                    counts["b_missed"] += 1
    thread.join()
    return {**counts, "cycles": cycles, "messages": messages[:5],
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main() -> None:
    """Run both parts and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="tunetrace-faults-") as temporary:
        work = Path(temporary)
        data, excerpts = prepare(work)
        result = {
            **run_info(),
            "random_kills": random_kills(work, data, excerpts, args.kills),
            "churn": churn(work, data, excerpts, args.cycles),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "catalogue_faults.json").write_text(json.dumps(result, indent=1))
    kills, cycles = result["random_kills"], result["churn"]
    table = "\n".join([
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}).",
        "",
        "| test | runs | inconsistent / failed | readers' matches | readers' errors |",
        "|---|---|---|---|---|",
        f"| writer killed at random (add, replace, remove) | {kills['kills']} kills | "
        f"{kills['inconsistent_catalogues']} inconsistent | {kills['reader_matches']} | "
        f"{kills['reader_errors']} |",
        f"| reference deleted and re-added while matched | {cycles['cycles']} cycles | "
        f"{cycles['failed']} failed matches | {cycles['matches']} (other reference found "
        f"{cycles['b_found']}, missed {cycles['b_missed']}, wrong {cycles['wrong']}) | "
        f"{cycles['failed']} |",
    ])  # fmt: skip
    (RESULTS / "catalogue_faults.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
