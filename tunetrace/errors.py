"""Exception hierarchy shared by the library, the CLI and the HTTP API.

The CLI maps these to exit codes and the API to HTTP statuses in one place each;
library code raises them with a message a person can act on.
"""

from __future__ import annotations


class TunetraceError(Exception):
    """Base class of every error tunetrace raises on purpose."""


class BadInputError(TunetraceError):
    """The caller gave input that cannot be used (bad file, bad value)."""


class AudioDecodeError(BadInputError):
    """The file is not audio that any of the decoders can read."""


class AudioTooShortError(BadInputError):
    """The audio is shorter than the shortest query that can be fingerprinted."""


class AudioTooLongError(BadInputError):
    """The audio is longer than the configured maximum duration."""


class ScanWorkerError(TunetraceError):
    """A scan's worker processes or cluster cannot run its jobs at all."""


class CatalogueError(TunetraceError):
    """The catalogue cannot be opened or changed."""


class IncompatibleCatalogueError(CatalogueError):
    """The catalogue was made by another format version or other fingerprint parameters."""


class DuplicateReferenceError(CatalogueError):
    """A reference with this id already exists and replacing was not asked for."""


class CatalogueNotFoundError(CatalogueError, BadInputError):
    """The directory holds no catalogue (a mistyped path, or nothing added yet): bad input
    to a command, a catalogue error to the service."""


class NotShardableError(CatalogueError, BadInputError):
    """The directory cannot be sharded as asked: it is sharded already, is not a directory,
    or holds files other than a catalogue's (bad input to a command)."""


class ReferenceNotFoundError(CatalogueError):
    """No reference with this id exists in the catalogue."""


class DamagedReferenceError(CatalogueError):
    """A reference's stored row cannot be read (its spectrum or its shape is damaged).

    Attributes
    ----------
    reference_id : str
        The damaged reference's id (remove it and add it again).
    """

    def __init__(self, message: str, reference_id: str) -> None:
        super().__init__(message)
        self.reference_id = reference_id

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # pickled as it is made (across process and Dask boundaries), not from its args alone
        return (type(self), (str(self), self.reference_id))


class InvalidReferenceIdError(BadInputError):
    """A reference id breaks the id rules (1-200 characters, no control characters)."""


class UnsupportedAudioError(AudioDecodeError):
    """The file declares a format outside the accepted limits (channels, sample rate)."""


class ShardUnavailableError(CatalogueError):
    """A shard of a sharded catalogue could not be searched or read (missing directory,
    damaged files, or no Dask worker could open it): the answer would be incomplete."""
