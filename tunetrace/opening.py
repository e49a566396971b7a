"""Open whatever catalogue a directory holds: an ordinary one or a sharded one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunetrace.errors import BadInputError
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.shard_layout import is_sharded


def open_catalogue(
    directory: str | Path,
    *,
    create: bool = False,
    read_only: bool = False,
    scheduler: str | None = None,
) -> Any:
    """The catalogue in ``directory``: a :class:`~tunetrace.sharded_catalogue.ShardedCatalogue`
    if it holds a shard manifest, else a :class:`~tunetrace.index.catalogue.Catalogue`.

    Parameters
    ----------
    directory : str or Path
    create : bool
        Create an (unsharded) catalogue if there is none.
    read_only : bool
    scheduler : str, optional
        Dask scheduler address: the shards are opened and searched on its workers.

    Raises
    ------
    BadInputError
        If ``scheduler`` is given for an unsharded catalogue.
    CatalogueError
        If the catalogue cannot be opened.
    """
    if is_sharded(directory):
        from tunetrace.sharded_catalogue import ShardedCatalogue

        return ShardedCatalogue(directory, read_only=read_only, scheduler=scheduler)
    if scheduler is not None:
        raise BadInputError(
            f"{directory} is not a sharded catalogue: matching on a Dask cluster needs one "
            f"('tunetrace shards init -c {directory} --shards N' makes it one)"
        )
    return Catalogue(directory, create=create, read_only=read_only)
