"""tunetrace: find tempo-, pitch- and speed-altered copies of known music.

The Python API::

    import tunetrace

    with tunetrace.Catalogue("catalogue", create=True) as cat:
        cat.add_file("track03.flac", "album1/track03", title="Track three")
        report = tunetrace.Matcher(cat).match_path("upload.mp3", top=5)
        print(report.to_dict())

The names below are imported on first use, so that ``import tunetrace`` (and the command
line, which imports its own parts when a subcommand needs them) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tunetrace.audio_catalogue import Catalogue
    from tunetrace.errors import (
        AudioDecodeError,
        AudioTooLongError,
        AudioTooShortError,
        BadInputError,
        CatalogueError,
        DuplicateReferenceError,
        IncompatibleCatalogueError,
        InvalidReferenceIdError,
        ReferenceNotFoundError,
        ShardUnavailableError,
        TunetraceError,
        UnsupportedAudioError,
    )
    from tunetrace.index.catalogue import ReferenceRecord
    from tunetrace.ingest import IngestItem, IngestSummary
    from tunetrace.matcher import Matcher
    from tunetrace.report import Match, MatchReport
    from tunetrace.types import Segment

#: Exported name -> module that defines it.
_EXPORTS = {
    "Catalogue": "tunetrace.audio_catalogue",
    "Matcher": "tunetrace.matcher",
    "MatchReport": "tunetrace.report",
    "Match": "tunetrace.report",
    "Segment": "tunetrace.types",
    "ReferenceRecord": "tunetrace.index.catalogue",
    "IngestItem": "tunetrace.ingest",
    "IngestSummary": "tunetrace.ingest",
    "TunetraceError": "tunetrace.errors",
    "BadInputError": "tunetrace.errors",
    "AudioDecodeError": "tunetrace.errors",
    "UnsupportedAudioError": "tunetrace.errors",
    "AudioTooShortError": "tunetrace.errors",
    "AudioTooLongError": "tunetrace.errors",
    "InvalidReferenceIdError": "tunetrace.errors",
    "CatalogueError": "tunetrace.errors",
    "IncompatibleCatalogueError": "tunetrace.errors",
    "ShardUnavailableError": "tunetrace.errors",
    "DuplicateReferenceError": "tunetrace.errors",
    "ReferenceNotFoundError": "tunetrace.errors",
}

__all__ = [
    "AudioDecodeError",
    "AudioTooLongError",
    "AudioTooShortError",
    "BadInputError",
    "Catalogue",
    "CatalogueError",
    "DuplicateReferenceError",
    "IncompatibleCatalogueError",
    "IngestItem",
    "IngestSummary",
    "InvalidReferenceIdError",
    "Match",
    "MatchReport",
    "Matcher",
    "ReferenceNotFoundError",
    "ReferenceRecord",
    "Segment",
    "ShardUnavailableError",
    "TunetraceError",
    "UnsupportedAudioError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tunetrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
