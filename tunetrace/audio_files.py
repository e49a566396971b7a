"""Adding audio files to a catalogue: decode, fingerprint, store.

:class:`AudioFiles` gives any catalogue with ``params``, ``contains`` and ``add`` (an
ordinary or a sharded one) the Python API's ``add_file`` and ``add_files``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from tunetrace.errors import DuplicateReferenceError
from tunetrace.index.catalogue import ReferenceRecord, validate_reference_id
from tunetrace.ingest import (
    MAX_REFERENCE_S,
    IngestItem,
    IngestSummary,
    fingerprint_reference,
    ingest,
    items_from_paths,
)

logger = logging.getLogger(__name__)


class AudioFiles:
    """``add_file`` and ``add_files`` for a catalogue class that stores fingerprints (it
    provides ``params``, ``contains``, ``add`` and ``save_index``)."""

    def add_file(
        self,
        path: str | Path,
        reference_id: str | None = None,
        *,
        title: str | None = None,
        artist: str | None = None,
        isrc: str | None = None,
        replace: bool = False,
        max_duration_s: float | None = MAX_REFERENCE_S,
    ) -> ReferenceRecord:
        """Decode and fingerprint one audio file and store it as a reference.

        The change is one transaction, published to readers (other processes, the HTTP API)
        when this returns.

        Parameters
        ----------
        path : str or Path
            An audio file (WAV, FLAC, OGG/Vorbis, Opus, MP3, AAC/M4A, ...).
        reference_id : str, optional
            Id of the reference: 1-200 characters, no control characters, ``/`` allowed
            (default: the file name without its extension).
        title, artist, isrc : str, optional
            Metadata reported with matches.
        replace : bool
            Replace an existing reference with this id instead of failing.
        max_duration_s : float or None
            Longest recording accepted, in seconds (``None``: no limit).

        Returns
        -------
        record : ReferenceRecord
            The stored reference's metadata (``duration_s`` is the decoded duration).

        Raises
        ------
        DuplicateReferenceError
            If the id exists and ``replace`` is false (checked before decoding).
        InvalidReferenceIdError
            If the id breaks the id rules.
        AudioDecodeError, AudioTooShortError, AudioTooLongError
            If the file is not usable audio (shorter than 5 s of sound, or too long).
        """
        path = Path(path)
        reference_id = path.stem if reference_id is None else reference_id
        self._check_new_id(reference_id, replace=replace)
        data = fingerprint_reference(path, params=self.params, max_duration_s=max_duration_s)
        record = self.add(
            reference_id,
            data,
            title=title,
            artist=artist,
            isrc=isrc,
            source_path=str(path),
            replace=replace,
        )
        logger.info("added %s (%.1f s) as %r", path, data.duration_s, reference_id)
        return record

    def add_files(
        self,
        paths: Iterable[str | Path | IngestItem],
        *,
        replace: bool = False,
        workers: int = 1,
        on_done: Callable[[IngestItem, str | None], None] | None = None,
    ) -> IngestSummary:
        """Add many files, fingerprinted in ``workers`` processes; bad files are skipped.

        Unlike :meth:`add_file`, a file that cannot be added (undecodable, too short, an
        existing id without ``replace``) is reported in the summary and logged, and the others
        are still added: what ``tunetrace add`` does.

        Parameters
        ----------
        paths : iterable of str, Path or IngestItem
            Files, folders (searched recursively for audio) or items with explicit ids and
            metadata. A folder's files get their path relative to the folder, without
            extension, as id (``album1/track03``); a file gets its name without extension.
        replace : bool
            Replace references whose id exists.
        workers : int
            Processes that decode and fingerprint (1: this process).
        on_done : callable, optional
            Called as ``on_done(item, error_message_or_None)`` after each file.

        Returns
        -------
        summary : IngestSummary
            Counts of added and replaced references, the failed files with their reasons,
            and the seconds of audio added.

        Raises
        ------
        BadInputError
            If a path does not exist.
        """
        items: list[IngestItem] = []
        for entry in paths:
            if isinstance(entry, IngestItem):
                items.append(entry)
            else:
                items += items_from_paths([Path(entry)])
        return ingest(self, items, replace=replace, workers=workers, on_done=on_done)

    def _check_new_id(self, reference_id: str, *, replace: bool) -> None:
        """Refuse a bad id, or an existing one unless ``replace``, before decoding anything."""
        validate_reference_id(reference_id)
        if not replace and self.contains(reference_id):
            raise DuplicateReferenceError(
                f"reference {reference_id!r} already exists (use replace to overwrite it)"
            )
