"""Batch rescans: match many files (or a catalogue's own references) into a JSON Lines report.

One report line per file, the same JSON as ``tunetrace match --json`` (errors as lines with an
``error`` field). Lines are appended and flushed as results arrive, so an interrupted scan
loses nothing it finished; :class:`ReportWriter` locks the report and, with ``resume=True``,
skips the files it already holds (by resolved path) and drops lines a crash left unreadable.
Work runs in local processes or on a Dask cluster (:mod:`tunetrace.scan_backends`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

from tunetrace.errors import AudioDecodeError, BadInputError, TunetraceError
from tunetrace.fingerprint.decode import load_audio_span, seekable_length
from tunetrace.fingerprint.features import Features, extract_features
from tunetrace.index.catalogue import Catalogue
from tunetrace.ingest import find_audio_files
from tunetrace.manifests import manifest_rows
from tunetrace.matcher import Matcher
from tunetrace.report import Match, MatchReport, error_to_dict, report_to_dict
from tunetrace.segments import covered_seconds
from tunetrace.types import Segment

logger = logging.getLogger(__name__)

#: Excerpt length when a scan matches excerpts instead of whole files.
EXCERPT_S = 20.0
#: Excerpts per reference in a self-scan.
SELF_EXCERPTS = 3
#: fsync the report at least this often (seconds); every line is flushed at once.
SYNC_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ScanJob:
    """One unit of scan work: a file to match, or a catalogue reference to self-match."""

    query: str
    path: str | None = None  # None: the query is a reference id of the catalogue


def file_jobs(paths: Iterable[Path], manifest: Path | None = None) -> list[ScanJob]:
    """Jobs for files and folders (recursive) and a manifest's ``path,...`` rows.

    The query name is the file's path as found (folder argument joined with the file's path
    below it), which is what the report calls ``query``. A file named twice (another spelling
    of a folder, a symbolic link) gives one job, under the first name (see :func:`file_key`).

    Raises
    ------
    BadInputError
        If a path does not exist.
    """
    jobs: list[ScanJob] = []
    for path in paths:
        if path.is_dir():
            jobs += [ScanJob(str(file), str(file)) for file in find_audio_files(path)]
        elif path.is_file():
            jobs.append(ScanJob(str(path), str(path)))
        else:
            raise BadInputError(f"{path}: no such file or folder")
    if manifest is not None:
        jobs += [ScanJob(str(path), str(path)) for path in manifest_paths(manifest)]
    unique: dict[str, ScanJob] = {}
    for job in jobs:
        unique.setdefault(file_key(job.query), job)
    return list(unique.values())


def manifest_paths(manifest: Path) -> list[Path]:
    """File paths from the first column of a CSV (a ``path`` header is skipped).

    Relative paths are taken relative to the manifest's folder.

    Raises
    ------
    BadInputError
        If the manifest is missing or not UTF-8 text (:func:`~tunetrace.manifests.manifest_rows`).
    """
    paths = []
    for number, row in manifest_rows(manifest):
        first = row[0].strip() if row else ""
        if not first or (number == 1 and first.lower() == "path"):
            continue
        path = Path(first)
        paths.append(path if path.is_absolute() else manifest.parent / path)
    return paths


def reference_jobs(catalogue: Catalogue) -> list[ScanJob]:
    """One self-scan job per reference of the catalogue."""
    jobs, offset = [], 0
    while page := catalogue.list(offset=offset, limit=1000):
        jobs += [ScanJob(record.reference_id) for record in page]
        offset += len(page)
    return jobs


def run_job(
    matcher: Matcher,
    job: ScanJob,
    *,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
) -> dict[str, Any]:
    """The report line of one job; failures become error lines, never exceptions.

    Parameters
    ----------
    matcher : Matcher
    job : ScanJob
    top : int
    min_score : float or None
    excerpts : int
        0: match the whole file. N > 0: match N excerpts of :data:`EXCERPT_S` spread over the
        file (much faster on full-length tracks; a copy of any of those parts is found).
        Self-scan jobs always use :data:`SELF_EXCERPTS`.
    """
    started = time.perf_counter()
    try:
        if job.path is None:
            record = matcher.catalogue.get(job.query)
            features = matcher.catalogue.features(record.key)
            duration_s = features.duration_s
            matches = match_excerpts(
                matcher, features, count=SELF_EXCERPTS, top=top, min_score=min_score,
                exclude_keys=frozenset({record.key}),
            )  # fmt: skip
        elif excerpts > 0:
            duration_s, matches = match_file_excerpts(
                matcher, job.path, count=excerpts, top=top, min_score=min_score
            )
        else:
            return report_to_dict(
                matcher.match_path(job.path, query_name=job.query, top=top, min_score=min_score)
            )
        report = MatchReport(
            query=job.query,
            duration_s=duration_s,
            elapsed_s=time.perf_counter() - started,
            matches=matches,
            damaged_references=matcher.damaged_references(),
        )
        return report_to_dict(report)
    except TunetraceError as exc:
        return error_to_dict(job.query, type(exc).__name__, str(exc))
    except Exception as exc:  # one bad file must not end a scan of thousands
        logger.exception("unexpected failure on %s", job.query)
        return error_to_dict(job.query, "InternalError", f"{type(exc).__name__}: {exc}")


def excerpt_starts(n_frames: int, frames: int, count: int) -> list[int]:
    """First frames of ``count`` excerpts of ``frames`` spread evenly over ``n_frames``.

    The excerpts are centred at (i + 1) / (count + 1) of the recording: 25/50/75% for three.
    A recording shorter than one excerpt gives one excerpt at 0.
    """
    if n_frames <= frames:
        return [0]
    centres = [(i + 1) / (count + 1) for i in range(count)]
    return sorted(
        {max(0, min(n_frames - frames, int(c * n_frames) - frames // 2)) for c in centres}
    )


def match_excerpts(
    matcher: Matcher,
    features: Features,
    *,
    count: int,
    top: int = 5,
    min_score: float | None = None,
    exclude_keys: frozenset[int] = frozenset(),
) -> list[Match]:
    """Match ``count`` excerpts of a recording's features and merge their matches per reference.

    Each excerpt is :data:`EXCERPT_S` long. A reference's match keeps the best excerpt's score
    and estimates and the segments of all excerpts (in the recording's own time); coverage is
    over the whole recording.
    """
    frames = int(EXCERPT_S * features.frame_rate_hz)

    def excerpt_at(start: int) -> Features:
        return Features(
            spectrum=features.spectrum[:, start : start + frames],
            chroma=features.chroma[:, start : start + frames],
            frame_rate_hz=features.frame_rate_hz,
        )

    starts = excerpt_starts(features.n_frames, frames, count)
    return _merged_excerpt_matches(
        matcher,
        [(start / features.frame_rate_hz, partial(excerpt_at, start)) for start in starts],
        duration_s=features.duration_s,
        top=top,
        min_score=min_score,
        exclude_keys=exclude_keys,
    )


def match_file_excerpts(
    matcher: Matcher,
    path: str | Path,
    *,
    count: int,
    top: int = 5,
    min_score: float | None = None,
) -> tuple[float, list[Match]]:
    """Match ``count`` excerpts of an audio file, decoding only those excerpts when it can.

    Files libsndfile can seek in (WAV, FLAC, OGG/Vorbis, MP3) have only their excerpts
    decoded and fingerprinted, which on full-length tracks is most of a scan's decoding
    saved; other files are decoded whole and cut (:func:`match_excerpts`). Excerpts sit at
    the same places either way. When a span cannot be read (a header that overstates the
    length, a damaged stretch) the whole file is decoded instead.

    Returns
    -------
    duration_s : float
        The file's duration.
    matches : list of Match
        As :func:`match_excerpts`.

    Raises
    ------
    AudioDecodeError
        If the file cannot be decoded.
    """
    length = seekable_length(path)
    if length is None:
        return _match_whole_file_excerpts(matcher, path, count=count, top=top, min_score=min_score)
    n_samples, native_rate = length
    params = matcher.catalogue.params

    def excerpt_at(start_s: float) -> Features:
        audio = load_audio_span(
            path, sample_rate_hz=params.sample_rate_hz, start_s=start_s, duration_s=EXCERPT_S
        )
        return extract_features(audio, params=params)

    starts = excerpt_starts(n_samples, int(EXCERPT_S * native_rate), count)
    duration_s = n_samples / native_rate
    excerpts = [(start / native_rate, partial(excerpt_at, start / native_rate)) for start in starts]
    try:
        found = _merged_excerpt_matches(
            matcher, excerpts, duration_s=duration_s, top=top, min_score=min_score
        )
    except AudioDecodeError as exc:  # e.g. a header that overstates the length: decode it all
        logger.info("%s: %s; decoding the whole file instead", path, exc)
        return _match_whole_file_excerpts(matcher, path, count=count, top=top, min_score=min_score)
    return duration_s, found


def _match_whole_file_excerpts(
    matcher: Matcher, path: str | Path, *, count: int, top: int, min_score: float | None
) -> tuple[float, list[Match]]:
    features = matcher.load_query(path, max_duration_s=None)
    found = match_excerpts(matcher, features, count=count, top=top, min_score=min_score)
    return features.duration_s, found


def _merged_excerpt_matches(
    matcher: Matcher,
    excerpts: list[tuple[float, Callable[[], Features]]],
    *,
    duration_s: float,
    top: int,
    min_score: float | None,
    exclude_keys: frozenset[int] = frozenset(),
) -> list[Match]:
    """Match excerpts (start in seconds, features made on demand) and merge per reference.

    An excerpt that cannot be matched (a silent stretch, say) is skipped; when none can be,
    the last one's error is raised, as matching the whole file would fail: a file nothing of
    which was matched is not reported clean.
    """
    best: dict[str, Match] = {}
    failure: TunetraceError | None = None
    matched = 0
    for shift_s, make_features in excerpts:
        try:
            found = matcher.match_features(
                make_features(), top=top, min_score=min_score, exclude_keys=exclude_keys
            )
        except AudioDecodeError:
            raise  # a file that cannot be read fails as a whole
        except TunetraceError as exc:  # e.g. a silent stretch too short to fingerprint
            logger.info("excerpt at %.1f s skipped: %s", shift_s, exc)
            failure = exc
            continue
        matched += 1
        for match in found:
            moved = _shift_segments(match, shift_s)
            kept = best.get(match.reference_id)
            if kept is None:
                best[match.reference_id] = moved
            else:
                better, other = (moved, kept) if moved.score > kept.score else (kept, moved)
                best[match.reference_id] = _with_segments(
                    better, sorted([*better.segments, *other.segments], key=_query_start)
                )
    if not matched and failure is not None:
        raise failure
    matches = sorted(best.values(), key=lambda m: -m.score)[:top]
    return [
        replace(m, coverage=min(1.0, covered_seconds(m.segments) / duration_s)) for m in matches
    ]


def _query_start(segment: Segment) -> float:
    return segment.query_start_s


def _shift_segments(match: Match, shift_s: float) -> Match:
    return _with_segments(
        match,
        [
            Segment(
                query_start_s=s.query_start_s + shift_s,
                query_end_s=s.query_end_s + shift_s,
                reference_start_s=s.reference_start_s,
                reference_end_s=s.reference_end_s,
            )
            for s in match.segments
        ],
    )


def _with_segments(match: Match, segments: list[Segment]) -> Match:
    return replace(match, segments=segments)


def file_key(query: str) -> str:
    """The identity of a scanned file: its resolved absolute path (symbolic links followed).

    ``./music/a.mp3``, ``music//a.mp3`` and ``/home/me/music/a.mp3`` are the same file; a
    relative path is taken relative to the current directory.
    """
    return os.path.realpath(query)


def _is_report_line(value: object) -> bool:
    """A report line: an object with a ``query`` and either ``matches`` or an ``error``."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("query"), str)
        and (isinstance(value.get("matches"), list) or isinstance(value.get("error"), dict))
    )


class ReportWriter:
    """Append-only JSON Lines report that survives interruption, one line per file.

    The report is locked while the writer is open (``flock`` on ``FILE.lock`` beside it, which
    outlives the atomic rewrite below): a second scan on the same report is refused instead
    of interleaving its lines.

    Parameters
    ----------
    path : Path
    resume : bool
        Keep the existing report and skip its queries. Lines that cannot be read (cut off
        by a crash, damaged) are dropped wherever they are, every good line is kept, and
        lines for the same file (by ``key``) are reduced to one: the first without an error,
        else the first. If anything was dropped, the report is rewritten atomically (temporary
        file, fsync, rename). Without ``resume`` an existing, non-empty report is an error (it
        is never overwritten).
    key : callable, optional
        What identifies a line's query: :func:`file_key` (default) for files, the query itself
        for reference ids.

    Raises
    ------
    BadInputError
        If the report exists and ``resume`` is false, or another scan is writing it.
    """

    def __init__(
        self, path: Path, *, resume: bool, key: Callable[[str], str] = file_key
    ) -> None:
        self.path = path
        self.key = key
        self.done: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_report(path)
        try:
            if path.exists() and path.stat().st_size > 0 and not resume:
                raise BadInputError(
                    f"{path} already exists; use --resume to continue it or choose another --out"
                )
            if resume and path.exists():
                self._recover()
            self._file = path.open("a", encoding="utf-8")
        except BaseException:
            self._lock.close()
            raise
        self._last_sync = time.monotonic()

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def has(self, query: str) -> bool:
        """Whether the report already holds a line for ``query`` (compared by ``key``)."""
        return self.key(query) in self.done

    def _recover(self) -> None:
        """Read the finished queries; keep every good line once, rewrite if anything went."""
        kept: dict[str, tuple[int, int, bool]] = {}  # key -> (offset, length, is an error)
        bad: list[int] = []
        duplicates = 0
        unterminated = False
        offset = 0
        with self.path.open("rb") as report:
            for number, raw in enumerate(report, start=1):
                start, offset = offset, offset + len(raw)
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = None
                if not _is_report_line(line):
                    if raw.strip():
                        bad.append(number)
                    continue
                unterminated = not raw.endswith(b"\n")
                is_error = "error" in line
                key = self.key(line["query"])
                if key in kept:
                    duplicates += 1
                    if not kept[key][2] or is_error:
                        continue  # the first good line (or the first error) stays
                kept[key] = (start, len(raw), is_error)
        self.done = set(kept)
        if not bad and not duplicates and not unterminated:
            return
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            logger.warning(
                "%s: dropping %d line(s) that cannot be read (line %s)", self.path, len(bad), shown
            )
        if duplicates:
            logger.warning("%s: dropping %d repeated line(s) of a file", self.path, duplicates)
        _rewrite_atomically(self.path, sorted((start, n) for start, n, _ in kept.values()))

    def write(self, line: dict[str, Any]) -> None:
        """Append one report line and flush it (fsync at most every few seconds)."""
        text = json.dumps(line, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8 (its bytes as surrogates)
            text = json.dumps(line)  # escaped: valid JSON that reads back as the same name
        self._file.write(text + "\n")
        self._file.flush()
        self.done.add(self.key(str(line["query"])))
        if time.monotonic() - self._last_sync > SYNC_INTERVAL_S:
            os.fsync(self._file.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Flush, fsync and close; release the lock."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._lock.close()


def _lock_report(path: Path) -> IO[str]:
    """Hold an exclusive lock for writing ``path`` (released when the returned file closes).

    Raises
    ------
    BadInputError
        If another process holds it.
    """
    lock_path = path.with_name(path.name + ".lock")
    handle = lock_path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (process {holder})" if holder.isdigit() else ""
        raise BadInputError(
            f"{path} is being written by another scan{by}; wait for it to finish "
            "or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _rewrite_atomically(path: Path, spans: list[tuple[int, int]]) -> None:
    """Replace ``path`` with its lines at ``spans`` (offset, length), each ending in a newline.

    The new report is written beside the old one, fsynced and renamed over it: a crash at any
    moment leaves the old report or the new one, complete.
    """
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as new, path.open("rb") as old:
            for offset, length in spans:
                old.seek(offset)
                line = old.read(length)
                new.write(line if line.endswith(b"\n") else line + b"\n")
            new.flush()
            os.fsync(new.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class ScanSummary:
    """What a scan did."""

    files: int = 0
    skipped: int = 0
    copies: int = 0
    errors: int = 0
    audio_s: float = 0.0
    elapsed_s: float = 0.0

    def add(self, line: dict[str, Any]) -> None:
        """Count one report line."""
        self.files += 1
        if "error" in line:
            self.errors += 1
            return
        self.copies += int(bool(line["matches"]))
        self.audio_s += float(line.get("duration_s", 0.0))

    def text(self) -> str:
        """One line for people."""
        rate = self.files / self.elapsed_s if self.elapsed_s > 0 else 0.0
        realtime = self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"scanned {self.files} file(s) ({self.skipped} already in the report): "
            f"{self.copies} with probable copies, {self.errors} error(s), "
            f"{self.elapsed_s:.1f} s, {rate:.2f} files/s, {realtime:.0f}x realtime"
        )


def copy_groups(lines: Iterable[dict[str, Any]]) -> list[list[str]]:
    """Groups of references connected by self-scan matches (each group sorted, >= 2 ids)."""
    parent: dict[str, str] = {}

    def root(item: str) -> str:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for line in lines:
        for match in line.get("matches", []):
            a, b = root(str(line["query"])), root(str(match["reference_id"]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = {}
    for item in parent:
        groups.setdefault(root(item), []).append(item)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def read_report(path: Path) -> list[dict[str, Any]]:
    """All complete, readable lines of a JSON Lines report (others are skipped)."""
    lines = []
    with path.open(encoding="utf-8", errors="replace") as report:
        for text in report:
            try:
                line = json.loads(text) if text.endswith("\n") else None
            except ValueError:
                line = None
            if _is_report_line(line):
                lines.append(line)
            elif text.strip():
                logger.warning("%s: skipping a line that cannot be read", path)
    return lines
