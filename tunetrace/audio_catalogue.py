"""The catalogue as the Python API offers it: storage that also adds audio files.

:class:`tunetrace.index.catalogue.Catalogue` stores fingerprints and knows nothing of audio;
this subclass adds what a program needs on top of it (decode, fingerprint, store) by calling
:mod:`tunetrace.ingest`. Being a storage catalogue too, it goes wherever one is expected:
``tunetrace.Matcher(catalogue)``, scans, the evidence views.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunetrace.audio_files import AudioFiles
from tunetrace.errors import CatalogueError, IncompatibleCatalogueError
from tunetrace.index.catalogue import Catalogue as StorageCatalogue
from tunetrace.index.shard_layout import is_sharded, shard_owner

logger = logging.getLogger(__name__)


class Catalogue(AudioFiles, StorageCatalogue):
    """A catalogue directory of reference recordings that queries are matched against.

    Opens (or, with ``create=True``, creates) the catalogue in ``directory``. Use it as a
    context manager, or call :meth:`close`.

    Parameters
    ----------
    directory : str or Path
        The catalogue directory (``catalogue.sqlite``, the vector index file, the writer's
        lock file). A sharded catalogue's directory (``tunetrace shards init``) opens as a
        :class:`~tunetrace.sharded_catalogue.ShardedCatalogue`, which offers the same
        methods.
    params : FingerprintParams, optional
        Fingerprint parameters of a new catalogue (``None``: the defaults). An existing
        catalogue keeps its own; giving other ones raises ``IncompatibleCatalogueError``.
    create : bool
        Create the catalogue if the directory holds none.
    read_only : bool
        Refuse writes (for processes that only match).
    features_cache_bytes : int
        Most bytes of reference features kept decoded between matches.

    Raises
    ------
    CatalogueError
        If the directory holds no catalogue and ``create`` is false.
    IncompatibleCatalogueError
        If the catalogue was made by another format version or other parameters.

    See Also
    --------
    tunetrace.Matcher : matches queries against a catalogue.

    Examples
    --------
    >>> import tunetrace
    >>> with tunetrace.Catalogue("catalogue", create=True) as cat:  # doctest: +SKIP
    ...     cat.add_file("track03.flac", "album1/track03", title="Track three")
    ...     report = tunetrace.Matcher(cat).match_path("upload.mp3")
    """

    def __new__(cls, directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        # A sharded directory opens as a sharded catalogue, with the same methods.
        owner = shard_owner(directory)
        if owner is not None:
            raise CatalogueError(f"{directory} is one shard of {owner}: open {owner} instead")
        if cls is Catalogue and is_sharded(directory):
            from tunetrace.sharded_catalogue import ShardedCatalogue

            sharded = ShardedCatalogue(directory, read_only=kwargs.get("read_only", False))
            params = kwargs.get("params")
            if params is not None and params != sharded.params:
                sharded.close()
                raise IncompatibleCatalogueError(
                    f"catalogue {directory} was made with other fingerprint parameters "
                    f"(digest {sharded.params.digest()}, asked for {params.digest()})"
                )
            return sharded
        return super().__new__(cls)

    def __enter__(self) -> Catalogue:
        return self
