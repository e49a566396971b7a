"""Sharded catalogues up to 1,000,000 works: 10-s query latency, throughput, verdicts, scans.

``python -m benchmarks.shards`` measures a sharded catalogue of 1, 2, 5 and 10 shards of
100,000 works each, searched on a Dask ``LocalCluster`` of two single-threaded worker processes
through ``tunetrace.Matcher(ShardedCatalogue(directory, scheduler=client))``: the query is
decoded and fingerprinted once in this process, every shard returns its nearest patches from
the worker it is assigned to, the vote over them runs here, and the shards holding candidates
verify them there. For each shard count it reports p50/p95 latency of the 10-s queries of
:mod:`benchmarks.latency` (one query at a time), throughput with several client threads sending
queries at once, recall and false positives, and whether every query's top reference and score
are those of the unsharded 100,000-work catalogue. It also times
:func:`tunetrace.scan_backends.run_dask` with one worker process and with two (as the
library runs shard tasks, and with each worker kept to one thread), and projects the measured
per-shard costs to 10,000,000 works on larger clusters (the same model applied to the measured
1,000,000-work layout checks it).

What is simulated. Growing 1,000,000 works the way :mod:`benchmarks.latency` grows 100,000
would take many hours here, so the shards are made from the 100,000-work catalogue of
:mod:`benchmarks.latency` (its 131 real references and 99,869 mosaic works). Shard 0 is a byte
copy of it. Shards 1-9 are copies with the real references removed (``Catalogue.remove``, which
also drops them from the index) and the mosaic ids renumbered in SQLite, ``mosaic/0NNNNN``
becoming ``mosaic/kNNNNN`` in shard ``k`` (same length, so SQLite rewrites one page per row;
the keys, and so the index's vector ids, do not change). The mosaics of shards 1-9 therefore
repeat shard 0's mosaics under other ids: the same vector distribution, index size and rows per
shard as new music of that kind would give, but not new music. Ids are not where the routing
hash would put them (this benchmark reads by key alone; a lookup by id would look in the shard
the hash names). Each shard has its own copy of its index file and database, so the operating
system caches each shard's pages separately as it would distinct shards.

Method, as :mod:`benchmarks.latency`: the shards' caches of reference features are emptied
before every timed query (every candidate is read from SQLite and derived afresh), and an
untimed pass over all queries first brings the rows they read into the operating system's file
cache. The first tasks on a worker open its shards and compile kernels; the untimed pass
absorbs them. A per-shard pass then times each shard's search and verification on its worker
(the costs the 10M projection is made from; the shards probing as with
``MatchSettings.shard_probe_share``). Layouts named by ``--probe-share-layouts`` are measured
again with that option. The built shards live in the benchmark cache
(``shards-*``, a ``complete.json`` marker in each finished shard) and are reused by later
runs. Results: ``benchmarks/results/shards.json``, ``shards.md`` and ``shards-latency.png``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import resource
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import DATABASE_NAME, Catalogue
from tunetrace.index.shard_layout import ShardManifest, split_key, write_manifest

from benchmarks import corpus
from benchmarks.latency import latency_queries
from benchmarks.latency import summarise as latency_summarise
from benchmarks.match_rows import timed_features
from benchmarks.queries import Query
from benchmarks.run_benchmark import CACHE, build_catalogue
from benchmarks.run_info import run_info
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher, MatchSettings
from tunetrace.scan import ScanJob
from tunetrace.scan_backends import run_dask
from tunetrace.scoring import ScoreModel
from tunetrace.shard_access import DaskShards, OpenShard
from tunetrace.sharded_catalogue import ShardedCatalogue
from tunetrace.sharded_matcher import catalogue_probe_share

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
#: Works in the catalogue every shard is made from (that of ``benchmarks.latency``).
SOURCE_WORKS = 100_000
#: Id prefix of the mosaic works (``mosaic/NNNNNN``, six digits, below 100,000).
MOSAIC = "mosaic/"
#: Disk space a build leaves free, at least.
FREE_MARGIN_BYTES = 5 * 10**9
#: Marker of a finished shard (and of the shard every other is copied from).
COMPLETE = "complete.json"
TEMPLATE = "template.json"
#: Budget of each shard's cache of reference features on the workers. The library's default
#: (1 GiB per catalogue) applies to every shard a worker holds: at five shards per worker a
#: worker grew to 9.8 GB here and Dask paused it at 80% of its memory limit. Timed queries
#: empty the caches first anyway (each reference is read once per query), so the budget only
#: bounds memory and what the throughput passes reuse between queries.
SHARD_CACHE_BYTES = 200 * 2**20
#: Scatter/gathers of tasks that do nothing, timed per layout.
NOOP_CALLS = 30
#: Share of the CPU used by other processes above which a run counts as disturbed.
BUSY_SHARE = 0.2
#: The 10-s query p50 the 1,000,000-work layout is measured against.
LATENCY_GOAL_MS = 150
#: Score difference within which two verdicts count as the same.
SCORE_TOLERANCE = 0.01


# ------------------------------------------------------------------------- building shards


def source_catalogue(tracks: list[corpus.Track], seed: int) -> Path:
    """The 100,000-work catalogue of :mod:`benchmarks.latency` (never rebuilt here).

    Raises
    ------
    SystemExit
        If it is missing, or does not hold 100,000 references with a published index.
    """
    base, _ = build_catalogue(tracks)
    directory = CACHE / f"latency-{base.name}-{SOURCE_WORKS}-seed{seed}"
    if not (directory / DATABASE_NAME).exists():
        raise SystemExit(
            f"{directory} is missing: 'python -m benchmarks.latency --grow-only' makes it"
        )
    found = inspect_catalogue(directory)
    if found["references"] != SOURCE_WORKS or not found["index_file_bytes"]:
        raise SystemExit(f"{directory} is not a finished {SOURCE_WORKS:,}-work catalogue: {found}")
    if set(found["mosaics_by_digit"]) != {"0"}:
        raise SystemExit(f"{directory}: mosaic ids are not all below {SOURCE_WORKS:,}")
    return directory


@contextlib.contextmanager
def _immutable(directory: Path) -> Iterator[sqlite3.Connection]:
    """A connection that reads a closed catalogue database without writing anything (no
    journal or shared-memory files)."""
    db = sqlite3.connect(f"file:{directory / DATABASE_NAME}?mode=ro&immutable=1", uri=True)
    try:
        yield db
    finally:
        db.close()


def inspect_catalogue(directory: Path) -> dict[str, Any]:
    """References, real references, mosaics by leading digit and index file of a closed
    catalogue."""
    with _immutable(directory) as db:
        references, real = db.execute(
            "SELECT count(*), coalesce(sum(id NOT LIKE 'mosaic/%'), 0) FROM refs"
        ).fetchone()
        digits = dict(
            db.execute(
                "SELECT substr(id, 8, 1), count(*) FROM refs WHERE id LIKE 'mosaic/%' GROUP BY 1"
            ).fetchall()
        )
        publication = db.execute(
            "SELECT value FROM meta WHERE key = 'index_publication'"
        ).fetchone()
    index_file = json.loads(publication[0])["file"] if publication else None
    path = directory / index_file if index_file else None
    return {
        "references": int(references),
        "real_references": int(real),
        "mosaics_by_digit": digits,
        "index_file": index_file,
        "index_file_bytes": path.stat().st_size if path and path.exists() else 0,
        "database_bytes": (directory / DATABASE_NAME).stat().st_size,
    }


def _copy_catalogue(source: Path, target: Path) -> None:
    """Copy a closed catalogue's database and published index file into ``target`` (made
    afresh), after checking the disk keeps :data:`FREE_MARGIN_BYTES` free."""
    index_file = inspect_catalogue(source)["index_file"]
    names = [DATABASE_NAME, f"{DATABASE_NAME}-wal", index_file]
    files = [source / name for name in names if (source / name).exists()]
    needed = sum(f.stat().st_size for f in files)
    free = shutil.disk_usage(target.parent).free
    if free - needed < FREE_MARGIN_BYTES:
        raise SystemExit(
            f"copying {source} needs {needed / 1e9:.1f} GB and would leave less than "
            f"{FREE_MARGIN_BYTES / 1e9:.0f} GB free ({free / 1e9:.1f} GB free now)"
        )
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, target / path.name)


def _remove_real_references(directory: Path) -> int:
    """Remove every reference that is not a mosaic (index included); returns how many."""
    with _immutable(directory) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM refs WHERE id NOT LIKE 'mosaic/%'")]
    with Catalogue(directory) as catalogue:
        for reference_id in ids:
            catalogue.remove(reference_id)
    return len(ids)


def _number_mosaics(directory: Path, shard: int) -> int:
    """Renumber the mosaics ``mosaic/?NNNNN`` of a closed catalogue to ``mosaic/{shard}NNNNN``
    (ids of equal length: SQLite overwrites each row's first page in place). Idempotent."""
    db = sqlite3.connect(directory / DATABASE_NAME, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        changed = db.execute(
            "UPDATE refs SET id = 'mosaic/' || ? || substr(id, 9)"
            " WHERE id GLOB 'mosaic/[0-9][0-9][0-9][0-9][0-9][0-9]'",
            (str(shard),),
        ).rowcount
        db.execute("COMMIT")
    finally:
        db.close()
    return int(changed)


def _check_shard(directory: Path, shard: int) -> dict[str, Any]:
    """What a built shard holds, after checking it is what shard ``shard`` must be: shard 0
    the whole source, the others its mosaics alone, numbered ``mosaic/{shard}NNNNN``."""
    found = inspect_catalogue(directory)
    real = found["real_references"]
    if (
        found["mosaics_by_digit"] != {str(shard): found["references"] - real}
        or not found["index_file_bytes"]
        or not (found["references"] == SOURCE_WORKS if shard == 0 else real == 0)
    ):
        raise RuntimeError(f"shard {shard} at {directory} is not as built: {found}")
    return found


def shard_store(root: Path) -> Path:
    """Folder of the built shard catalogues."""
    return root / "store"


def store_dir(root: Path, shard: int) -> Path:
    """Directory of built shard ``shard``."""
    return shard_store(root) / f"shard-{shard:03d}"


def build_store(source: Path, root: Path, count: int) -> list[dict[str, Any]]:
    """Shards 0 .. ``count`` - 1, each made once and marked complete (see the module text).

    The last shard is made first, as the template the others are copied from: a copy of the
    source without its real references. It is renumbered last.

    Returns
    -------
    shards : list of dict
        Each shard's :func:`inspect_catalogue` figures and build seconds.
    """
    shard_store(root).mkdir(parents=True, exist_ok=True)

    def finish(directory: Path, shard: int, started: float) -> None:
        figures = _check_shard(directory, shard)
        figures["build_s"] = round(time.perf_counter() - started, 1)
        (directory / COMPLETE).write_text(json.dumps(figures, indent=1) + "\n")
        (directory / TEMPLATE).unlink(missing_ok=True)
        logger.info("shard %d built in %.0f s: %s", shard, figures["build_s"], figures)

    first = store_dir(root, 0)
    if not (first / COMPLETE).exists():
        started = time.perf_counter()
        partial = first.with_name(first.name + ".partial")
        _copy_catalogue(source, partial)
        partial.rename(first)  # rmtree'd target: a crash before here leaves only .partial
        finish(first, 0, started)
    last = store_dir(root, count - 1)
    if count > 1 and not (last / COMPLETE).exists() and not (last / TEMPLATE).exists():
        started = time.perf_counter()
        partial = last.with_name(last.name + ".partial")
        _copy_catalogue(source, partial)
        removed = _remove_real_references(partial)
        shutil.rmtree(last, ignore_errors=True)
        partial.rename(last)
        (last / TEMPLATE).write_text(json.dumps({"removed": removed}) + "\n")
        logger.info("template shard: %d real references removed in %.0f s", removed,
                    time.perf_counter() - started)  # fmt: skip
    for shard in range(1, count - 1):
        directory = store_dir(root, shard)
        if (directory / COMPLETE).exists():
            continue
        started = time.perf_counter()
        partial = directory.with_name(directory.name + ".partial")
        _copy_catalogue(last, partial)
        (partial / TEMPLATE).unlink(missing_ok=True)
        _number_mosaics(partial, shard)
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
        finish(directory, shard, started)
    if count > 1 and not (last / COMPLETE).exists():
        started = time.perf_counter()
        _number_mosaics(last, count - 1)
        finish(last, count - 1, started)
    return [json.loads((store_dir(root, s) / COMPLETE).read_text()) for s in range(count)]


def write_layouts(root: Path, counts: list[int]) -> dict[int, Path]:
    """A sharded catalogue directory per shard count: ``shards.json`` naming symbolic links
    to the first ``n`` built shards."""
    with Catalogue(store_dir(root, 0), read_only=True) as catalogue:
        params = catalogue.params
    layouts = {}
    for count in counts:
        directory = root / f"layout-{count:02d}"
        directory.mkdir(exist_ok=True)
        names = []
        for shard in range(count):
            name = f"shard-{shard:03d}"
            link = directory / name
            if not link.is_symlink():
                link.symlink_to(Path("..") / shard_store(root).name / name)
            names.append(name)
        write_manifest(directory, ShardManifest(1, tuple(names), params))
        layouts[count] = directory
    return layouts


# ------------------------------------------------------------------------- tasks on shards


def _limit_shard_cache(shard: OpenShard, budget: int) -> None:
    """Give one shard's cache of reference features a budget of ``budget`` bytes, emptied."""
    shard.catalogue.features_cache_bytes = budget
    shard.catalogue.clear_features_cache()


def limit_feature_caches(store: ShardedCatalogue, budget: int) -> None:
    """Give every shard's cache of reference features (on its worker) ``budget`` bytes."""
    store.shards.call_all(_limit_shard_cache, [(budget,)] * store.shard_count)


def _clear_shard_cache(shard: OpenShard) -> None:
    """Empty one shard's cache of reference features (run where the shard is open)."""
    shard.catalogue.clear_features_cache()


class _ShardMatcher(Matcher):
    """A shard's matcher searching its inverted lists as a sharded matcher with
    ``shard_probe_share`` has it search them
    (:func:`~tunetrace.sharded_matcher.probe_share`)."""

    def __init__(self, catalogue: Catalogue, *, share: float) -> None:
        super().__init__(catalogue)
        self.share = share

    def search_effort(self, features: Any) -> float:
        """The effort one catalogue uses, times the shard's share."""
        return super().search_effort(features) * self.share


#: Profiling matchers made on a worker, by shard directory and shard count.
_shard_matchers: dict[tuple[str, int], _ShardMatcher] = {}


def _profiled_shard(
    shard: OpenShard, features: Any, patches: Any, shard_count: int
) -> dict[str, Any]:
    """One shard's search and verification of a query, timed on its worker (its lists
    probed as the sharded matcher probes them among ``shard_count`` shards)."""
    from distributed import get_worker

    key = (str(shard.directory), shard_count)
    matcher = _shard_matchers.get(key)
    if matcher is None:
        share = catalogue_probe_share(shard.catalogue, shard_count)
        matcher = _shard_matchers[key] = _ShardMatcher(shard.catalogue, share=share)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    found = matcher.verify(features, patches=patches, timings=stages)
    return {
        "seconds": time.perf_counter() - started,
        "search_s": stages.get("search", 0.0),
        "verification_s": stages.get("verification", 0.0),
        "verifications": len(found),
        "worker": get_worker().address,
    }


def _noop(shard: OpenShard, *args: Any) -> None:
    """A task that does nothing (the cost of a scatter/gather alone)."""


def library_files() -> list[str]:
    """Where this process imported the library's sharding and catalogue modules from."""
    import tunetrace.index.catalogue

    import tunetrace.shard_access

    return sorted(
        {
            str(Path(module.__file__ or "").resolve().parent)
            for module in (tunetrace.shard_access, tunetrace.index.catalogue)
        }
    )


def _worker_rss_mb() -> float:
    """This process's resident memory, MB."""
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def clear_feature_caches(catalogue: Catalogue | ShardedCatalogue) -> None:
    """Empty the reference-feature caches of a catalogue or of every shard."""
    if isinstance(catalogue, ShardedCatalogue):
        catalogue.shards.call_all(_clear_shard_cache, [()] * catalogue.shard_count)
    else:
        catalogue.clear_features_cache()


# ------------------------------------------------------------------------- other load


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    import psutil

    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


def _client_cpu_seconds() -> float:
    """CPU seconds used by this process alone."""
    times = os.times()
    return times.user + times.system


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and its live descendants (the Dask workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


class OtherLoad:
    """Share of the machine's CPU that other processes used while the block ran (this
    machine is shared: a timing taken while others compute for the cores is slower), and the
    shares this process (``client_share``) and it with its workers (``own_share``) used."""

    def __enter__(self) -> OtherLoad:
        self.started = time.perf_counter()
        self.busy, self.own = _busy_cpu_seconds(), _own_cpu_seconds()
        self.client = _client_cpu_seconds()
        self.share = self.own_share = self.client_share = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        capacity = (time.perf_counter() - self.started) * (os.cpu_count() or 1)
        own = _own_cpu_seconds() - self.own
        others = (_busy_cpu_seconds() - self.busy) - own
        self.share = round(max(0.0, others) / capacity, 3)
        self.own_share = round(own / capacity, 3)
        self.client_share = round((_client_cpu_seconds() - self.client) / capacity, 3)


def wait_for_quiet(max_wait_s: float, threshold: float = BUSY_SHARE) -> float:
    """Wait (at most ``max_wait_s``) until other processes use less than ``threshold`` of the
    CPU over a few seconds; returns the share last seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        with OtherLoad() as load:
            time.sleep(5)
        if load.share < threshold or time.monotonic() > deadline:
            return load.share
        logger.info("other processes use %.0f%% of the CPU: waiting", load.share * 100)
        time.sleep(25)


# ------------------------------------------------------------------------- measuring


def run_query(matcher: Matcher, query: Query) -> dict[str, Any]:
    """One query through the pipeline with empty feature caches: stage times and verdict.

    The shards' caches are emptied before the clock starts; the top reference's id is read
    after it stops.
    """
    catalogue = matcher.catalogue
    clear_feature_caches(catalogue)
    started = time.perf_counter()
    try:
        features, stages = timed_features(matcher, query.path)
    except TunetraceError as exc:
        return {"path": query.path, "error": str(exc)}
    embedding = time.perf_counter()
    patches = matcher.query_patches(features, catalogue.params)
    searching = time.perf_counter()
    verifications = matcher.verify(features, timings=stages, patches=patches)
    elapsed = time.perf_counter() - started
    stages["embed"] = searching - embedding
    stages["search_and_verify"] = elapsed - (searching - started)
    best = verifications[0] if verifications else None
    top = catalogue.record_by_key(best.reference_key).reference_id if best else None
    flagged = best is not None and best.score >= matcher.default_min_score
    extra = {}
    if isinstance(catalogue, ShardedCatalogue):  # what shard 0 (the unsharded copy) answered
        first = next((v for v in verifications if split_key(v.reference_key)[0] == 0), None)
        extra["shard0_top"] = (
            None if first is None else catalogue.record_by_key(first.reference_key).reference_id
        )
        extra["shard0_score"] = None if first is None else round(float(first.score), 4)
    return {
        "path": query.path,
        "positive": query.positive,
        "family": query.family,
        "truth": query.source_id if query.positive else None,
        "top": top,
        "score": None if best is None else round(float(best.score), 4),
        "flagged": top if flagged else None,
        "elapsed_s": elapsed,
        "stages": stages,
        **extra,
    }


def timed_pass(
    matcher: Matcher, queries: list[Query], label: str, quiet_wait_s: float
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """An untimed pass over every query (shards opened, kernels compiled, rows in the file
    cache), then, once other processes leave the cores alone (see :func:`wait_for_quiet`),
    the timed pass.

    Returns
    -------
    rows : list of dict
    load : dict
        Other processes' CPU share before and during the timed pass.
    """
    for number, query in enumerate(queries):
        run_query(matcher, query)
        if number % 50 == 0:
            logger.info("%s: untimed pass, %d of %d", label, number, len(queries))
    before = wait_for_quiet(quiet_wait_s)
    rows = []
    with OtherLoad() as during:
        for number, query in enumerate(queries):
            rows.append(run_query(matcher, query))
            if number % 50 == 0:
                logger.info("%s: timed pass, %d of %d", label, number, len(queries))
    return rows, {"other_cpu_share_before": before, "other_cpu_share_during": during.share}


def profile_pass(store: ShardedCatalogue, queries: list[Query]) -> dict[str, Any]:
    """Each shard's own search-and-verify time of every query, on its worker, and the
    round trip around them (the wall time of the scatter/gather less the busiest worker's
    share)."""
    matcher = Matcher(store)
    per_shard: list[list[float]] = [[] for _ in range(store.shard_count)]
    search: list[list[float]] = [[] for _ in range(store.shard_count)]
    overheads, busiest, walls = [], [], []
    features = patches = None
    for query in queries:
        try:
            features = matcher.load_query(query.path)
        except TunetraceError:
            continue
        patches = matcher.query_patches(features, store.params)
        clear_feature_caches(store)
        started = time.perf_counter()
        found = store.shards.call_all(
            _profiled_shard, [(features, patches, store.shard_count)] * store.shard_count
        )
        wall = time.perf_counter() - started
        load: collections.Counter[str] = collections.Counter()
        for shard, part in enumerate(found):
            per_shard[shard].append(part["seconds"])
            search[shard].append(part["search_s"])
            load[part["worker"]] += part["seconds"]
        walls.append(wall)
        busiest.append(max(load.values()))
        overheads.append(wall - max(load.values()))
    empty, with_query = [], []
    for _ in range(NOOP_CALLS):  # the scatter/gather alone: tasks that do nothing
        started = time.perf_counter()
        store.shards.call_all(_noop, [()] * store.shard_count)
        empty.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.shards.call_all(_noop, [(features, patches)] * store.shard_count)
        with_query.append(time.perf_counter() - started)

    def ms(values: list[float]) -> float:
        return round(float(np.median(values)) * 1000, 1)

    return {
        "noop_scatter_gather_p50_ms": ms(empty),
        "noop_scatter_gather_with_query_p50_ms": ms(with_query),
        "shard_ms_by_query": [
            [round(per_shard[s][q] * 1000, 1) for s in range(store.shard_count)]
            for q in range(len(walls))
        ],
        "shard_p50_ms": [ms(v) for v in per_shard],
        "shard_search_p50_ms": [ms(v) for v in search],
        "shard_mean_ms": [round(float(np.mean(v)) * 1000, 1) for v in per_shard],
        "scatter_gather_p50_ms": ms(walls),
        "busiest_worker_p50_ms": ms(busiest),
        "overhead_p50_ms": ms(overheads),
    }


def throughput_pass(matcher: Matcher, queries: list[Query], threads: int) -> dict[str, Any]:
    """Every query once, sent by ``threads`` client threads at a time; queries per second.

    The shards' feature caches are emptied once before the pass (not between queries, which
    run concurrently).
    """
    clear_feature_caches(matcher.catalogue)

    def one(query: Query) -> float | None:
        started = time.perf_counter()
        try:
            features = matcher.load_query(query.path)
        except TunetraceError:
            return None
        matcher.verify(features)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="client") as pool:
        latencies = [s for s in pool.map(one, queries) if s is not None]
    seconds = time.perf_counter() - started
    return {
        "client_threads": threads,
        "queries": len(latencies),
        "seconds": round(seconds, 2),
        "queries_per_s": round(len(latencies) / seconds, 2),
        "latency_under_load_p50_ms": round(float(np.median(latencies)) * 1000, 1),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`benchmarks.latency.summarise` of one timed pass, over the stages this pass's
    matcher times (a sharded one times search and verification as one)."""
    stages = sorted({stage for row in rows if "error" not in row for stage in row["stages"]})
    return dict(latency_summarise(rows, stages))


def same_work(reference_id: str | None) -> str | None:
    """A reference id with the shard digit of a mosaic's number dropped: shard ``k``'s
    ``mosaic/kNNNNN`` is shard 0's ``mosaic/0NNNNN`` under another id."""
    if reference_id and reference_id.startswith(MOSAIC) and len(reference_id) == len(MOSAIC) + 6:
        return f"{MOSAIC}0{reference_id[len(MOSAIC) + 1 :]}"
    return reference_id


def _scores_agree(first: float | None, second: float | None) -> bool:
    """Both scores within :data:`SCORE_TOLERANCE`, or both absent (nothing verified)."""
    if first is None or second is None:
        return first is None and second is None
    return abs(first - second) <= SCORE_TOLERANCE


def compare_verdicts(
    sharded: list[dict[str, Any]], unsharded: list[dict[str, Any]]
) -> dict[str, Any]:
    """Whether each query's top reference and score are the unsharded catalogue's.

    ``identical``: the same work (a mosaic of shard ``k`` counts as the shard-0 mosaic it
    repeats) with a score within :data:`SCORE_TOLERANCE`; ``same_id``: the very same id;
    ``same_flagged_verdict``: the same flagged reference (or none flagged by both);
    ``shard0_identical``: shard 0's best verification (shard 0 is a copy of the unsharded
    catalogue) is the unsharded top reference with its score.
    """
    by_path = {r["path"]: r for r in unsharded if "error" not in r}
    compared = identical = same_id = same_verdict = shard0_same = 0
    differing = []
    for row in sharded:
        other = by_path.get(row["path"])
        if "error" in row or other is None:
            continue
        compared += 1
        close = _scores_agree(row["score"], other["score"])
        work = same_work(row["top"]) == same_work(other["top"])
        identical += work and close
        same_id += row["top"] == other["top"] and close
        same_verdict += same_work(row["flagged"]) == same_work(other["flagged"])
        shard0_same += row.get("shard0_top") == other["top"] and _scores_agree(
            row.get("shard0_score"), other["score"]
        )
        if not (work and close):
            differing.append(
                {
                    "path": row["path"],
                    "positive": row["positive"],
                    "sharded": [row["top"], row["score"]],
                    "unsharded": [other["top"], other["score"]],
                }
            )
    return {
        "compared": compared,
        "identical": identical,
        "same_id": same_id,
        "same_flagged_verdict": same_verdict,
        "shard0_identical": shard0_same,
        "differing": differing,
    }


# ------------------------------------------------------------------------- the cluster


def log_without_dask_chatter() -> None:
    """A benchmark's logging: this package's progress at INFO, Dask's own at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import distributed  # noqa: F401  (its import sets its loggers' levels: override them after)

    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def dask_cluster(workers: int) -> Iterator[Any]:
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes, and a client of
    it."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(workers)
        yield client


def shards_per_worker(client: Any, store: ShardedCatalogue) -> list[int]:
    """Shards assigned to each of the cluster's workers, most first (idle workers as 0)."""
    assert isinstance(store.shards, DaskShards)
    assigned = collections.Counter(store.shards.assignment())
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted((assigned[worker] for worker in workers), reverse=True)


def measure_layout(
    client: Any,
    directory: Path,
    queries: list[Query],
    unsharded: list[dict[str, Any]],
    threads: int,
    quiet_wait_s: float,
    *,
    probe_share: bool = False,
) -> dict[str, Any]:
    """Latency, verdicts, per-shard costs and throughput of one sharded catalogue (with
    ``probe_share``: its shards probing as one index of the whole would,
    ``MatchSettings.shard_probe_share``; no per-shard pass then)."""
    with ShardedCatalogue(directory, scheduler=client) as store:
        count = store.shard_count
        per_worker = shards_per_worker(client, store)
        limit_feature_caches(store, SHARD_CACHE_BYTES)
        label = f"{count} shard(s)" + (", probing as one index" if probe_share else "")
        matcher = Matcher(store, settings=MatchSettings(shard_probe_share=probe_share))
        rows, load = timed_pass(matcher, queries, label, quiet_wait_s)
        profile = None
        if not probe_share:
            logger.info("%s: per-shard pass", label)
            with OtherLoad() as profile_load:
                profile = profile_pass(store, queries)
            profile["other_cpu_share_during"] = profile_load.share
        logger.info("%s: throughput pass", label)
        load["other_cpu_share_before_throughput"] = wait_for_quiet(quiet_wait_s)
        with OtherLoad() as throughput_load:
            throughput = throughput_pass(matcher, queries, threads)
        throughput["other_cpu_share_during"] = throughput_load.share
        references = store.count()
    rss = client.run(_worker_rss_mb)
    imported = client.run(library_files)
    summary = summarise(rows)
    logger.info("%s: %s; throughput %s", label, summary, throughput)
    return {
        "shards": count,
        "probe_share": probe_share,
        "works": references,
        "shards_per_worker": per_worker,
        "worker_library_files": sorted({path for paths in imported.values() for path in paths}),
        "latency": summary,
        "other_load": load,
        "verdicts": compare_verdicts(rows, unsharded),
        "profile": profile,
        "throughput": throughput,
        "worker_rss_mb": {w: round(v) for w, v in rss.items()},
        "rows": rows,
    }


def measure_unsharded(directory: Path, queries: list[Query], quiet_wait_s: float) -> dict[str, Any]:
    """The same queries on shard 0 opened as an ordinary catalogue, in this process with its
    default threads (the verdicts the sharded catalogues are compared with)."""
    with Catalogue(directory, read_only=True) as catalogue:
        rows, load = timed_pass(Matcher(catalogue), queries, "unsharded", quiet_wait_s)
        references = catalogue.count()
    summary = summarise(rows)
    logger.info("unsharded: %s", summary)
    return {"works": references, "latency": summary, "other_load": load, "rows": rows}


def measure_scan(
    directory: Path, queries: list[Query], rounds: int, quiet_wait_s: float
) -> dict[str, Any]:
    """Files per second of :func:`run_dask` over the query files with one worker
    process and with two, in turn for ``rounds`` rounds, each after a warm-up scan.

    Each file is one task that decodes and fingerprints on a worker (kept to one thread,
    as a local scan worker is) and sends the query to the shards' tasks.
    """

    jobs = [ScanJob(q.path, q.path) for q in queries]
    # a sharded scan's tasks keep each worker process to one thread already
    setups = {"1": 1, "2": 2}
    runs: dict[str, list[float]] = {name: [] for name in setups}
    reports: dict[str, dict[str, Any]] = {}
    differing: list[dict[str, Any]] = []
    assignments = {}
    shares: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    for round_number in range(rounds):
        for name, workers in setups.items():
            with dask_cluster(workers) as client:
                address = client.scheduler.address
                with ShardedCatalogue(directory, scheduler=client) as store:
                    assignments[name] = shards_per_worker(client, store)
                    limit_feature_caches(store, SHARD_CACHE_BYTES)
                scan = {"top": 5, "min_score": None}
                list(run_dask(directory, jobs[:6], scheduler=address, **scan))
                wait_for_quiet(quiet_wait_s)
                started = time.perf_counter()
                with OtherLoad() as load:
                    found = run_dask(directory, jobs, scheduler=address, **scan)
                    lines = {job.query: line for job, line in found}
                seconds = time.perf_counter() - started
            shares[name].append(
                {"others": load.share, "ours": load.own_share, "client": load.client_share}
            )
            runs[name].append(len(lines) / seconds)
            found_tops = _scan_tops(lines)
            first = reports.setdefault("first", found_tops)
            differing += [
                {"query": query, "run": f"{name}, round {round_number}",
                 "first": first.get(query), "this": top}
                for query, top in found_tops.items() if top != first.get(query)
            ]  # fmt: skip
            logger.info("scan round %d, %s worker(s): %.2f files/s, %s", round_number, name,
                        runs[name][-1], shares[name][-1])  # fmt: skip

    def ratios(one: str, two: str) -> list[float]:
        return [b / a for a, b in zip(runs[one], runs[two], strict=True)]

    return {
        "files": len(jobs),
        "rounds": rounds,
        "files_per_s": {name: [round(r, 2) for r in v] for name, v in runs.items()},
        "median_files_per_s": {name: round(statistics.median(v), 2) for name, v in runs.items()},
        "ratio_two_to_one": round(statistics.median(ratios("1", "2")), 2),
        "ratios": [round(r, 2) for r in ratios("1", "2")],
        "shards_per_worker": assignments,
        "cpu_shares": shares,
        "reports_agree": not differing,
        "differing_report_lines": differing,
    }


def _scan_tops(lines: dict[str, Any]) -> dict[str, Any]:
    """Each report line's matches (id and score to 0.001), or its error code."""
    return {
        query: line["error"]["code"]
        if "error" in line
        else [[m["reference_id"], round(m["score"], 3)] for m in line.get("matches", [])]
        for query, line in lines.items()
    }


# ------------------------------------------------------------------------- projection


def project(
    layouts: list[dict[str, Any]],
    index_bytes: float,
    database_bytes: float,
    target_works: int,
    worker_cores: tuple[int, ...],
) -> dict[str, Any]:
    """Latency and throughput of ``target_works`` works in 100,000-work shards on clusters of
    several sizes, projected from costs measured here (a projection, not a measurement).

    For every query of the largest measured layout, the shard times of ``target_works``
    works are drawn from that query's own measured mosaic-shard times (plus its shard 0, the
    one with the real works), dealt evenly over the worker cores, and the busiest core's sum
    is the search time; to it are added the client's decoding and fingerprinting as measured
    and a scatter/gather overhead growing linearly with the tasks of a round (one per worker
    holding shards: the shard count or the worker cores, whichever is fewer), fitted to the
    do-nothing scatter/gathers of the measured layouts. Throughput is the worker cores' time
    divided by the mean shard time a query takes, capped by the fitted per-task overhead
    (the scheduler's share of each task). Assumes an even assignment, shard files in memory
    and one thread per worker, as measured here. The shard times are those measured, whose
    inverted lists are probed for the measured layout's size: a larger catalogue's shards
    probe a smaller share of theirs (:func:`~tunetrace.sharded_matcher.probe_share`), so the
    search part of the projection is an upper bound.
    """
    largest = max(layouts, key=lambda layout: layout["shards"])
    times = np.array(largest["profile"]["shard_ms_by_query"])
    pool = times[:, 1:] if times.shape[1] > 1 else times
    stages = largest["latency"]["stage_p50_ms"]
    client_ms = stages["decode"] + stages["features"] + stages["embed"]
    # tasks per round: one per worker holding shards
    counts = np.array(
        [sum(1 for n in layout["shards_per_worker"] if n) for layout in layouts], dtype=float
    )
    noop = np.array(
        [layout["profile"]["noop_scatter_gather_with_query_p50_ms"] for layout in layouts]
    )
    fitted = len(set(counts.tolist())) > 1
    slope, intercept = np.polyfit(counts, noop, 1) if fitted else (0.0, float(noop.mean()))
    slope, intercept = max(0.0, float(slope)), max(0.0, float(intercept))
    shards = target_works // SOURCE_WORKS
    mean_query_ms = float(np.mean(times[:, 0] + pool.mean(axis=1) * (shards - 1)))
    rng = np.random.default_rng(0)
    clusters = []
    for cores in worker_cores:
        tasks = min(shards, cores)
        overhead_ms = float(intercept) + slope * tasks
        busiest = []
        for row, mosaics in zip(times, pool, strict=True):
            draws = np.concatenate([row[:1], rng.choice(mosaics, size=shards - 1)])
            loads = np.zeros(cores)
            np.add.at(loads, np.arange(shards) % cores, draws)
            busiest.append(loads.max())
        worker_bound = cores * 1000 / mean_query_ms
        scheduler_bound = 1000 / (slope * tasks) if slope else float("inf")
        clusters.append(
            {
                "worker_cores": cores,
                "busiest_core_p50_ms": round(float(np.median(busiest)), 1),
                "latency_p50_ms": round(client_ms + overhead_ms + float(np.median(busiest)), 1),
                "latency_p95_ms": round(
                    client_ms + overhead_ms + float(np.percentile(busiest, 95)), 1
                ),
                "overhead_ms": round(overhead_ms, 1),
                "queries_per_s": round(min(worker_bound, scheduler_bound), 2),
                "worker_bound_queries_per_s": round(worker_bound, 2),
            }
        )
    return {
        "works": target_works,
        "shards": shards,
        "from_layout_shards": largest["shards"],
        "shard_p50_ms": round(float(np.median(pool)), 1),
        "shard_mean_ms": round(float(pool.mean()), 1),
        "client_ms": round(client_ms, 1),
        "overhead_fit_ms": {"per_task": round(slope, 2), "fixed": round(float(intercept), 1)},
        "by_worker_cores": clusters,
        "index_gb": round(shards * index_bytes / 1e9, 1),
        "database_gb": round(shards * database_bytes / 1e9, 1),
    }


# ------------------------------------------------------------------------- results


def _higher_score(differing: dict[str, Any]) -> float:
    """The higher of a differing verdict's two top scores (sharded, unsharded)."""
    return max(differing["sharded"][1] or 0, differing["unsharded"][1] or 0)


def markdown(result: dict[str, Any]) -> str:
    """The results as short Markdown tables."""
    every_layout = result["layouts"] + result.get("probe_share_layouts", [])
    lines = [
        f"Sharded catalogues, 10-s queries, {result['date']}, {result['machine']}, commit "
        f"{result['commit']}. Shards of {SOURCE_WORKS:,} works, 2 Dask worker processes of one "
        "thread each (LocalCluster on loopback); shard caches emptied before every timed "
        f"query and limited to {result['shard_features_cache_mb']:.0f} MiB per shard; "
        f"throughput with {result['client_threads']} client threads. Shards 1-9 repeat "
        "shard 0's mosaic works under other ids (see shards.json, `simulation`).",
        "",
        "| shards (works) | shards per worker | p50 ms | p95 ms | queries/s | recall "
        "| false positives | verdicts identical | others' CPU share while timed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    unsharded = result.get("unsharded")
    if unsharded:
        latency = unsharded["latency"]
        lines.append(
            f"| unsharded, in process ({unsharded['works']:,}) | - | {latency['p50_ms']} | "
            f"{latency['p95_ms']} | - | {latency['recall']:.1%} | "
            f"{latency['false_positives']} of {latency['negatives']} | - | "
            f"{unsharded['other_load']['other_cpu_share_during']:.0%} |"
        )
    for layout in every_layout:
        latency, verdicts = layout["latency"], layout["verdicts"]
        per_worker = "/".join(str(n) for n in layout["shards_per_worker"])
        sharing = ", probing as one index" if layout.get("probe_share") else ""
        lines.append(
            f"| {layout['shards']} ({layout['works']:,}){sharing} | {per_worker} | "
            f"{latency['p50_ms']} | {latency['p95_ms']} | "
            f"{layout['throughput']['queries_per_s']} | {latency['recall']:.1%} | "
            f"{latency['false_positives']} of {latency['negatives']} | "
            f"{verdicts['identical']} of {verdicts['compared']} | "
            f"{layout['other_load']['other_cpu_share_during']:.0%}, "
            f"{layout['throughput']['other_cpu_share_during']:.0%} |"
        )
    lines += [
        "",
        "Verdicts identical: the top reference is the same work as the unsharded catalogue's "
        "(shard k's `mosaic/kNNNNN` counts as the shard-0 mosaic `mosaic/0NNNNN` it repeats) "
        f"with a score within {SCORE_TOLERANCE}. Flagged verdicts (the reference reported "
        "above the threshold, or none) identical: "
        + "; ".join(
            f"{m['shards']} shards{', probing as one index' if m.get('probe_share') else ''} "
            f"{m['verdicts']['same_flagged_verdict']} of {m['verdicts']['compared']}"
            for m in every_layout
        )
        + ". Shard 0's own best verification equals the unsharded top reference and score: "
        + "; ".join(
            f"{m['shards']} shards {m['verdicts']['shard0_identical']}" for m in result["layouts"]
        )
        + ". Others' CPU share: of both cores, used by other processes during the timed "
        "pass and the throughput pass.",
    ]
    threshold = result["score_threshold"]
    for m in every_layout:
        differing = m["verdicts"]["differing"]
        flagged = [
            d for d in differing
            if _higher_score(d) >= threshold
        ]  # fmt: skip
        if not flagged:
            continue
        name = f"{m['shards']} shards" + (", probing as one index," if m.get("probe_share") else "")
        lines += [
            "",
            f"At {name} {len(flagged)} of {len(differing)} differing top references score "
            f"at or above the threshold ({threshold:.2f}) in one catalogue: "
            + "; ".join(
                f"{Path(d['path']).name}: sharded {d['sharded'][0]} {d['sharded'][1]:.3f}, "
                f"unsharded {d['unsharded'][0]} {d['unsharded'][1]:.3f}"
                for d in flagged
            )
            + ".",
        ]
    below = [
        d for m in every_layout
        for d in m["verdicts"]["differing"]
        if _higher_score(d) < threshold
    ]  # fmt: skip
    if below:
        highest = max(_higher_score(d) for d in below)
        every = len(below) == sum(len(m["verdicts"]["differing"]) for m in every_layout)
        lines += [
            "",
            ("Every top reference that differs" if every else "The other differing top "
             "references") + f" score(s) below the threshold in both catalogues (highest "
            f"{highest:.2f}): another shard, whose index lacks the real works, brings other "
            "mosaics to verification for queries whose own work is absent or missed.",
        ]  # fmt: skip
    largest = max(result["layouts"], key=lambda m: m["shards"])
    profile = largest["profile"]
    lines += [
        "",
        f"At {largest['works']:,} works the p50 is {largest['latency']['p50_ms']} ms against a "
        f"goal of {LATENCY_GOAL_MS} ms. In the per-shard pass, where every shard searches "
        "and verifies each query alone (more than sharded matching asks of it), the busiest "
        f"worker's {max(largest['shards_per_worker'])} shards take "
        f"{profile['busiest_worker_p50_ms']} ms per query (p50; a shard "
        f"{min(profile['shard_p50_ms'])}-{max(profile['shard_p50_ms'])} ms on one worker "
        f"thread) and the scatter/gather around them adds {profile['overhead_p50_ms']} ms "
        f"(calls that do nothing: {profile['noop_scatter_gather_with_query_p50_ms']} ms).",
    ]
    scan = result.get("scan")
    if scan:
        rates, per_worker = scan["median_files_per_s"], scan["shards_per_worker"]

        def cores(name: str) -> str:
            ours = statistics.median(share["ours"] for share in scan["cpu_shares"][name])
            return f"{ours * result['cpu_count']:.1f} cores busy"

        def rounds(one: str, two: str, ratios: list[float]) -> str:
            shares = zip(scan["cpu_shares"][one], scan["cpu_shares"][two], strict=True)
            return ", ".join(
                f"{ratio}{'*' if max(a['others'], b['others']) > BUSY_SHARE else ''}"
                for ratio, (a, b) in zip(ratios, shares, strict=True)
            )

        disturbed = [
            share["others"] > BUSY_SHARE for runs in scan["cpu_shares"].values() for share in runs
        ]
        footnote = (
            f"* other processes used over {BUSY_SHARE:.0%} of the CPU during a run of that round. "
            if any(disturbed)
            else ""
        )
        lines += [
            "",
            f"Scan (`run_dask`, {scan['files']} 10-s files, {scan['layout_shards']} "
            f"shards, {'/'.join(map(str, per_worker['2']))} per worker with 2 workers; median of "
            f"{scan['rounds']} rounds): 1 worker {rates['1']} files/s ({cores('1')}), 2 workers "
            f"{rates['2']} files/s ({cores('2')}), ratio {scan['ratio_two_to_one']} (rounds "
            f"{rounds('1', '2', scan['ratios'])}); each file's task decodes on a worker, "
            f"which keeps it to one thread. {footnote}Reports agree: {scan['reports_agree']}.",
        ]
    projection = result.get("projection")
    if projection:
        lines += [
            "",
            f"Projection, not a measurement: {projection['works']:,} works in "
            f"{projection['shards']} shards of {SOURCE_WORKS:,}, from the per-shard times "
            f"measured at {projection['from_layout_shards']} shards (mosaic shard "
            f"{projection['shard_p50_ms']} ms p50, {projection['shard_mean_ms']} ms mean, one "
            f"thread), client {projection['client_ms']} ms, scatter/gather overhead "
            f"{projection['overhead_fit_ms']['fixed']} ms + "
            f"{projection['overhead_fit_ms']['per_task']} ms per task of a round (one per "
            "worker core holding shards); even assignment, shard files in memory. The shard "
            "times were measured with shards probing as one index of the whole would "
            f"(`shard_probe_share`) at {projection['from_layout_shards']} shards, which is "
            f"more than at {projection['shards']}: a projection of that option, not of the "
            "default, whose shards each probe 32 lists.",
            "",
            "| worker cores | p50 ms | p95 ms | queries/s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['worker_cores']} | {p['latency_p50_ms']:.0f} | {p['latency_p95_ms']:.0f} | "
            f"{p['queries_per_s']} |"
            for p in projection["by_worker_cores"]
        ]
    small = result.get("projection_1m")
    if small:
        measured = max(result["layouts"], key=lambda m: m["shards"])
        lines += [
            "",
            f"The same model for {small['works']:,} works (measured on 2 cores: p50 "
            f"{measured['latency']['p50_ms']} ms, {measured['throughput']['queries_per_s']} "
            "queries/s): "
            + "; ".join(
                f"{p['worker_cores']} worker cores {p['latency_p50_ms']:.0f} ms p50, "
                f"{p['queries_per_s']} queries/s"
                for p in small["by_worker_cores"]
            )
            + " (projected; on 2 cores the client and scheduler share the workers' cores).",
        ]
    return "\n".join(lines) + "\n"


def draw(result: dict[str, Any], path: Path) -> None:
    """p50 latency and throughput against works."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = sorted(result["layouts"], key=lambda m: m["shards"])
    works = [m["works"] for m in layouts]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(works, [m["latency"]["p50_ms"] for m in layouts], "o-", label="p50")
    left.plot(works, [m["latency"]["p95_ms"] for m in layouts], "s--", label="p95")
    right.plot(works, [m["throughput"]["queries_per_s"] for m in layouts], "o-")
    left.axhline(LATENCY_GOAL_MS, color="grey", linestyle=":", label=f"{LATENCY_GOAL_MS} ms goal")
    left.set_xscale("log")
    left.set_xlabel("works in sharded catalogue (100,000 per shard)")
    left.set_ylabel("10-s query latency (ms)")
    left.legend()
    left.grid(alpha=0.3)
    right.set_xscale("log")
    right.set_xlabel("works in sharded catalogue (100,000 per shard)")
    right.set_ylabel(f"queries/s ({result['client_threads']} client threads)")
    right.grid(alpha=0.3)
    figure.suptitle("Sharded catalogue on 2 Dask worker processes, 2 cores")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _round_times(row: dict[str, Any]) -> None:
    """Round a query row's seconds to 0.1 ms (the results file stays small)."""
    if "elapsed_s" in row:
        row["elapsed_s"] = round(row["elapsed_s"], 4)
        row["stages"] = {stage: round(s, 4) for stage, s in row["stages"].items()}


class Progress:
    """Finished stages of a run, kept in the benchmark cache so a rerun with ``--resume``
    skips them."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.done: dict[str, Any] = json.loads(path.read_text()) if resume and path.exists() else {}

    def stage(self, name: str, run: Callable[[], Any]) -> Any:
        """``run()``'s result, or the one recorded by an earlier run."""
        if name in self.done:
            logger.info("%s: recorded by an earlier run", name)
            return self.done[name]
        self.done[name] = run()
        self.path.write_text(json.dumps(self.done) + "\n")
        return self.done[name]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--queries-per-family", type=int, default=12)
    parser.add_argument("--negatives", type=int, default=40)
    parser.add_argument("--client-threads", type=int, default=4)
    parser.add_argument("--scan-shards", type=int, default=2, help="0: no scan benchmark")
    parser.add_argument("--scan-rounds", type=int, default=3)
    parser.add_argument("--build-only", action="store_true", help="build the shards, then stop")
    parser.add_argument(
        "--limit", type=int, default=0, help="only the first N positives and negatives (a check)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=600,
        help="seconds to wait, at most, for other processes to leave the CPU before a timed pass",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="skip stages measured already")
    parser.add_argument(
        "--probe-share-layouts", type=int, nargs="*", default=[10],
        help="layouts measured again with shards probing as one index of the whole would",
    )  # fmt: skip
    args = parser.parse_args()
    log_without_dask_chatter()
    tracks = corpus.installed_or_exit(corpus.tracks())
    source = source_catalogue(tracks, args.seed)
    root = CACHE / f"shards-{source.name.removeprefix('latency-')}"
    counts = sorted(set(args.layouts))
    built = build_store(source, root, max([*counts, args.scan_shards]))
    layouts = write_layouts(root, sorted({*counts, args.scan_shards} - {0}))
    if args.build_only:
        return
    positives, negatives = latency_queries(
        tracks, per_family=args.queries_per_family, negatives=args.negatives, seed=args.seed
    )
    if args.limit:
        positives, negatives = positives[: args.limit], negatives[: args.limit]
    queries = positives + negatives
    progress = Progress(root / "progress.json", args.resume)
    unsharded = progress.stage(
        "unsharded", lambda: measure_unsharded(store_dir(root, 0), queries, args.quiet_wait)
    )
    measured = []
    with dask_cluster(2) as client:
        for count in counts:

            def measure(count: int = count) -> dict[str, Any]:
                return measure_layout(
                    client, layouts[count], queries, unsharded["rows"], args.client_threads,
                    args.quiet_wait,
                )  # fmt: skip

            measured.append(progress.stage(f"layout-{count}", measure))
        sharing = []
        for count in sorted(set(args.probe_share_layouts) & set(counts)):

            def measure_sharing(count: int = count) -> dict[str, Any]:
                return measure_layout(
                    client, layouts[count], queries, unsharded["rows"], args.client_threads,
                    args.quiet_wait, probe_share=True,
                )  # fmt: skip

            sharing.append(progress.stage(f"layout-{count}-probe-share", measure_sharing))
    scan = None
    if args.scan_shards:
        directory = layouts[args.scan_shards]
        scan = progress.stage(
            "scan", lambda: measure_scan(directory, queries, args.scan_rounds, args.quiet_wait)
        )
        scan["layout_shards"] = args.scan_shards
    index_bytes = float(np.mean([shard["index_file_bytes"] for shard in built]))
    database_bytes = float(np.mean([shard["database_bytes"] for shard in built]))
    result = {
        **run_info(),
        "params": FingerprintParams().digest(),
        "simulation": __doc__.split("\n\n")[2].replace("\n", " "),
        "source": {"catalogue": source.name, **inspect_catalogue(source)},
        "shard_files": {
            "index_mb_per_shard": round(index_bytes / 1e6, 1),
            "database_mb_per_shard": round(database_bytes / 1e6, 1),
            "built": built,
        },
        "cluster": {
            "workers": 2,
            "threads_per_worker": 1,
        },
        "client_threads": args.client_threads,
        "score_threshold": ScoreModel.load().threshold,
        "shard_features_cache_mb": SHARD_CACHE_BYTES / 2**20,
        "library_files": library_files(),
        "unsharded": unsharded,
        "layouts": measured,
        "probe_share_layouts": sharing,
        "scan": scan,
        "projection": project(measured, index_bytes, database_bytes, 10_000_000, (10, 25, 50, 100)),
        # the model checked against the measured layout, and the same works on more cores
        "projection_1m": project(measured, index_bytes, database_bytes, 1_000_000, (2, 5, 10)),
        "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu_count": os.cpu_count(),
    }
    for rows in [unsharded["rows"], *(layout["rows"] for layout in measured + sharing)]:
        for row in rows:
            _round_times(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shards.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "shards.md").write_text(markdown(result))
    draw(result, RESULTS / "shards-latency.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
