"""Evidence a reviewer can see: why a query is (or is not) an altered copy of a reference.

:func:`build_evidence` aligns the query with its best-scoring reference (or a named one) and
collects what the plot shows: the two chroma sequences after the estimated tempo ratio and pitch
shift are undone, their frame-by-frame similarity with the matched segments, and the alignment
path (query time against reference time, whose slope is the tempo ratio), and a timeline of
the whole upload with every matched section and its work. :func:`render_png`
draws it; :func:`evidence_to_dict` is the same data as JSON; :func:`render_html` wraps both in
one self-contained page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunetrace.alteration import classify_alteration
from tunetrace.errors import ReferenceNotFoundError
from tunetrace.fingerprint.embedding import interpolate_frames
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.tonality import low_tonality_caution, tonality
from tunetrace.matcher import Matcher
from tunetrace.report import Match, segment_to_dict
from tunetrace.types import Segment, Verification

#: Frames per second of the arrays in the JSON form (the plot uses every frame).
JSON_FRAME_RATE_HZ = 2.0


@dataclass
class Evidence:
    """Everything the evidence view shows for one query and one reference."""

    query: str
    duration_s: float
    threshold: float
    reference_id: str | None = None
    title: str | None = None
    artist: str | None = None
    score: float = 0.0
    tempo_ratio: float = 1.0
    pitch_shift_semitones: float = 0.0
    alteration: str = "none"
    coverage: float = 0.0
    offset_s: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    frame_rate_hz: float = 10.0
    query_chroma: np.ndarray | None = None
    aligned_reference_chroma: np.ndarray | None = None
    similarity: np.ndarray | None = None
    query_tonality: float | None = None
    timeline: list[Match] = field(default_factory=list)

    @property
    def is_copy(self) -> bool:
        """Whether the score reaches the verdict threshold."""
        return self.reference_id is not None and self.score >= self.threshold

    @property
    def verdict(self) -> str:
        """One or two sentences for the reviewer."""
        if self.is_copy:
            works = [match.reference_id for match in self.timeline]
            if len(works) > 1:
                return (
                    f"Copied sections of {len(works)} works: {', '.join(works)}. "
                    f"Shown in detail: {self.reference_id}."
                )
            return f"Probable altered copy of {self.reference_id}."
        if self.reference_id is None:
            verdict = "No reference came close: nothing in the catalogue aligns with this audio."
        else:
            verdict = (
                f"Not a copy: the closest reference, {self.reference_id}, scores "
                f"{self.score:.3f}, below the threshold {self.threshold:.3f}."
            )
        caution = low_tonality_caution(self.query_tonality)
        if caution is not None:
            verdict += f" Caution: {caution}."
        return verdict


def build_evidence(
    matcher: Matcher,
    features: Features,
    *,
    query_name: str,
    reference_id: str | None = None,
) -> Evidence:
    """Align the query with its best reference (or ``reference_id``) and collect the evidence.

    Raises
    ------
    ReferenceNotFoundError
        If ``reference_id`` is not in the catalogue.
    """
    catalogue = matcher.catalogue
    evidence = Evidence(
        query=query_name,
        duration_s=features.duration_s,
        threshold=matcher.default_min_score,
        frame_rate_hz=features.frame_rate_hz,
        query_chroma=features.chroma,
        query_tonality=tonality(features, params=catalogue.params),
    )
    wanted = catalogue.get(reference_id) if reference_id is not None else None
    verifications = matcher.verify(features)
    evidence.timeline = matcher.matches_from(features, verifications, top=20)
    if wanted is None:  # a work found damaged reading it whole is no evidence
        verifications = [v for v in verifications if not matcher.found_damaged(v.reference_key)]
    else:
        verifications = [v for v in verifications if v.reference_key == wanted.key]
        if not verifications:  # not among the best: align with that reference alone
            verifications = matcher.verify(features, reference_key=wanted.key)
    if not verifications:
        if wanted is not None:
            evidence.reference_id, evidence.title = wanted.reference_id, wanted.title
            evidence.artist = wanted.artist
            evidence.score = 0.0
        return evidence
    # the verification the report follows for that work (grown, as reported)
    own = [v for v in verifications if v.reference_key == verifications[0].reference_key]
    best, _ = matcher.reported_verification(features, own)
    record = catalogue.record_by_key(best.reference_key)
    reference = catalogue.features(best.reference_key)
    evidence.reference_id, evidence.title, evidence.artist = (
        record.reference_id,
        record.title,
        record.artist,
    )
    evidence.score = best.score
    evidence.tempo_ratio = best.tempo_ratio
    evidence.pitch_shift_semitones = best.pitch_shift_semitones
    evidence.alteration = classify_alteration(best.tempo_ratio, best.spectral_shift_semitones)
    # the share of the whole upload, as the report gives it (a section's own is its window's)
    reported = [m for m in evidence.timeline if m.reference_id == record.reference_id]
    evidence.coverage = reported[0].coverage if reported else best.coverage
    evidence.offset_s = best.offset_frames / features.frame_rate_hz
    evidence.segments = list(best.segments)
    aligned = _aligned_reference_chroma(features, reference, best)
    evidence.aligned_reference_chroma = aligned
    evidence.similarity = _frame_similarity(features.chroma, aligned)
    return evidence


def _aligned_reference_chroma(
    query: Features, reference: Features, verification: Verification
) -> np.ndarray:
    """Reference chroma at the query's frames and pitch (NaN where the query is outside it)."""
    positions = verification.offset_frames + verification.tempo_ratio * np.arange(query.n_frames)
    last = reference.n_frames - 1
    aligned = interpolate_frames(reference.chroma, positions)
    bins_per_semitone = query.chroma.shape[0] / 12
    aligned = _roll_fractional(aligned, verification.pitch_shift_semitones * bins_per_semitone)
    aligned[:, (positions < 0) | (positions > last)] = np.nan
    return aligned.astype(np.float32)


def _roll_fractional(chroma: np.ndarray, bins: float) -> np.ndarray:
    whole = int(np.floor(bins))
    frac = bins - whole
    return (1 - frac) * np.roll(chroma, whole, axis=0) + frac * np.roll(chroma, whole + 1, axis=0)


def _frame_similarity(query: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Pearson correlation of each query frame with the aligned reference frame."""
    q = query - query.mean(axis=0, keepdims=True)
    with warnings.catch_warnings():  # frames outside the reference are all NaN: NaN is right
        warnings.simplefilter("ignore", RuntimeWarning)
        r = aligned - np.nanmean(aligned, axis=0, keepdims=True) if aligned.size else aligned
    numerator = np.sum(q * r, axis=0)
    denominator = np.sqrt(np.sum(q * q, axis=0) * np.sum(r * r, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 1e-9, numerator / denominator, np.nan).astype(np.float32)


def report_fields(evidence: Evidence) -> dict[str, Any]:
    """The report fields shown in the text box and the JSON form."""
    return {
        "query": evidence.query,
        "duration_s": round(evidence.duration_s, 2),
        "verdict": evidence.verdict,
        "is_copy": evidence.is_copy,
        "threshold": round(evidence.threshold, 4),
        "reference_id": evidence.reference_id,
        "title": evidence.title,
        "artist": evidence.artist,
        "score": round(evidence.score, 4),
        "tempo_ratio": round(evidence.tempo_ratio, 4),
        "pitch_shift_semitones": round(evidence.pitch_shift_semitones, 2),
        "alteration": evidence.alteration,
        "coverage": round(evidence.coverage, 3),
        "segments": [segment_to_dict(s) for s in evidence.segments],
        "query_tonality": None
        if evidence.query_tonality is None
        else round(evidence.query_tonality, 2),
        "timeline": [
            {
                "reference_id": match.reference_id,
                "title": match.title,
                "score": round(match.score, 4),
                "segments": [segment_to_dict(s) for s in match.segments],
            }
            for match in evidence.timeline
        ],
    }


def evidence_to_dict(evidence: Evidence) -> dict[str, Any]:
    """The JSON form: report fields plus the plotted series at :data:`JSON_FRAME_RATE_HZ`."""
    data = report_fields(evidence)
    step = max(1, round(evidence.frame_rate_hz / JSON_FRAME_RATE_HZ))
    times = np.arange(0, len(evidence.query_chroma[0]), step) / evidence.frame_rate_hz
    data["series"] = {
        "frame_rate_hz": evidence.frame_rate_hz / step,
        "time_s": [round(float(t), 2) for t in times],
        "similarity": _listed(evidence.similarity, step),
        "alignment_path": [
            {
                "query_s": round(float(t), 2),
                "reference_s": round(evidence.offset_s + evidence.tempo_ratio * float(t), 2),
            }
            for t in times
        ]
        if evidence.reference_id is not None and evidence.similarity is not None
        else [],
        "query_chroma": _matrix(evidence.query_chroma, step),
        "aligned_reference_chroma": _matrix(evidence.aligned_reference_chroma, step),
    }
    return data


def _listed(values: np.ndarray | None, step: int) -> list[float | None]:
    if values is None:
        return []
    return [None if not np.isfinite(v) else round(float(v), 3) for v in values[::step]]


def _matrix(values: np.ndarray | None, step: int) -> list[list[float | None]]:
    if values is None:
        return []
    return [_listed(row, step) for row in values]


def render_png(evidence: Evidence, *, dpi: int = 110) -> bytes:
    """Draw the evidence view as a PNG image."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure = plt.figure(figsize=(12, 9.4), dpi=dpi, layout="constrained")
    outer = figure.add_gridspec(2, 1, height_ratios=(0.45, 2.8))
    _draw_timeline(figure.add_subplot(outer[0]), evidence)
    grid = outer[1].subgridspec(3, 2, width_ratios=(2.2, 1), height_ratios=(1, 1, 0.8))
    times = np.arange(evidence.query_chroma.shape[1]) / evidence.frame_rate_hz
    extent = (0, times[-1] if len(times) else 1, 0, 12)
    title_ref = evidence.reference_id or "no reference"
    chroma_axes = []
    for row, (matrix, label) in enumerate(
        [
            (evidence.query_chroma, f"Query: {evidence.query}"),
            (
                evidence.aligned_reference_chroma,
                f"Reference {title_ref}, tempo and pitch change undone",
            ),
        ]
    ):
        axes = figure.add_subplot(grid[row, 0], sharex=chroma_axes[0] if chroma_axes else None)
        if matrix is not None:
            axes.imshow(
                matrix, aspect="auto", origin="lower", extent=extent, cmap="magma",
                interpolation="nearest",
            )  # fmt: skip
        else:
            axes.text(0.5, 0.5, "no aligned reference", ha="center", transform=axes.transAxes)
        axes.set_yticks([0, 2, 4, 5, 7, 9, 11], ["C", "D", "E", "F", "G", "A", "B"])
        axes.set_ylabel("pitch class")
        axes.set_title(label, loc="left", fontsize=10)
        chroma_axes.append(axes)
    similarity_axes = figure.add_subplot(grid[2, 0], sharex=chroma_axes[0])
    if evidence.similarity is not None:
        similarity_axes.plot(times, evidence.similarity, lw=0.8, color="#1f4e79")
    for segment in evidence.segments:
        for axes in (*chroma_axes, similarity_axes):
            axes.axvspan(segment.query_start_s, segment.query_end_s, color="#2ca02c", alpha=0.15)
    similarity_axes.set_ylim(-1, 1)
    similarity_axes.set_ylabel("similarity")
    similarity_axes.set_xlabel("query time (s); matched segments shaded green")
    similarity_axes.set_title("Frame-by-frame chroma similarity", loc="left", fontsize=10)

    path_axes = figure.add_subplot(grid[0:2, 1])
    if evidence.reference_id is not None and evidence.similarity is not None:
        path_axes.plot(
            times, evidence.offset_s + evidence.tempo_ratio * times, "--", color="#999999",
            lw=1, label=f"alignment, slope {evidence.tempo_ratio:.3f}",
        )  # fmt: skip
        for number, segment in enumerate(evidence.segments):
            path_axes.plot(
                [segment.query_start_s, segment.query_end_s],
                [segment.reference_start_s, segment.reference_end_s],
                color="#2ca02c", lw=3, label="matched segment" if number == 0 else None,
            )  # fmt: skip
        path_axes.legend(loc="upper left", fontsize=8)
    path_axes.set_xlabel("query time (s)")
    path_axes.set_ylabel("reference time (s)")
    path_axes.set_title("Alignment path", loc="left", fontsize=10)
    path_axes.grid(alpha=0.3)

    text_axes = figure.add_subplot(grid[2, 1])
    text_axes.axis("off")
    text_axes.text(0, 1, text_box(evidence), va="top", family="monospace", fontsize=8.5,
                   wrap=True)  # fmt: skip
    figure.suptitle(textwrap.fill(evidence.verdict, width=120), fontsize=12, x=0.01, ha="left",
                    color="#b22222" if evidence.is_copy else "#333333")  # fmt: skip
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


#: Colours of the works on the timeline, in the order of their scores.
TIMELINE_COLOURS = ("#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _draw_timeline(axes: Any, evidence: Evidence) -> None:
    """The whole upload as one bar, each matched section drawn in its work's colour."""
    axes.set_xlim(0, max(evidence.duration_s, 1e-3))
    axes.set_ylim(0, 1)
    axes.set_yticks([])
    axes.barh(0.5, evidence.duration_s, height=0.6, left=0, color="#eeeeee")
    for number, match in enumerate(evidence.timeline):
        colour = TIMELINE_COLOURS[number % len(TIMELINE_COLOURS)]
        for position, segment in enumerate(match.segments):
            axes.barh(
                0.5, segment.query_end_s - segment.query_start_s, height=0.6,
                left=segment.query_start_s, color=colour,
                label=f"{match.reference_id} ({match.score:.2f})" if position == 0 else None,
            )  # fmt: skip
    if evidence.timeline:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8,
                    frameon=False)  # fmt: skip
        title = f"Whole upload ({evidence.duration_s:.0f} s): copied sections by work"
    else:
        title = f"Whole upload ({evidence.duration_s:.0f} s): no copied section found"
    axes.set_title(title, loc="left", fontsize=10)
    axes.set_xlabel("query time (s)", fontsize=8)


def text_box(evidence: Evidence) -> str:
    """The evidence image's text panel: the report fields, one per line.

    Parameters
    ----------
    evidence : Evidence

    Returns
    -------
    text : str
        Reference, title, score and threshold, tempo, pitch, alteration, coverage and the
        first four segments.
    """
    fields = report_fields(evidence)
    lines = [
        f"reference  {fields['reference_id']}",
        f"title      {fields['title'] or '-'}",
        # from the unrounded values: the fields' 4 decimals rounded again can move the 3rd
        f"score      {evidence.score:.3f} (threshold {evidence.threshold:.3f})",
        f"tempo      {fields['tempo_ratio']:.3f}x",
        f"pitch      {fields['pitch_shift_semitones'] + 0.0:+.2f} semitones",
        f"alteration {fields['alteration']}",
        f"coverage   {fields['coverage']:.0%}",
    ]
    for segment in fields["segments"][:4]:
        lines.append(
            f"query {segment['query_start_s']:.1f}-{segment['query_end_s']:.1f} s = ref "
            f"{segment['reference_start_s']:.1f}-{segment['reference_end_s']:.1f} s"
        )
    return "\n".join(lines)


def render_html(evidence: Evidence) -> str:
    """A self-contained HTML page: the image and the report fields."""
    image = base64.b64encode(render_png(evidence)).decode()
    fields = report_fields(evidence)
    rows = "".join(
        f"<tr><th scope='row'>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in fields.items()
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>tunetrace evidence: {html.escape(evidence.query)}</title></head><body>"
        f"<h1>{html.escape(evidence.verdict)}</h1>"
        f"<img src='data:image/png;base64,{image}' alt='Evidence: chroma of query and "
        "reference aligned, similarity over time, alignment path' style='max-width:100%'>"
        f"<table>{rows}</table></body></html>"
    )


__all__ = [
    "Evidence",
    "ReferenceNotFoundError",
    "build_evidence",
    "evidence_to_dict",
    "render_html",
    "render_png",
    "text_box",
]
