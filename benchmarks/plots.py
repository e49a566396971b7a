"""Plots (matplotlib, PNG) and the Markdown summary of a suite result."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

#: Targets the suite reports against: (family, low, high, minimum recall).
TARGETS = (
    ("stretch", 0.7, 1.4, 0.95),
    ("speed", 0.7, 1.4, 0.95),
    ("pitch", -6, 6, 0.95),
    ("stretch", 0.5, 2.0, 0.90),
    ("speed", 0.5, 2.0, 0.90),
    ("pitch", -12, 12, 0.90),
)


def _amount_series(table: dict[str, dict], family: str) -> tuple[list[float], list[float]]:
    points = []
    for name, cell in table.items():
        found = re.fullmatch(rf"{family} ([-+0-9.]+)", name)
        if found:
            points.append((float(found.group(1)), cell["recall"]))
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def pooled_recall(
    table: dict[str, dict], family: str, low: float, high: float
) -> tuple[float, int]:
    """Recall over every grid amount of ``family`` within ``[low, high]`` (weighted by queries)."""
    hits = total = 0.0
    for name, cell in table.items():
        found = re.fullmatch(rf"{family} ([-+0-9.]+)", name)
        if found and low <= float(found.group(1)) <= high:
            hits += cell["recall"] * cell["n"]
            total += cell["n"]
    return (hits / total if total else float("nan")), int(total)


def draw_recall_vs_amount(result: dict, path: Path) -> None:
    """Recall against stretch factor, pitch shift and speed factor, tunetrace and the peer."""
    evaluation = result["evaluation"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = {
        "stretch": "time-stretch factor",
        "pitch": "pitch shift (semitones)",
        "speed": "speed factor",
    }
    for axis, (family, label) in zip(axes, labels.items(), strict=True):
        for table, name, style in (
            (evaluation["recall_by_amount"], "tunetrace", "o-"),
            (evaluation["peer_recall_by_amount"], "Chromaprint", "s--"),
        ):
            xs, ys = _amount_series(table, family)
            axis.plot(xs, ys, style, label=name)
        axis.set_xlabel(label)
        axis.set_ylabel("top-1 recall")
        axis.set_ylim(-0.03, 1.03)
        if family != "pitch":
            axis.set_xscale("log", base=2)
            axis.set_xticks([0.5, 0.7, 1, 1.4, 2.0], ["0.5", "0.7", "1", "1.4", "2"])
        axis.grid(alpha=0.3)
        axis.legend(loc="lower center")
    figure.suptitle("Recall by alteration amount (evaluation split)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_scores(result: dict, path: Path) -> None:
    """Score distributions of true matches and of negatives, with the threshold."""
    scores = result["evaluation"]["scores"]
    figure, axis = plt.subplots(figsize=(8, 4.2))
    bins = [i / 40 for i in range(41)]
    for name, values in sorted(scores.items()):
        axis.hist(values, bins=bins, alpha=0.5, label=f"{name} ({len(values)})", density=True)
    axis.axvline(result["threshold"], color="black", linestyle="--", label="threshold")
    axis.set_xlabel("calibrated score")
    axis.set_ylabel("density")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    axis.set_title("True matches vs hard negatives (best score per query)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_precision_recall(result: dict, path: Path) -> None:
    """Precision/recall over the score threshold, calibration and evaluation splits."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for key, name in (
        ("calibration_precision_recall", "calibration split"),
        ("evaluation", "evaluation split"),
    ):
        curve = result[key] if key != "evaluation" else result[key]["precision_recall"]
        axis.plot([c["recall"] for c in curve], [c["precision"] for c in curve], label=name)
        at = min(curve, key=lambda c: abs(c["threshold"] - result["threshold"]))
        axis.plot(at["recall"], at["precision"], "ko")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(f"Over the score threshold (dot: shipped {result['threshold']:.3f})")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_scale(result: dict, path: Path) -> None:
    """Latency and recall against catalogue size."""
    rows = result.get("scale") or []
    if not rows:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    works = [r["works"] for r in rows]
    left.plot(works, [r["latency_p50_ms"] for r in rows], "o-", label="p50")
    left.plot(works, [r["latency_p95_ms"] for r in rows], "s--", label="p95")
    left.set_xscale("log")
    left.set_xlabel("works in catalogue")
    left.set_ylabel("query latency (ms, one thread)")
    left.legend()
    left.grid(alpha=0.3)
    right.plot(works, [r["recall"] for r in rows], "o-", label="recall")
    right.plot(
        works, [r["false_positives"] / max(1, r["negatives"]) for r in rows], "s--", label="FP rate"
    )
    right.set_xscale("log")
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("works in catalogue")
    right.legend()
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_all(result: dict, folder: Path, *, prefix: str = "suite") -> None:
    """Write every plot of a result into ``folder`` as ``{prefix}-*.png``."""
    draw_recall_vs_amount(result, folder / f"{prefix}-recall-vs-amount.png")
    draw_scores(result, folder / f"{prefix}-scores.png")
    draw_precision_recall(result, folder / f"{prefix}-precision-recall.png")
    draw_scale(result, folder / f"{prefix}-scale.png")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the suite's targets."""
    evaluation = result["evaluation"]
    rows = []
    for family, low, high, goal in TARGETS:
        recall, n = pooled_recall(evaluation["recall_by_amount"], family, low, high)
        rows.append(
            (
                f"{family} {low:g}..{high:g}: recall >= {goal:.0%}",
                f"{recall:.1%} of {n}",
                recall >= goal,
            )
        )
    hard = evaluation["false_positives"].get("all", {"flagged": 0, "n": 0, "upper_95": 1.0})
    scale = {r["works"]: r for r in result.get("scale") or []}
    at_10k = scale.get(10000)
    if at_10k:
        rows.append(
            (
                "false-positive rate <= 0.1% at 10,000 works",
                f"{at_10k['false_positives']} of {at_10k['negatives']} (95% bound "
                f"{at_10k['fp_upper_95']:.1%}); evaluation split at the suite's catalogue: "
                f"{hard['flagged']} of {hard['n']}",
                at_10k["false_positives"] == 0 and at_10k["fp_upper_95"] <= 0.001,
            )
        )
        rows.append(
            (
                "10-s query p50 <= 100 ms at 10,000 works",
                f"{at_10k['latency_10s_p50_ms'] or at_10k['latency_p50_ms']:.0f} ms",
                (at_10k["latency_10s_p50_ms"] or at_10k["latency_p50_ms"]) <= 100,
            )
        )
    return rows


def markdown(result: dict, *, per_amount: bool = True) -> str:
    """The Markdown summary of a suite result (the summary block leaves out the per-amount
    table)."""
    evaluation = result["evaluation"]
    catalogue = result["catalogue"]
    lines = [
        f"Suite run {result['date']} on {result['machine']} (commit {result['commit']}), "
        f"size {result['size']}, seed {result['seed']}: {result['queries']['evaluation']} "
        f"evaluation and {result['queries']['calibration']} calibration queries; catalogue of "
        f"{catalogue['references']} references ({catalogue['audio_hours']:.1f} h: dev-corpus "
        f"tracks and {result['rendered_pieces']['in_catalogue']} rendered music21 pieces). "
        f"Total time {result['timing_s']['total'] / 60:.1f} min.",
        "",
        "**Targets**",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, met in targets(result):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    lines += [
        "",
        f"**Top-1 recall by family** (tunetrace at its shipped threshold "
        f"{result['threshold']:.3f}; Chromaprint at {result['peer_threshold']:.3f}, fitted on "
        "the calibration split)",
        "",
        "| family | tunetrace | Chromaprint | queries |",
        "|---|---|---|---|",
    ]
    peer = evaluation["peer_recall_by_family"]
    for family, cell in evaluation["recall_by_family"].items():
        lines.append(
            f"| {family} | {_pct(cell['recall'])} | {_pct(peer.get(family, {}).get('recall'))} "
            f"| {cell['n']} |"
        )
    amounts = evaluation["recall_by_amount"] if per_amount else {}
    if amounts:
        lines += ["", "**By amount**", "", "| family amount | tunetrace | Chromaprint | queries |"]
        lines.append("|---|---|---|---|")
    peer = evaluation["peer_recall_by_amount"]
    for name, cell in sorted(amounts.items(), key=lambda kv: _sort_key(kv[0])):
        other = _pct(peer.get(name, {}).get("recall"))
        lines.append(f"| {name} | {_pct(cell['recall'])} | {other} | {cell['n']} |")
    tools = {
        name: cell
        for name, cell in evaluation.get("recall_by_tool", {}).items()
        if name.split(" / ")[0] in ("stretch", "pitch", "speed")
    }
    if tools:
        lines += ["", "**By tool** (stretch, pitch and speed families, all amounts)", ""]
        lines += ["| family / tool | tunetrace | queries |", "|---|---|---|"]
        lines += [f"| {n} | {_pct(c['recall'])} | {c['n']} |" for n, c in sorted(tools.items())]
    lines += [
        "",
        "**Negatives (false positives)**",
        "",
        "| kind | tunetrace | 95% upper bound | Chromaprint |",
    ]
    lines.append("|---|---|---|---|")
    peer_fp = evaluation["peer_false_positives"]
    for kind, cell in evaluation["false_positives"].items():
        other = peer_fp.get(kind, {})
        lines.append(
            f"| {kind} | {cell['flagged']} of {cell['n']} | {cell['upper_95']:.1%} | "
            f"{other.get('flagged', '-')} of {other.get('n', '-')} |"
        )
    estimates = evaluation["estimates"]
    lines += ["", "**Estimates, timing, footprint**", "", "| measure | value |", "|---|---|"]
    table = [
        ("tempo ratio within 2% (correct matches)", _pct(estimates.get("tempo_within_2pct"))),
        ("pitch shift within 0.3 semitone", _pct(estimates.get("pitch_within_0.3"))),
        (
            "ingest, one worker (x realtime per core)",
            f"{result['ingest']['x_realtime_per_core']:.0f}x",
        ),
        ("catalogue on disk per hour of audio", f"{catalogue['disk_mb_per_hour']:.2f} MB"),
        ("FAISS index per hour of audio", f"{catalogue['index_mb_per_hour']:.2f} MB"),
        ("peak RSS, largest worker", f"{result['peak_rss_mb']['largest_worker']:.0f} MB"),
    ]
    for stage, cell in evaluation["stages"].items():
        table.append((f"{stage} p50 / p95", f"{cell['p50_ms']:.0f} / {cell['p95_ms']:.0f} ms"))
    lines += [f"| {name} | {value} |" for name, value in table]
    if result.get("scale"):
        lines += [
            "",
            "**Catalogue size sweep** (same queries at each size; one thread)",
            "",
            "| works | hours | index | index MB/h | recall | false positives | p50 / p95 ms "
            "| search / verification p50 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result["scale"]:
            lines.append(
                f"| {row['works']:,} | {row['audio_hours']} | {row['index']['kind']} | "
                f"{row['index_mb_per_hour']} | {row['recall']:.1%} of {row['positives']} | "
                f"{row['false_positives']} of {row['negatives']} | "
                f"{row['latency_p50_ms']:.0f} / {row['latency_p95_ms']:.0f} | "
                f"{row['search_p50_ms']:.0f} / {row['verification_p50_ms']:.0f} |"
            )
    guess = result.get("extrapolation")
    if guess:
        lines += [
            "",
            f"**Extrapolation to {guess['works']:,} works** (from the {guess['from_works']:,}-work "
            f"measurement; {guess['hours']:,} h, {guess['vectors']:,} vectors): an index of full "
            f"vectors would take {guess['full_vector_index_gb']} GB, IVF-PQ "
            f"{guess['ivfpq_index_gb']} GB; search p50 about {guess['search_p50_ms']} ms and a "
            f"10-s query about {guess['query_p50_ms']} ms on one thread. Assumptions: "
            f"{guess['assumptions']}",
        ]
    return "\n".join(lines) + "\n"


def _sort_key(name: str) -> tuple[str, float, str]:
    family, _, amount = name.partition(" ")
    try:
        return family, float(amount), ""
    except ValueError:
        return family, 0.0, amount


SUMMARY_START = "<!-- suite summary: written by python -m benchmarks.plots -->"
SUMMARY_END = "<!-- end of suite summary -->"


def update_summary_block(page: Path, result: dict) -> bool:
    """Replace the suite summary block of a Markdown page (between its markers); False if it
    has none.

    The docs include the whole ``suite.md`` already; this is for a page that wants the
    shorter summary (no per-amount table) written into its own text.
    """
    text = page.read_text()
    if SUMMARY_START not in text or SUMMARY_END not in text:
        return False
    head, rest = text.split(SUMMARY_START, 1)
    _, tail = rest.split(SUMMARY_END, 1)
    block = markdown(result, per_amount=False)
    page.write_text(f"{head}{SUMMARY_START}\n{block}{SUMMARY_END}{tail}")
    return True


def main() -> None:
    """Redraw the plots and Markdown (and optionally a page's summary block) from a result
    file."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("result", type=Path, help="e.g. benchmarks/results/suite.json")
    parser.add_argument(
        "--update-page",
        type=Path,
        default=None,
        metavar="PAGE",
        help="also write the summary between the suite-summary markers of this Markdown page",
    )
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    name = args.result.stem
    args.result.with_suffix(".md").write_text(markdown(result))
    draw_all(result, args.result.parent, prefix=name)
    if args.update_page and not update_summary_block(args.update_page, result):
        raise SystemExit(f"{args.update_page} has no suite-summary markers: not updated")


if __name__ == "__main__":
    main()
