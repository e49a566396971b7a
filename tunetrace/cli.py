"""The ``tunetrace`` command line: add, match, scan, explain, info, remove, index, serve.

Exit codes: 0 success, 2 bad usage or bad input, 1 other failures. Errors go to stderr as
one line a person can act on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from tunetrace.errors import BadInputError, ReferenceNotFoundError, TunetraceError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find tempo-, pitch- and speed-altered copies of known music.",
    pretty_exceptions_enable=False,
)
logger = logging.getLogger("tunetrace")
T = TypeVar("T")


def _default_catalogue() -> Path:
    return Path(os.environ.get("TUNETRACE_CATALOGUE", "catalogue"))


CatalogueOption = Annotated[
    Path,
    typer.Option(
        "--catalogue",
        "-c",
        help="Catalogue directory (env TUNETRACE_CATALOGUE, else ./catalogue)",
        default_factory=_default_catalogue,
        show_default=False,
    ),
]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Configure logging for every subcommand."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(exc: TunetraceError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2 if isinstance(exc, BadInputError) else 1)


def _open_catalogue(
    directory: Path, *, create: bool = False, read_only: bool = False, scheduler: str | None = None
):
    from tunetrace.opening import open_catalogue

    try:
        return open_catalogue(directory, create=create, read_only=read_only, scheduler=scheduler)
    except TunetraceError as exc:
        _fail(exc)


SchedulerOption = Annotated[
    str | None,
    typer.Option(
        help="Dask scheduler address (tcp://host:8786): search a sharded catalogue's shards "
        "on its workers."
    ),
]


@app.command()
def add(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Audio files or folders (recursive).")
    ] = None,
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    manifest: Annotated[
        Path | None, typer.Option(help="CSV of path,id[,title,artist,isrc].")
    ] = None,
    reference_id: Annotated[str | None, typer.Option("--id", help="Id for a single file.")] = None,
    title: Annotated[str | None, typer.Option(help="Title for a single file.")] = None,
    artist: Annotated[str | None, typer.Option(help="Artist for a single file.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite existing ids.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Fingerprinting processes.")] = os.cpu_count()
    or 1,
) -> None:
    """Fingerprint audio and add it to the catalogue as references."""
    from dataclasses import replace as with_fields

    from tunetrace.ingest import (
        distinct_items,
        ingest,
        items_from_manifest,
        items_from_paths,
    )

    if not paths and manifest is None:
        typer.echo("error: give audio files or folders, --manifest, or both", err=True)
        raise typer.Exit(2)
    try:
        items = items_from_paths(paths or [], explicit_id=reference_id)
        if title or artist:
            if len(items) != 1:
                raise BadInputError("--title and --artist describe one file; use --manifest")
            items = [with_fields(items[0], title=title, artist=artist)]
        if manifest is not None:
            items += items_from_manifest(manifest)
        items = distinct_items(items)  # before the catalogue is opened (or made)
    except TunetraceError as exc:
        _fail(exc)
    if not items:
        typer.echo("error: no audio files found", err=True)
        raise typer.Exit(2)
    store = _open_catalogue(catalogue, create=True)
    progress = _progress_bar(len(items), "adding")

    def report(item, error):
        progress.update(1)
        if error is not None:
            progress.write(f"skipped {item.path}: {error}", file=sys.stderr)

    started = time.perf_counter()
    try:
        summary = ingest(store, items, replace=replace, workers=workers, on_done=report)
    except TunetraceError as exc:
        _fail(exc)
    finally:
        progress.close()
        store.close()
    typer.echo(summary.line(time.perf_counter() - started))
    if summary.failed and not summary.added:
        raise typer.Exit(2)


@app.command()
def match(
    queries: Annotated[list[Path], typer.Argument(help="Query audio files.")],
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per line.")] = False,
    top: Annotated[int, typer.Option(min=1, help="Most matches per query.")] = 5,
    min_score: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Score threshold (default: the calibrated one)."),
    ] = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Find the catalogue references that the queries are altered copies of."""
    from tunetrace.matcher import Matcher
    from tunetrace.report import error_to_dict, report_to_dict

    store = _open_catalogue(catalogue, read_only=True, scheduler=scheduler)
    matcher = Matcher(store)
    failed = 0  # the exit code: 2 for unusable queries, 1 if the catalogue failed too
    for query in queries:
        try:
            report = matcher.match_path(query, query_name=str(query), top=top, min_score=min_score)
        except TunetraceError as exc:
            failed = (failed or 2) if isinstance(exc, BadInputError) else 1
            if as_json:
                typer.echo(json.dumps(error_to_dict(str(query), type(exc).__name__, str(exc))))
            typer.echo(f"error: {exc}", err=True)
            continue
        if as_json:
            typer.echo(json.dumps(report_to_dict(report)))
        else:
            typer.echo(_format_report(report))
    store.close()
    if failed:
        raise typer.Exit(failed)


def _format_report(report) -> str:
    lines = [f"{report.query}  ({report.duration_s:.1f} s, matched in {report.elapsed_s:.2f} s)"]
    if not report.matches:
        lines.append("  no probable copy found")
        if report.caution is not None:
            lines.append(f"  caution: {report.caution}")
        return "\n".join(lines)
    lines.append(
        f"  {'score':>5}  {'tempo':>6}  {'pitch':>6}  {'coverage':>8}  "
        f"{'alteration':<24}  reference"
    )
    for m in report.matches:
        lines.append(
            f"  {m.score:5.2f}  {m.tempo_ratio:6.3f}  {m.pitch_shift_semitones:+6.2f}  "
            f"{m.coverage:8.0%}  {m.alteration:<24}  {m.reference_id}"
        )
        for s in m.segments:
            lines.append(
                f"{'':>10}query {s.query_start_s:6.1f}-{s.query_end_s:6.1f} s  <->  "
                f"reference {s.reference_start_s:6.1f}-{s.reference_end_s:6.1f} s"
            )
    return "\n".join(lines)


@app.command()
def info(
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe the catalogue: counts, hours of audio, size on disk, parameters."""
    store = _open_catalogue(catalogue, read_only=True)
    try:
        details = store.info()
    except TunetraceError as exc:
        _fail(exc)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if key not in ("params", "shards"):
            typer.echo(f"{key:>20}: {value}")
    for shard in details.get("shards", []):
        typer.echo(
            f"{shard['shard']:>20}: {shard['references']} references, "
            f"{shard['audio_hours']} h, {shard['vectors']} vectors ({shard['index_kind']}), "
            f"{shard['size_on_disk_bytes'] / 1e6:.1f} MB"
        )


#: Largest --offset/--limit: SQLite's integers are 64-bit.
_MAX_COUNT = 2**62
#: References read from the catalogue at a time by ``tunetrace list``.
_LIST_PAGE = 1000


@app.command("list")
def list_references(
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    offset: Annotated[
        str, typer.Option(metavar="N", help="Skip the first N references (by id).")
    ] = "0",
    limit: Annotated[
        str | None,
        typer.Option(
            metavar="N", help="List at most N references (default: all).", show_default=False
        ),
    ] = None,
) -> None:
    """List the references (id, title, artist, ISRC, duration), ordered by id."""
    first = _count_option("--offset", offset, minimum=0)
    most = None if limit is None else _count_option("--limit", limit, minimum=1)
    store = _open_catalogue(catalogue, read_only=True)
    records, listed = [], 0  # a table needs every row for its widths; JSON lines stream
    try:
        while most is None or listed < most:
            want = _LIST_PAGE if most is None else min(_LIST_PAGE, most - listed)
            page = store.list(offset=first + listed, limit=want)
            listed += len(page)
            if as_json:
                for record in page:
                    typer.echo(json.dumps(record.to_dict()))
            else:
                records += page
            if len(page) < want:
                break
    except TunetraceError as exc:
        _fail(exc)
    finally:
        store.close()
    if not as_json:
        typer.echo(_format_references(records))


def _count_option(name: str, value: str, *, minimum: int) -> int:
    """Parse a whole-number option, or exit 2 with one line saying what was wrong."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not minimum <= number <= _MAX_COUNT:
        typer.echo(f"error: {name} must be a whole number of at least {minimum}, "
                   f"got {value!r}", err=True)  # fmt: skip
        raise typer.Exit(2)
    return number


def _format_references(records) -> str:
    if not records:
        return "no references"
    header = ("id", "title", "artist", "isrc", "duration")
    rows = [
        (
            r.reference_id,
            r.title or "",
            r.artist or "",
            r.isrc or "",
            _clock(r.duration_s),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1].rjust(widths[-1])]).rstrip())
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@app.command()
def remove(
    reference_ids: Annotated[list[str], typer.Argument(help="Ids of references to delete.")],
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
) -> None:
    """Delete references from the catalogue."""
    store = _open_catalogue(catalogue)
    missing = []
    for reference_id in reference_ids:
        try:
            store.remove(reference_id)
        except TunetraceError as exc:
            missing.append(reference_id)
            typer.echo(f"error: {exc}", err=True)
    store.close()
    typer.echo(f"removed {len(reference_ids) - len(missing)} reference(s)")
    if missing:
        raise typer.Exit(2)


@app.command()
def scan(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON Lines report to append to.")],
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Audio files or folders (recursive).")
    ] = None,
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    manifest: Annotated[
        Path | None, typer.Option(help="CSV whose first column is a file path.")
    ] = None,
    self_scan: Annotated[
        bool, typer.Option("--self", help="Find altered copies among the catalogue's references.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = os.cpu_count()
    or 1,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted report; skip what it holds.")
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786) to run on (a sharded catalogue's "
            "shards are searched on its workers)."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Most matches per file.")] = 5,
    min_score: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Score threshold (default: the calibrated one)."),
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the whole report as CSV.")
    ] = None,
    excerpts: Annotated[
        int,
        typer.Option(
            min=0,
            help="Match N 20-s excerpts per file instead of the whole file (0: whole). Faster, "
            "but a copied section that lies between excerpts is missed: scan whole files "
            "to find every section.",
        ),
    ] = 0,
) -> None:
    """Rescan many files (or the catalogue itself) and append one report line per file."""
    from tunetrace.export import csv_problem, write_csv
    from tunetrace.scan import (
        ReportWriter,
        ScanSummary,
        copy_groups,
        file_jobs,
        file_key,
        read_report,
        reference_jobs,
    )
    from tunetrace.scan_backends import run_dask, run_local

    if scheduler is not None:
        from tunetrace.opening import check_scheduler_address

        try:
            check_scheduler_address(scheduler)
        except TunetraceError as exc:
            _fail(exc)
    if self_scan == bool(paths or manifest):
        typer.echo(
            "error: give files, folders or --manifest to scan, or --self (not both)", err=True
        )
        raise typer.Exit(2)
    if csv_path is not None and (problem := csv_problem(csv_path)) is not None:
        typer.echo(f"error: cannot write the CSV: {problem}", err=True)
        raise typer.Exit(2)
    store = _open_catalogue(catalogue)
    try:
        jobs = reference_jobs(store) if self_scan else file_jobs(paths or [], manifest)
        writer = ReportWriter(out, resume=resume, key=str if self_scan else file_key)
    except TunetraceError as exc:
        _fail(exc)
    except OSError as exc:
        typer.echo(f"error: cannot write the report {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    summary = ScanSummary(skipped=sum(writer.has(job.query) for job in jobs))
    todo = [job for job in jobs if not writer.has(job.query)]
    progress = _progress_bar(len(todo), "scanning")
    started = time.perf_counter()
    try:
        if scheduler:
            results = run_dask(
                catalogue, todo, scheduler=scheduler, top=top, min_score=min_score,
                excerpts=excerpts,
            )  # fmt: skip
        else:
            results = run_local(
                catalogue, todo, workers=workers, top=top, min_score=min_score,
                excerpts=excerpts,
            )  # fmt: skip
        for job, line in results:
            writer.write(line)
            summary.add(line)
            progress.update(1)
            if "error" in line:
                progress.write(f"error {job.query}: {line['error']['message']}", file=sys.stderr)
    except KeyboardInterrupt:
        typer.echo("interrupted; run again with --resume to continue", err=True)
        raise typer.Exit(1) from None
    except (OSError, TunetraceError) as exc:  # e.g. an unreachable Dask scheduler
        typer.echo(f"error: {exc}; run again with --resume to continue", err=True)
        raise typer.Exit(1) from None
    finally:
        progress.close()
        writer.close()
    summary.elapsed_s = time.perf_counter() - started
    typer.echo(summary.text())
    if self_scan:
        for group in copy_groups(read_report(out)):
            typer.echo("copies: " + "  <->  ".join(group))
    if csv_path is not None:
        try:
            rows = write_csv(read_report(out), csv_path)
        except OSError as exc:
            typer.echo(f"error: cannot write the CSV {csv_path}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"wrote {rows} row(s) to {csv_path}")


@app.command()
def explain(
    query: Annotated[Path, typer.Argument(help="Query audio file.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write: FILE.png, FILE.html or FILE.json.")
    ],
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    reference_id: Annotated[
        str | None,
        typer.Option("--reference", help="Explain against this reference (default: the best)."),
    ] = None,
) -> None:
    """Draw the evidence: aligned chroma, similarity over time, alignment path, report fields."""
    from tunetrace.explain import build_evidence, evidence_to_dict, render_html, render_png
    from tunetrace.matcher import Matcher

    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".json"):
        typer.echo("error: --out must end in .png, .html or .json", err=True)
        raise typer.Exit(2)
    store = _open_catalogue(catalogue, read_only=True)
    try:
        matcher = Matcher(store)
        features = matcher.load_query(query)
        evidence = build_evidence(
            matcher, features, query_name=str(query), reference_id=reference_id
        )
    except ReferenceNotFoundError as exc:
        if reference_id is None:
            _fail(exc)
        typer.echo(f"error: {exc}", err=True)  # the --reference given names none: bad input
        raise typer.Exit(2) from None
    except TunetraceError as exc:
        _fail(exc)
    finally:
        store.close()
    try:
        if suffix == ".png":
            out.write_bytes(render_png(evidence))
        elif suffix == ".html":
            out.write_text(render_html(evidence), encoding="utf-8")
        else:
            out.write_text(json.dumps(evidence_to_dict(evidence)), encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{evidence.verdict} Evidence written to {out}")


index_app = typer.Typer(
    help="Manage the catalogue's vector index and storage format.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    kind: Annotated[
        str,
        typer.Option(
            "--type",
            help="flat (exact), ivfflat (fast, approximate), ivfpq (compressed, approximate), "
            "hnsw, or auto.",
        ),
    ] = "auto",
    nlist: Annotated[int, typer.Option(min=0, help="IVF lists (0: 4*sqrt(vectors)).")] = 0,
    pq_m: Annotated[int, typer.Option(min=1, help="PQ codes per vector.")] = 64,
    pq_bits: Annotated[
        int,
        typer.Option(help="Bits per PQ code: 4 (fast-scan search) or 8 (finer, slower)."),
    ] = 4,
    nprobe: Annotated[int, typer.Option(min=1, help="IVF lists searched per query.")] = 32,
    hnsw_m: Annotated[int, typer.Option(min=4, help="HNSW graph degree.")] = 32,
    ef_search: Annotated[int, typer.Option(min=1, help="HNSW search breadth.")] = 128,
    refine_bits: Annotated[
        int,
        typer.Option(
            help="ivfpq: keep 4, 6 or 8-bit copies of the vectors to re-rank what the codes "
            "find (0: none). Closer to exact search, for dim * bits / 8 more bytes per vector."
        ),
    ] = 0,
    refine_factor: Annotated[
        float, typer.Option(min=1.0, help="Neighbours re-ranked per neighbour kept.")
    ] = 3.2,
    projection_dims: Annotated[
        int,
        typer.Option(
            min=0,
            help="ivfpq: project the vectors onto this many alteration-discriminant directions "
            "before quantising (0: all dimensions, OPQ-rotated; needed for --refine-bits).",
        ),
    ] = 64,
    vector_bits: Annotated[
        int,
        typer.Option(
            help="flat and ivfflat files: 8 (one byte per dimension on a fixed grid) or 16 "
            "(float16: twice the bytes on disk, 99.8% instead of about 97% of a query's nearest "
            "neighbours kept). Searched as float32 either way."
        ),
    ] = 8,
) -> None:
    """Rebuild the vector index as another kind, trained on the catalogue's own vectors (a
    sharded catalogue's shards are trained once, together, as one catalogue would be)."""
    from tunetrace.index.vector_index import IndexSpec

    try:
        spec = IndexSpec(
            kind=kind,
            nlist=nlist,
            pq_m=pq_m,
            pq_bits=pq_bits,
            nprobe=nprobe,
            hnsw_m=hnsw_m,
            ef_search=ef_search,
            refine_bits=refine_bits,
            refine_factor=refine_factor,
            projection_dims=projection_dims,
            vector_bits=vector_bits,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from tunetrace.index.shard_layout import is_sharded

    sharded = is_sharded(catalogue)
    store = _open_catalogue(catalogue)
    started = time.perf_counter()
    try:
        built = store.rebuild_index(spec)  # a sharded catalogue: one index per shard
        details = None if sharded else store.info()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except TunetraceError as exc:
        _fail(exc)
    finally:
        store.close()
    elapsed = time.perf_counter() - started
    if details is None:
        typer.echo(
            f"built {len(built)} {spec.kind} shard indexes of {sum(i.size for i in built)} "
            f"vectors in {elapsed:.1f} s"
        )
        return
    typer.echo(
        f"built a {built.spec.kind} index of {built.size} vectors in {elapsed:.1f} s: "
        f"{details['index_bytes'] / 1e6:.1f} MB, "
        f"{details['index_mb_per_audio_hour']} MB per hour of audio"
    )


@index_app.command("migrate")
def index_migrate(
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
    vacuum: Annotated[
        bool,
        typer.Option(
            help="Give the freed space back at the end (needs free room of about twice the "
            "compacted database, in the catalogue's folder and SQLite's temporary folder)."
        ),
    ] = True,
    batch_size: Annotated[
        int, typer.Option(min=1, help="References rewritten per transaction.")
    ] = 64,
    codec: Annotated[
        str | None,
        typer.Option(
            help="How to pack every spectrum, and those of references added later: b5e0.7t "
            "(JPEG-LS tiles, read a part at a time), b5e0.7j (one JPEG-LS image: 5% fewer "
            "bytes, read whole) or b5e0.7z (Zstandard: 1.1-1.5x the bytes, read whole 3x "
            "faster than one image). Default: the catalogue's current choice (b5e0.7t unless "
            "chosen otherwise). Rows of the same codes are repacked without loss.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rewrite a catalogue made by an earlier tunetrace in the compact format, in place.

    Safe to kill at any moment and to run again: it carries on where it stopped. Matching
    and scans may go on meanwhile.
    """
    from tunetrace.index.spectrum_codec import COMPACT_CODEC, compact_codec

    # packings of the codes new references get; another bit depth would quantise every row
    packings = {compact_codec(COMPACT_CODEC.bits, COMPACT_CODEC.exponent, packing)
                for packing in ("j", "t", "z")}  # fmt: skip
    chosen = next((c for c in packings if c.name == codec), None)
    if codec is not None and chosen is None:
        names = " or ".join(sorted(c.name for c in packings))
        typer.echo(f"error: --codec {codec!r} is not a packing tunetrace stores ({names})",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    store = _open_catalogue(catalogue)
    chosen = chosen or store.spectrum_codec
    started = time.perf_counter()
    before = _tree_bytes(store.directory)
    progress = _progress_bar(store.legacy_count(chosen), "rewriting", unit="reference")
    try:
        rewritten = store.migrate(
            batch_size=batch_size, vacuum=vacuum, codec=chosen, progress=progress.update
        )
    except TunetraceError as exc:
        _fail(exc)
    finally:
        progress.close()
        store.close()
    after = _tree_bytes(store.directory)
    typer.echo(
        f"rewrote {rewritten} reference(s) in {time.perf_counter() - started:.1f} s: "
        f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB on disk"
    )


shards_app = typer.Typer(
    help="Split a catalogue into shards (one catalogue over several directories, machines or "
    "Dask workers).",
    no_args_is_help=True,
)
app.add_typer(shards_app, name="shards")

ShardCountOption = Annotated[int, typer.Option("--shards", min=1, max=1024, help="Shard count.")]


@shards_app.command("init")
def shards_init(
    shards: ShardCountOption,
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
) -> None:
    """Make DIR a sharded catalogue of N shards (an existing catalogue's references are moved
    into them). Every command then uses it as one catalogue."""
    from tunetrace.index.catalogue import DATABASE_NAME
    from tunetrace.index.resharding import init_sharded
    from tunetrace.index.shard_layout import is_sharded

    total = 0  # references to move, for the progress bar
    if (catalogue / DATABASE_NAME).is_file() and not is_sharded(catalogue):
        existing = _open_catalogue(catalogue, read_only=True)
        total = existing.count()
        existing.close()
    manifest = _moving_references(total, partial(init_sharded, catalogue, shards))
    typer.echo(f"{catalogue} is a sharded catalogue of {manifest.count} shards")


@shards_app.command("split")
def shards_split(
    shards: ShardCountOption,
    catalogue: CatalogueOption = ...,  # type: ignore[assignment]
) -> None:
    """Move a sharded catalogue's references into N new shards. Readers keep matching
    meanwhile; safe to kill and run again."""
    from tunetrace.index.resharding import reshard
    from tunetrace.index.shard_layout import is_sharded

    if not is_sharded(catalogue):
        _fail(BadInputError(f"{catalogue} is not sharded; 'tunetrace shards init' shards it"))
    started = time.perf_counter()
    existing = _open_catalogue(catalogue, read_only=True)
    try:
        total = existing.count()
    except TunetraceError as exc:
        _fail(exc)
    finally:
        existing.close()
    manifest = _moving_references(total, partial(reshard, catalogue, shards))
    typer.echo(
        f"moved {total} reference(s) into {manifest.count} shards in "
        f"{time.perf_counter() - started:.1f} s"
    )


def _moving_references(total: int, move: Callable[..., T]) -> T:
    """Run ``move(progress=...)`` (a sharding or a reshard) under a progress bar of ``total``
    references; a failure ends the command with its one-line error."""
    progress = _progress_bar(total, "moving", unit="reference")
    try:
        return move(progress=lambda _: progress.update(1))
    except TunetraceError as exc:
        _fail(exc)
    finally:
        progress.close()


@app.command()
def serve(
    catalogue: Annotated[
        Path | None,
        typer.Option(
            "--catalogue",
            "-c",
            help="Catalogue directory (env TUNETRACE_CATALOGUE, else ./catalogue).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes (env TUNETRACE_WORKERS, else the cores)."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786): search a sharded catalogue's "
            "shards on its workers (env TUNETRACE_SCHEDULER)."
        ),
    ] = None,
) -> None:
    """Start the HTTP API (settings from TUNETRACE_* environment variables)."""
    import uvicorn
    from pydantic import ValidationError

    from tunetrace.api.app import create_app
    from tunetrace.api.settings import ApiSettings

    overrides: dict[str, object] = {}
    if catalogue is not None:
        overrides["catalogue"] = catalogue
    if workers is not None:
        overrides["workers"] = workers
    if scheduler is not None:
        overrides["scheduler"] = scheduler
    try:
        settings = ApiSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"error: bad settings: {problems}", err=True)
        raise typer.Exit(2) from None
    if not settings.keys:
        typer.echo(
            "error: no API keys; set TUNETRACE_API_KEYS to key:role pairs, e.g. 'k1:read,k2:write'",
            err=True,
        )
        raise typer.Exit(2)
    # the service opens it as below when it starts: a bad catalogue is one error line here,
    # not a failed startup inside the server
    _open_catalogue(settings.catalogue, create=True).close()
    try:
        application = create_app(settings)
    except TunetraceError as exc:
        _fail(exc)
    logging.getLogger("tunetrace").setLevel(logging.INFO)
    try:
        uvicorn.run(application, host=host, port=port, access_log=False, log_level="info")
    except SystemExit as exc:  # uvicorn's own code for a server that did not start (3)
        if exc.code in (0, None):
            raise
        typer.echo(
            f"error: the HTTP server did not start on {host}:{port} (the line above says why)",
            err=True,
        )
        raise typer.Exit(1) from None


def _tree_bytes(directory: Path) -> int:
    """Bytes of the regular files under ``directory`` (a sharded catalogue's shards too)."""
    return sum(_directory_bytes(folder) for folder, _, _ in os.walk(directory))


def _directory_bytes(directory: str | Path) -> int:
    """Bytes of the regular files in ``directory``."""
    total = 0
    for path in Path(directory).iterdir():
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def _progress_bar(total: int, label: str, unit: str = "file"):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=label, unit=unit, disable=not sys.stderr.isatty(), file=sys.stderr
    )


if __name__ == "__main__":
    app()
