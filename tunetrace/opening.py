"""Open whatever catalogue a directory holds: an ordinary one or a sharded one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tunetrace.errors import BadInputError
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.shard_layout import is_sharded, shard_owner

if TYPE_CHECKING:
    from distributed import Client

    from tunetrace.sharded_catalogue import ShardedCatalogue


def open_catalogue(
    directory: str | Path,
    *,
    create: bool = False,
    read_only: bool = False,
    scheduler: str | Client | None = None,
) -> Catalogue | ShardedCatalogue:
    """The catalogue in ``directory``: a :class:`~tunetrace.sharded_catalogue.ShardedCatalogue`
    if it holds a shard manifest, else a :class:`~tunetrace.index.catalogue.Catalogue`.

    Parameters
    ----------
    directory : str or Path
    create : bool
        Create an (unsharded) catalogue if there is none.
    read_only : bool
    scheduler : str or distributed.Client, optional
        Dask scheduler address (or a connected client): the shards are opened and searched
        on its workers.

    Raises
    ------
    BadInputError
        If ``scheduler`` is no scheduler address or is given for an unsharded catalogue, or
        ``directory`` is one shard of a sharded catalogue (its references would bypass the
        routing).
    CatalogueError
        If the catalogue cannot be opened.
    """
    owner = shard_owner(directory)
    if owner is not None:
        raise BadInputError(
            f"{directory} is one shard of the sharded catalogue {owner}: use -c {owner}"
        )
    if isinstance(scheduler, str):  # (or a connected distributed.Client)
        check_scheduler_address(scheduler)
    if is_sharded(directory):
        from tunetrace.sharded_catalogue import ShardedCatalogue

        return ShardedCatalogue(directory, read_only=read_only, scheduler=scheduler)
    if scheduler is not None:
        raise BadInputError(
            f"{directory} is not a sharded catalogue: matching on a Dask cluster needs one "
            f"('tunetrace shards init -c {directory} --shards N' makes it one)"
        )
    return Catalogue(directory, create=create, read_only=read_only)


def check_scheduler_address(address: str) -> str:
    """``address`` if it is a Dask scheduler address (``tcp://host:8786``, ``host:8786``).

    Raises
    ------
    BadInputError
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        _, location = parse_address(address)
        parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise BadInputError(
            f"{address!r} is not a Dask scheduler address (e.g. tcp://host:8786): {exc}"
        ) from None
    return address
