"""Reading the CSV manifests that ``add`` and ``scan`` take (one file per row)."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from tunetrace.errors import BadInputError


def manifest_rows(manifest: Path) -> list[tuple[int, list[str]]]:
    """The rows of a CSV manifest, numbered from 1.

    UTF-8, with or without the byte-order mark spreadsheet programs write (which would
    otherwise stick to the first field and hide a header row).

    Parameters
    ----------
    manifest : Path

    Returns
    -------
    rows : list of (int, list of str)
        Line number and fields of every row.

    Raises
    ------
    BadInputError
        If the manifest is missing, a folder, unreadable, or not UTF-8 text (naming the
        first line that is not).
    """
    if manifest.is_dir():
        raise BadInputError(f"{manifest} is a folder, not a manifest file")
    if not manifest.is_file():
        raise BadInputError(f"{manifest}: no such manifest file")
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{manifest}: cannot be read ({exc.strerror or exc})") from None
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInputError(
            f"{manifest}:{line}: not UTF-8 text; save the manifest as UTF-8 "
            '("CSV UTF-8" in spreadsheet programs)'
        ) from None
    return list(enumerate(csv.reader(io.StringIO(text, newline="")), start=1))
