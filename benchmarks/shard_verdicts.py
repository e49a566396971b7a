"""Sharded and unsharded catalogues holding the same references: are their reports the same?

``python -m benchmarks.shard_verdicts`` copies the suite's catalogue (quick size: the corpus's
catalogue tracks and the in-catalogue rendered pieces) and moves each copy's references into
2 and into 5 shards (``tunetrace shards init``, which trains one index for all shards).
Every query is then decoded and fingerprinted once and matched against the unsharded
catalogue and each sharded one in this process, and against the 2-shard one on a Dask
``LocalCluster`` of two single-threaded worker processes. Queries: the suite's evaluation
queries (altered 10-30 s excerpts, whole tracks and negatives) and an even share of the
partial-copy evaluation uploads of every family (sections inside other music, medleys,
loops, padded tracks, and long negatives of up to 10 minutes).

Each query is matched with no score floor (``min_score=0``), so every verified reference
makes a match, below the threshold too. Counted per sharded layout:

- top identical: the same best reference (or none), its score within 0.01;
- flagged identical: the same references reported above the calibrated threshold;
- reports identical: every match equal (reference, score, tempo, pitch, coverage and every
  segment, as the JSON report rounds them).

Two index settings, each on its own copies. ``built``: the indexes ``index build`` and
``shards init`` choose (IVF; the shards' lists and codes trained once for all of them, on the
sample one catalogue of all the references trains on, so each shard's index is a piece of
the unsharded one). ``exact``: flat indexes in every catalogue, so the merged nearest patches
are one catalogue's and only the matching logic is compared. ``fastscan``: the IVF-PQ index
with 4-bit fast-scan codes a catalogue of about a million works builds (trained once for all
shards), whose lists a process holding several shards scans in one pass. Settings not run
(``--indexes``) keep their rows from the last results, marked with the commit they were
measured at.
Results: ``benchmarks/results/shard_verdicts.json`` and ``shard_verdicts.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tunetrace.index.catalogue import Catalogue
from tunetrace.index.resharding import init_sharded
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus, partial_copies, renders, suite
from benchmarks.run_benchmark import CACHE, list_tracks
from benchmarks.run_info import run_info
from benchmarks.shards import dask_cluster, log_without_dask_chatter
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher
from tunetrace.opening import open_catalogue
from tunetrace.report import MatchReport, report_to_dict
from tunetrace.scoring import ScoreModel

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
#: Score difference within which two top verdicts count as the same.
SCORE_TOLERANCE = 0.01
#: Marks a finished copy in the benchmark cache.
COMPLETE = "complete.json"
INDEX_SETTINGS = ("built", "exact", "fastscan")
#: The index each setting builds in every copy (``built``: what ``index build`` chooses).
SPECS = {"exact": IndexSpec(kind="flat"), "fastscan": IndexSpec(kind="ivfpq")}
#: Copies made by an earlier version of the sharding (shards trained apart) are made again.
LAYOUT_VERSION = 2


def catalogue_copy(source: Path, index: str, shards: int) -> Path:
    """A copy of ``source`` in the benchmark cache (made once): unsharded when ``shards`` is
    0, else moved into that many shards; with the index of ``SPECS[index]`` when it names one."""
    directory = CACHE / f"shard-verdicts-{source.name}-{index}-{shards}"
    with contextlib.suppress(OSError, ValueError):
        made = json.loads((directory / COMPLETE).read_text())
        if made.get("layout") == LAYOUT_VERSION:
            return directory
    shutil.rmtree(directory, ignore_errors=True)
    # the catalogue's own files only (not the benchmark cache's marker of a finished one)
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("complete", COMPLETE))
    if shards:
        init_sharded(directory, shards)
    if index in SPECS:
        with open_catalogue(directory) as catalogue:
            catalogue.rebuild_index(SPECS[index])
    (directory / COMPLETE).write_text(
        json.dumps({"source": source.name, "shards": shards, "layout": LAYOUT_VERSION})
    )
    return directory


def chosen_queries(tracks: list[corpus.Track], seed: int, partial_every: int) -> list[dict]:
    """The suite's evaluation queries and every ``partial_every``-th partial-copy evaluation
    upload of each family (generated, or reused from the benchmark cache)."""
    size = suite.SIZES["quick"]
    works = renders.render_works(int(size["renders"]), CACHE)  # type: ignore[arg-type]
    suite_queries = suite.split_queries(
        tracks, works, "evaluation", size["repeats"], size["negatives_per_kind"], seed + 1  # type: ignore[arg-type]
    )
    plans = partial_copies.plan_split(
        tracks, "evaluation", partial_copies.SIZES["full"], seed
    )
    by_family: dict[str, list[partial_copies.PartialPlan]] = {}
    for plan in plans:
        by_family.setdefault(plan.family, []).append(plan)
    taken = [plan for family in by_family.values() for plan in family[::partial_every]]
    truths = partial_copies.make_uploads(
        taken, CACHE / "partial-queries" / f"evaluation-seed{seed}"
    )
    return [
        *({"path": q.path, "kind": f"suite/{q.family}"} for q in suite_queries),
        *({"path": t["path"], "kind": f"partial/{t['family']}"} for t in truths),
    ]


def _reports(matcher: Matcher, features: dict[str, Any]) -> dict[str, list[dict]]:
    """Every query's matches with no score floor, as the JSON report gives them."""
    out = {}
    for path, query in features.items():
        matches = matcher.match_features(query, min_score=0.0)
        out[path] = report_to_dict(MatchReport(path, query.duration_s, 0.0, matches))["matches"]
    return out


def compare(
    layout: dict[str, list[dict]], unsharded: dict[str, list[dict]], threshold: float
) -> dict[str, Any]:
    """How many queries a layout answers as the unsharded catalogue does, and how the others
    differ."""
    top = flagged = whole = 0
    differences = []
    for path, expected in unsharded.items():
        found = layout[path]
        same_top = (not found and not expected) or (
            bool(found) and bool(expected)
            and found[0]["reference_id"] == expected[0]["reference_id"]
            and abs(found[0]["score"] - expected[0]["score"]) <= SCORE_TOLERANCE
        )  # fmt: skip
        above = [m["reference_id"] for m in found if m["score"] >= threshold]
        same_flagged = above == [m["reference_id"] for m in expected if m["score"] >= threshold]
        top += same_top
        flagged += same_flagged
        whole += found == expected
        if found != expected:
            differences.append({
                "query": Path(path).name,
                "top_identical": same_top,
                "flagged_identical": same_flagged,
                "unsharded": [(m["reference_id"], m["score"]) for m in expected[:3]],
                "sharded": [(m["reference_id"], m["score"]) for m in found[:3]],
            })  # fmt: skip
    return {
        "queries": len(unsharded),
        "top_identical": top,
        "flagged_identical": flagged,
        "reports_identical": whole,
        "differences": differences,
    }


def run(
    source: Path,
    queries: list[dict],
    *,
    layouts: tuple[int, ...],
    dask_layout: int,
    indexes: tuple[str, ...],
) -> dict[str, Any]:
    """Match every query on every layout and index setting; write and return the results."""
    threshold = ScoreModel.load().threshold
    with Catalogue(source, read_only=True) as catalogue:
        references = catalogue.count()
        features, unreadable = {}, []
        matcher = Matcher(catalogue)
        for query in queries:
            try:
                features[query["path"]] = matcher.load_query(query["path"])
            except TunetraceError as exc:  # a query that is mostly silence, say
                unreadable.append({"query": Path(query["path"]).name, "error": str(exc)})
    result: dict[str, Any] = {
        **run_info(),
        "catalogue": {"source": source.name, "references": references},
        "threshold": threshold,
        "score_tolerance": SCORE_TOLERANCE,
        "queries": _count_kinds([q for q in queries if q["path"] in features]),
        "queries_refused": unreadable,
        "settings": {},
        "timing_s": {},
    }
    for index in indexes:
        started = time.perf_counter()
        with open_catalogue(catalogue_copy(source, index, 0), read_only=True) as opened:
            unsharded = _reports(Matcher(opened), features)
        rows: dict[str, Any] = {}
        for shards in layouts:
            directory = catalogue_copy(source, index, shards)
            with open_catalogue(directory, read_only=True) as opened:
                rows[f"{shards} shards, in process"] = compare(
                    _reports(Matcher(opened), features), unsharded, threshold
                )
            if shards == dask_layout:
                with (
                    dask_cluster(2) as client,
                    open_catalogue(directory, read_only=True, scheduler=client) as opened,
                ):
                    rows[f"{shards} shards, Dask (2 workers)"] = compare(
                        _reports(Matcher(opened), features), unsharded, threshold
                    )
            logger.info("%s indexes, %d shards: %s", index, shards, {
                k: {n: v for n, v in row.items() if n != "differences"}
                for k, row in rows.items() if k.startswith(f"{shards} ")
            })  # fmt: skip
        result["settings"][index] = rows
        result["timing_s"][index] = round(time.perf_counter() - started, 1)
    _carry_over(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shard_verdicts.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "shard_verdicts.md").write_text(markdown(result))
    return result


def _carry_over(result: dict[str, Any]) -> None:
    """Keep the rows of index settings not run this time from the last results, if they
    were measured on the same catalogue and queries (marked with their commit)."""
    with contextlib.suppress(OSError, ValueError):
        earlier = json.loads((RESULTS / "shard_verdicts.json").read_text())
        if (earlier["catalogue"], earlier["queries"]) != (result["catalogue"], result["queries"]):
            return
        for index, rows in earlier["settings"].items():
            if index not in result["settings"]:
                result["settings"][index] = rows
                result["timing_s"][index] = earlier["timing_s"].get(index)
                carried = earlier.get("carried_over", {}).get(index, earlier["commit"])
                result.setdefault("carried_over", {})[index] = carried


def _count_kinds(queries: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for query in queries:
        family = query["kind"].split("/")[0]
        counts[family] = counts.get(family, 0) + 1
    return counts


def markdown(result: dict[str, Any]) -> str:
    """The results as a short Markdown table."""
    queries = result["queries"]
    lines = [
        f"Sharded against unsharded, the same {result['catalogue']['references']} references, "
        f"{result['date']}, {result['machine']}, commit {result['commit']}. "
        f"{queries.get('suite', 0)} suite queries and {queries.get('partial', 0)} partial-copy "
        "uploads (evaluation split), each matched with no score floor "
        f"({len(result['queries_refused'])} more refused as every catalogue refuses them).",
        "",
        "| indexes | layout | queries | top identical | flagged identical | reports identical |",
        "|---|---|---|---|---|---|",
    ]
    for index, rows in result["settings"].items():
        for layout, row in rows.items():
            lines.append(
                f"| {index} | {layout} | {row['queries']} | {row['top_identical']} | "
                f"{row['flagged_identical']} | {row['reports_identical']} |"
            )
    lines += [
        "",
        "Top identical: the same best reference (or none), its score within "
        f"{result['score_tolerance']}. Flagged identical: the same references above the "
        f"threshold ({result['threshold']:.2f}). Reports identical: every match, estimate and "
        "segment equal as the JSON report rounds them. Indexes `built`: IVF indexes as "
        "`index build` and `shards init` make them (the shards' trained once for all of "
        "them, as one catalogue of all the references trains its own); `exact`: flat "
        "indexes everywhere; `fastscan`: IVF-PQ with 4-bit fast-scan codes (the kind for "
        "about a million works), trained once for all shards, each process scanning its "
        "shards' lists in one pass.",
        "",
    ]
    for index, commit in result.get("carried_over", {}).items():
        lines += [f"The `{index}` rows were measured at commit {commit}, not run again.", ""]
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--dask-layout", type=int, default=2, help="0: no Dask run")
    parser.add_argument("--indexes", nargs="+", choices=INDEX_SETTINGS, default=INDEX_SETTINGS)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--partial-every", type=int, default=6, help="every N-th partial-copy upload per family"
    )
    args = parser.parse_args()
    log_without_dask_chatter()
    tracks = corpus.installed_or_exit(list_tracks())
    reason = renders.available()
    if reason:
        raise SystemExit(f"{reason}; run `python -m benchmarks.corpus install --suite-tools`")
    works = renders.render_works(int(suite.SIZES["quick"]["renders"]), CACHE)  # type: ignore[arg-type]
    source, _ = suite.suite_catalogue(tracks, works)
    queries = chosen_queries(tracks, args.seed, args.partial_every)
    logger.info("%d queries", len(queries))
    result = run(
        source,
        queries,
        layouts=tuple(args.layouts),
        dask_layout=args.dask_layout,
        indexes=tuple(args.indexes),
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
