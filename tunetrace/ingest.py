"""Adding references: find audio files, fingerprint them in parallel, store them one by one.

Workers (processes) decode and fingerprint; only the parent writes to the catalogue, one
transaction per file, so a crash loses at most the file being written and a bad file is
reported and skipped without stopping the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tunetrace.errors import (
    BadInputError,
    CatalogueError,
    DuplicateReferenceError,
    TunetraceError,
)
from tunetrace.fingerprint.decode import load_audio
from tunetrace.fingerprint.features import extract_features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue, ReferenceData, validate_reference_id
from tunetrace.index.spectrum_codec import COMPACT_CODEC, SpectrumCodec
from tunetrace.index.storage import stored_reference_vectors
from tunetrace.manifests import manifest_rows
from tunetrace.parent_watch import exit_with_parent
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".m4a",
        ".aac",
        ".mp4",
        ".aiff",
        ".aif",
        ".wma",
        ".webm",
    }
)
#: Shortest reference accepted, in seconds of sound.
MIN_REFERENCE_S = 5.0
#: Longest reference accepted by default (long DJ mixes and suites fit; a runaway file does not).
MAX_REFERENCE_S = 7200.0


@dataclass(frozen=True)
class IngestItem:
    """One file to add, with its id and metadata."""

    path: Path
    reference_id: str
    title: str | None = None
    artist: str | None = None
    isrc: str | None = None


@dataclass
class IngestSummary:
    """What a batch add did."""

    added: int = 0
    replaced: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_s: float = 0.0

    def line(self, elapsed_s: float) -> str:
        """One-line human summary."""
        speed = (
            f", {self.audio_s / elapsed_s:.0f}x realtime" if elapsed_s > 0 and self.audio_s else ""
        )
        return (
            f"added {self.added} reference(s) ({self.replaced} replaced), "
            f"{len(self.failed)} failed, {self.audio_s / 3600:.2f} h of audio "
            f"in {elapsed_s:.1f} s{speed}"
        )


def fingerprint_reference(
    path: str | Path,
    *,
    params: FingerprintParams,
    max_duration_s: float | None = MAX_REFERENCE_S,
    codec: SpectrumCodec = COMPACT_CODEC,
) -> ReferenceData:
    """Decode and fingerprint one reference file.

    The stored (compact) spectrum is what later verification reads, so the patch vectors are
    computed from it too: a catalogue rebuilt from SQLite is identical to the original.

    Parameters
    ----------
    path : str or Path
    params : FingerprintParams
    max_duration_s : float or None
    codec : SpectrumCodec
        How the spectrum is stored (the compact codec; the earlier ``u8`` one for tests and
        comparisons).

    Returns
    -------
    data : ReferenceData
    """
    audio = load_audio(path, sample_rate_hz=params.sample_rate_hz, max_duration_s=max_duration_s)
    features = extract_features(audio, params=params, min_duration_s=MIN_REFERENCE_S)
    blob, scale = codec.encode(features.spectrum)
    return ReferenceData(
        spectrum_codes=blob,
        spectrum_scale=scale,
        n_frames=features.n_frames,
        duration_s=audio.duration_s,
        vectors=stored_reference_vectors(blob, scale, codec, params, features.n_frames),
        spectrum_codec=codec.name,
    )


def find_audio_files(folder: Path) -> list[Path]:
    """Audio files below ``folder`` (recursive, sorted, by file suffix)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )


def items_from_paths(paths: Iterable[Path], *, explicit_id: str | None = None) -> list[IngestItem]:
    """Turn files and folders into items with default ids.

    A folder's files get their path relative to the folder, without extension, as id; a file
    argument gets its stem (or ``explicit_id``).

    Raises
    ------
    BadInputError
        If a path does not exist, or ``explicit_id`` is given for more than one file.
    """
    items: list[IngestItem] = []
    for path in paths:
        if path.is_dir():
            for file in find_audio_files(path):
                relative = file.relative_to(path).with_suffix("")
                items.append(IngestItem(file, relative.as_posix()))
        elif path.is_file():
            items.append(IngestItem(path, path.stem))
        else:
            raise BadInputError(f"{path}: no such file or folder")
    if explicit_id is not None:
        if len(items) != 1:
            raise BadInputError(f"--id names one reference, but {len(items)} files were given")
        items = [IngestItem(items[0].path, explicit_id)]
    return items


def distinct_items(items: Iterable[IngestItem]) -> list[IngestItem]:
    """The batch with each file once, refused if two files would become one reference.

    Parameters
    ----------
    items : iterable of IngestItem

    Returns
    -------
    items : list of IngestItem
        In order, a file named twice (however its path is written) kept the first time.

    Raises
    ------
    BadInputError
        Naming the first two files that share an id (``a.wav`` and ``a.flac`` in one folder
        both become ``a``): which one the catalogue kept would depend on which finished last.
    """
    first_of: dict[str, tuple[Path, Path]] = {}  # id -> (resolved path, path as given)
    kept = []
    for item in items:
        resolved = item.path.resolve()
        if item.reference_id not in first_of:
            first_of[item.reference_id] = (resolved, item.path)
            kept.append(item)
            continue
        earlier, given = first_of[item.reference_id]
        if earlier != resolved:
            raise BadInputError(
                f"{given} and {item.path} would both be reference {item.reference_id!r}; "
                "give them distinct ids (a manifest names each file's id)"
            )
    return kept


def items_from_manifest(manifest: Path) -> list[IngestItem]:
    """Read ``path,id[,title,artist,isrc]`` rows (a header row is recognised and skipped).

    Relative paths are taken relative to the manifest's folder.

    Raises
    ------
    BadInputError
        If the manifest is missing or not UTF-8 text (:func:`~tunetrace.manifests.manifest_rows`),
        or a row has fewer than two fields.
    """
    items = []
    for number, row in manifest_rows(manifest):
        if not row or not "".join(row).strip():
            continue
        if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "id"]:
            continue
        if len(row) < 2:
            raise BadInputError(f"{manifest}:{number}: expected path,id[,title,artist,isrc]")
        fields = [c.strip() or None for c in row] + [None] * 3
        path = Path(fields[0] or "")
        if not path.is_absolute():
            path = manifest.parent / path
        items.append(IngestItem(path, fields[1] or "", fields[2], fields[3], fields[4]))
    return items


def _fingerprint_job(
    item: IngestItem, params: FingerprintParams, max_duration_s: float | None, codec: SpectrumCodec
) -> ReferenceData:
    return fingerprint_reference(
        item.path, params=params, max_duration_s=max_duration_s, codec=codec
    )


def ingest(
    catalogue: Catalogue,
    items: list[IngestItem],
    *,
    replace: bool = False,
    workers: int = 1,
    max_duration_s: float | None = MAX_REFERENCE_S,
    on_done: Callable[[IngestItem, str | None], None] | None = None,
    codec: SpectrumCodec = COMPACT_CODEC,
) -> IngestSummary:
    """Fingerprint ``items`` (in ``workers`` processes) and add them to ``catalogue``.

    Parameters
    ----------
    catalogue : Catalogue
    items : list of IngestItem
    replace : bool
        Replace references whose id exists (else they are reported as failed).
    workers : int
        Processes used for fingerprinting (1: in this process).
    max_duration_s : float or None
    on_done : callable, optional
        Called as ``on_done(item, error_message_or_None)`` after each file.
    codec : SpectrumCodec
        How the spectra are stored (see :func:`fingerprint_reference`).

    Returns
    -------
    summary : IngestSummary
        A file that cannot be read or named is counted as failed and skipped.

    Raises
    ------
    BadInputError
        If two files would become one reference (:func:`distinct_items`).
    CatalogueError
        If the catalogue cannot be written (a full disk, a folder that cannot be written):
        the batch stops there, keeping what it added.
    """
    items = distinct_items(items)
    summary = IngestSummary()
    params = catalogue.params
    pending = [item for item in items if _precheck(catalogue, item, replace, summary, on_done)]
    finished = False
    try:
        for item, result in _fingerprint_all(pending, params, workers, max_duration_s, codec):
            error = None
            if isinstance(result, BaseException):
                error = (
                    str(result)
                    if isinstance(result, TunetraceError)
                    else f"{type(result).__name__}: {result}"
                )
            else:
                try:
                    existed = catalogue.contains(item.reference_id)
                    catalogue.add(
                        item.reference_id,
                        result,
                        title=item.title,
                        artist=item.artist,
                        isrc=item.isrc,
                        source_path=str(item.path),
                        replace=replace,
                        save_index=False,
                    )
                    summary.added += 1
                    summary.replaced += int(existed)
                    summary.audio_s += result.duration_s
                except (BadInputError, DuplicateReferenceError) as exc:  # this file's own
                    error = str(exc)
                # any other catalogue error (a full disk, a folder that cannot be written)
                # would fail every file after it too: it ends the batch
            if error is not None:
                # a caller told of each file reports it itself (the CLI's "skipped" lines)
                logger.log(logging.INFO if on_done else logging.WARNING, "%s: %s", item.path, error)
                summary.failed.append((str(item.path), error))
            if on_done is not None:
                on_done(item, error)
        finished = True
    finally:
        try:
            catalogue.save_index()  # publishes what was added, whatever ended the batch
        except CatalogueError as exc:
            if finished:
                raise
            logger.error("could not publish the index either: %s", exc)
    return summary


def _precheck(
    catalogue: Catalogue,
    item: IngestItem,
    replace: bool,
    summary: IngestSummary,
    on_done: Callable[[IngestItem, str | None], None] | None,
) -> bool:
    """Reject duplicates and bad ids before spending time on fingerprinting."""
    try:
        validate_reference_id(item.reference_id)
        if not replace and catalogue.contains(item.reference_id):
            raise BadInputError(
                f"reference {item.reference_id!r} already exists (use --replace to overwrite it)"
            )
    except TunetraceError as exc:
        summary.failed.append((str(item.path), str(exc)))
        if on_done is not None:
            on_done(item, str(exc))
        return False
    return True


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` fingerprinting processes, each limited to one thread.

    As in the API's workers (:func:`tunetrace.threads.use_one_thread`): one process per core
    that also started a BLAS or OpenMP thread per core would oversubscribe the machine.
    """
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_fingerprint_worker)


def _init_fingerprint_worker() -> None:
    exit_with_parent()  # an ``add`` killed outright must not leave its workers behind
    use_one_thread()


def _fingerprint_all(
    items: list[IngestItem],
    params: FingerprintParams,
    workers: int,
    max_duration_s: float | None,
    codec: SpectrumCodec,
) -> Iterator[tuple[IngestItem, ReferenceData | BaseException]]:
    """Yield each item with its fingerprint or the exception it raised, as they finish."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            try:
                yield item, _fingerprint_job(item, params, max_duration_s, codec)
            except Exception as exc:  # reported per file, never aborts the batch
                yield item, exc
        return
    with worker_pool(workers) as pool:
        queue = iter(items)
        running: dict[Future[ReferenceData], IngestItem] = {}
        for item in queue:
            running[pool.submit(_fingerprint_job, item, params, max_duration_s, codec)] = item
            if len(running) >= 2 * workers:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                exception = future.exception()
                yield item, exception if exception is not None else future.result()
                next_item = next(queue, None)
                if next_item is not None:
                    job = pool.submit(_fingerprint_job, next_item, params, max_duration_s, codec)
                    running[job] = next_item
