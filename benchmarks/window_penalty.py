"""Fit how much a part of a long upload is marked down for being one of many parts.

python -m benchmarks.window_penalty [--size full] [--catalogue-size quick] [--write]

A section of a long upload is verified on its own part of the upload, and its log-odds are
lowered by ``penalty * log(n)``, ``n`` the upload's length over the part's
(:meth:`tunetrace.scoring.ScoreModel.score_section`), so that a long upload of honest music
is no likelier to be flagged than one short query. The shipped threshold is where the
exponential tail fitted to the calibration queries' best coincidences falls to 1 in 10,000.
This fits the penalty the same way on the long negatives of the partial-copy benchmark's
calibration split (whole unrelated tracks and medleys of unrelated music, 30 s to 10 min):
every verification of every negative upload is recorded with its uncorrected log-odds and
its ``n``; for a penalty ``b`` an upload's best coincidence is the highest
``logit - b * log(n)``; the fitted penalty is the smallest ``b`` at which the tail fitted
to those best coincidences reaches the threshold at the same 1 in 10,000.

With ``--write`` the penalty goes into the shipped ``tunetrace/calibration.json``
(``window_penalty_logit``). Results: ``benchmarks/results/window_penalty.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from tunetrace.index.catalogue import Catalogue

from benchmarks import corpus
from benchmarks.partial_copies import SIZES, catalogue_for, make_uploads, plan_split
from benchmarks.run_benchmark import (
    CACHE,
    RESULTS,
    TARGET_FALSE_POSITIVE_RATE,
    list_tracks,
    tail_quantile,
)
from benchmarks.run_info import run_info
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher
from tunetrace.scoring import ScoreModel
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)

#: Penalties tried, log-odds per unit of log(n), ascending.
PENALTY_STEP = 0.005


@dataclass(frozen=True)
class RecordingScoreModel(ScoreModel):
    """A score model that keeps the uncorrected log-odds and the ``n`` of every
    verification it scores (in :attr:`seen`)."""

    seen: list = None  # type: ignore[assignment]

    def score_section(self, verification, *, windows: float) -> float:  # type: ignore[override]
        """Record, then score as the shipped model does."""
        self.seen.append((self.raw_logit(verification), float(max(windows, 1.0))))
        return super().score_section(verification, windows=windows)


_matcher: Matcher | None = None


def _open(directory: str) -> None:
    global _matcher
    use_one_thread()
    shipped = ScoreModel.load()
    values = {f.name: getattr(shipped, f.name) for f in fields(ScoreModel)}
    _matcher = Matcher(
        Catalogue(directory, read_only=True), score_model=RecordingScoreModel(**values, seen=[])
    )


def _coincidences(path: str) -> list[tuple[float, float]]:
    """``(log-odds, n)`` of every verification of one upload."""
    assert _matcher is not None
    seen = _matcher.score_model.seen  # type: ignore[attr-defined]
    seen.clear()
    try:
        _matcher.verify(_matcher.load_query(path))
    except TunetraceError as exc:
        logger.warning("%s: %s", path, exc)
        return []
    return list(seen)


def best_coincidences(uploads: list[list[tuple[float, float]]], penalty: float) -> np.ndarray:
    """Each upload's highest ``logit - penalty * log(n)`` (uploads with none left out)."""
    return np.array(
        [max(z - penalty * np.log(n) for z, n in pairs) for pairs in uploads if pairs]
    )


def fit_penalty(
    uploads: list[list[tuple[float, float]]], threshold: float, ceiling: float
) -> tuple[float, dict[str, float]]:
    """The smallest penalty (at most ``ceiling``) whose fitted tail of the uploads' best
    coincidences reaches ``threshold`` at :data:`TARGET_FALSE_POSITIVE_RATE` or less.

    Returns
    -------
    penalty : float
        ``ceiling`` when no smaller one does.
    figures : dict
        The tail quantile and the highest best coincidence (log-odds) at that penalty, and
        with no penalty.
    """
    threshold_logit = float(np.log(threshold / (1 - threshold)))
    chosen = ceiling
    for penalty in np.arange(0.0, ceiling + 1e-9, PENALTY_STEP):
        if tail_quantile(best_coincidences(uploads, penalty), TARGET_FALSE_POSITIVE_RATE) <= (
            threshold_logit
        ):
            chosen = float(round(penalty, 6))
            break
    at_chosen, at_zero = best_coincidences(uploads, chosen), best_coincidences(uploads, 0.0)
    return chosen, {
        "threshold_logit": threshold_logit,
        "tail_quantile_logit": tail_quantile(at_chosen, TARGET_FALSE_POSITIVE_RATE),
        "highest_logit": float(at_chosen.max()),
        "tail_quantile_logit_without_penalty": tail_quantile(at_zero, TARGET_FALSE_POSITIVE_RATE),
        "highest_logit_without_penalty": float(at_zero.max()),
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--catalogue-size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="ship the fitted penalty")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tracks = corpus.installed_or_exit(list_tracks())
    directory, description = catalogue_for(tracks, args.catalogue_size, args.workers)
    plans = plan_split(tracks, "calibration", SIZES[args.size], args.seed)
    truths = make_uploads(
        plans, CACHE / "partial-queries" / f"calibration-seed{args.seed}", workers=args.workers
    )
    negatives = [t for t in truths if t["family"] == "negative"]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_open, initargs=(str(directory),)) as pool:
        uploads = list(pool.map(_coincidences, [t["path"] for t in negatives], chunksize=1))
    shipped = ScoreModel.load()
    if shipped.tail_scale_logit is None:
        raise SystemExit("the shipped score model has no tail scale to bound the penalty")
    penalty, figures = fit_penalty(uploads, shipped.threshold, shipped.tail_scale_logit)
    result = {
        **run_info(),
        "catalogue": description,
        "negative_uploads": len(negatives),
        "uploads_with_a_coincidence": sum(1 for pairs in uploads if pairs),
        "verifications": sum(len(pairs) for pairs in uploads),
        "threshold": shipped.threshold,
        "tail_scale_logit": shipped.tail_scale_logit,
        "window_penalty_logit": penalty,
        **figures,
        "seconds": round(time.perf_counter() - started, 1),
    }
    logger.info("%s", result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "window_penalty.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "window_penalty.md").write_text(markdown(result))
    if args.write:
        path = Path(__file__).resolve().parent.parent / "tunetrace" / "calibration.json"
        provenance = (
            f"{shipped.provenance}; window penalty {penalty:.3f} (log-odds per log of the "
            f"number of parts) fitted {time.strftime('%Y-%m-%d')} by benchmarks/window_penalty.py "
            f"on the best coincidences of {result['uploads_with_a_coincidence']} long negative "
            "uploads of the partial-copy calibration split"
        )
        model = replace(shipped, window_penalty_logit=penalty, provenance=provenance)
        path.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
        logger.info("window penalty %.3f written to %s", penalty, path)


def markdown(result: dict) -> str:
    """The fit as a short page."""
    return (
        f"Window penalty, {result['date']}, {result['machine']}, commit {result['commit']}: "
        f"fitted on {result['uploads_with_a_coincidence']} of {result['negative_uploads']} long "
        f"negative uploads of the partial-copy calibration split ({result['verifications']} "
        f"verifications), matched against {result['catalogue']}.\n\n"
        "| | log-odds per log(n) | tail at 1 in 10,000 (log-odds) | highest best coincidence |\n"
        "|---|---|---|---|\n"
        f"| none | 0 | {result['tail_quantile_logit_without_penalty']:.2f} | "
        f"{result['highest_logit_without_penalty']:.2f} |\n"
        f"| fitted | {result['window_penalty_logit']:.3f} | {result['tail_quantile_logit']:.2f} | "
        f"{result['highest_logit']:.2f} |\n"
        f"| every part independent (tail scale) | {result['tail_scale_logit']:.3f} | - | - |\n\n"
        f"Threshold {result['threshold']:.3f} = {result['threshold_logit']:.2f} log-odds.\n"
    )


if __name__ == "__main__":
    main()
