"""One search through the inverted lists of several indexes built on one training.

A Dask worker holding several shards of a catalogue whose index is trained once
(:mod:`tunetrace.index.shared_training`) searches the same lists of every shard for a query.
Searched one shard after another, FAISS's fast-scan kernels pay their fixed cost per query
vector and list once per shard, on lists a tenth as long as one index's: measured on one
core, five shards of a million-work catalogue took 51 ms to search for a 10-s query, one
pass over their lists joined 32 ms. Here the
shards' lists are copied, list by list, into one index on the same training (their codes
are copied as stored, never decoded or encoded again), with each shard's number in the top
bits of its vector ids, and one search answers for all of them: the same neighbours, as the
codes and the list centroids are the same.

Only fast-scan (4-bit IVF-PQ) lists are joined: FAISS reads them into each process anyway,
they are what a catalogue large enough to shard uses, and it is there that the fixed cost
was measured. The copy costs as much memory as the shards' own lists; it is made once per
published index of each shard, in the background when large.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import faiss
import numpy as np
from tunetrace.index.list_assignment import require_neighbours, search_lists
from tunetrace.index.readers_writer import ReadersWriterLock
from tunetrace.index.vector_index import (
    ListAssignment,
    VectorIndex,
    _fits,
    _ivf_parts,
    _no_neighbours,
)

logger = logging.getLogger(__name__)

#: Bits of a joined vector id that carry its part's number (at the top of a non-negative
#: int64); the parts' own ids must fit below them.
PART_BITS = 8
PART_SHIFT = 63 - PART_BITS
#: Vectors up to which a join is made at once, where it is asked for (a few milliseconds
#: per 100,000); larger ones are made in the background, and searched once made.
JOIN_AT_ONCE_VECTORS = 2_000_000
#: Joins a process keeps (one per group of shards it searches together).
JOINS_KEPT = 2


def joinable(part: VectorIndex, digest: str) -> bool:
    """Whether ``part`` can be searched in a join on the training of lists digest
    ``digest``: a fast-scan IVF index built on it, its lists in memory, never changed in
    this process since it was read or built (a writer's index changes with every write;
    readers join each published index once).

    Parameters
    ----------
    part : VectorIndex
    digest : str
        :attr:`~tunetrace.index.vector_index.VectorIndex.lists_digest` of the training.

    Returns
    -------
    bool
    """
    if part.lists_digest != digest or part.memory_mapped or part.changes:
        return False  # (an index this process adds to or removes from is a writer's)
    try:
        _, ivf = _ivf_parts(part._index)
    except TypeError:
        return False
    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.BlockInvertedLists)


class JoinedLists:
    """The vectors of several indexes on one training, in one index.

    Parameters
    ----------
    training : VectorIndex
        The empty trained index the parts are built on (not changed: a copy is filled).
    parts : sequence of VectorIndex
        Each :func:`joinable` on ``training``'s digest; at most ``2 ** PART_BITS``.
    abandon : callable, optional
        Asked between lists: once it answers true, the copy stops (a join no longer
        wanted, its parts published again meanwhile).

    Raises
    ------
    ValueError
        If a part is not joinable, there are too many, or a part's ids do not fit below
        :data:`PART_SHIFT` bits.
    JoinAbandonedError
        If ``abandon`` answered true.
    """

    def __init__(
        self,
        training: VectorIndex,
        parts: Sequence[VectorIndex],
        *,
        abandon: Callable[[], bool] | None = None,
    ) -> None:
        digest = training.lists_digest
        if digest is None or not parts or len(parts) > 2**PART_BITS:
            raise ValueError(f"cannot join {len(parts)} indexes on this training")
        if not all(joinable(part, digest) for part in parts):
            raise ValueError("only fast-scan indexes in memory, built on the training, join")
        self.digest = digest
        #: The parts joined, by identity (held weakly: a part replaced, an index published
        #: again, is let go).
        self._parts = tuple(weakref.ref(part) for part in parts)
        self._changes = tuple(part.changes for part in parts)
        joined = VectorIndex.from_training_bytes(
            training.dim, training.spec, training.training_bytes()
        )
        _, self._ivf = _ivf_parts(joined._index)
        self._joined = joined  # owns the FAISS index
        into = faiss.downcast_InvertedLists(self._ivf.invlists)
        if into.packer is None:
            raise ValueError("the training's lists have no code packer")
        sources = []
        for part in parts:
            with part._access.reading():
                sources.append(faiss.downcast_InvertedLists(_ivf_parts(part._index)[1].invlists))
        # each list under its parts' read locks, not the whole copy: a write to a part
        # meanwhile waits for one list, not for all (and the join, made of a part as it was
        # before, is never searched: :meth:`holds`)
        locks = [part._access for part in parts]
        total = _copy_lists(sources, into, locks, abandon)
        self._ivf.ntotal = total
        self.size = total

    def holds(self, parts: Sequence[VectorIndex]) -> bool:
        """Whether this join is of exactly ``parts``.

        Parameters
        ----------
        parts : sequence of VectorIndex

        Returns
        -------
        bool
            True if they are the objects joined, in order, none changed since.
        """
        return len(parts) == len(self._parts) and all(
            mine() is theirs and theirs.changes == changes
            for mine, theirs, changes in zip(self._parts, parts, self._changes, strict=True)
        )

    def current(self) -> bool:
        """Whether every part joined is still held and unchanged since."""
        parts = [ref() for ref in self._parts]
        return all(part is not None for part in parts) and self.holds(parts)  # type: ignore[arg-type]

    def search_assigned(
        self, assignment: ListAssignment, k: int
    ) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Each part's share of the ``k`` nearest vectors over all parts, in the lists
        ``assignment`` chose: the ``k`` best of what each part's own
        :meth:`~tunetrace.index.vector_index.VectorIndex.search_assigned` gives, once
        merged.

        Parameters
        ----------
        assignment : ListAssignment
        k : int

        Returns
        -------
        found : list of (np.ndarray, np.ndarray) or None
            Per part, ``(similarities, ids)`` of shape ``(n, k)`` in its own ids (``-1`` and
            0 where its share has fewer than ``k``); ``None`` if the assignment was made on
            another training (search the parts one by one).
        """
        require_neighbours(k)
        if assignment.digest != self.digest or not _fits(assignment, self._ivf):
            return None
        n = len(assignment.vectors)
        if self.size == 0 or n == 0:
            similarities, ids = _no_neighbours(n, k)
        else:
            similarities, ids = search_lists(
                self._ivf, assignment.vectors, k, assignment.lists, assignment.similarities
            )
        numbers = np.where(ids >= 0, ids >> PART_SHIFT, -1)
        found = []
        for number in range(len(self._parts)):
            mine = numbers == number
            # each row keeps its order (best first); the others' hits move to the end
            order = np.argsort(~mine, axis=1, kind="stable")
            kept = np.take_along_axis(mine, order, axis=1)
            part_ids = np.where(kept, np.take_along_axis(ids, order, axis=1) & _LOCAL_MASK, -1)
            part_similarities = np.where(
                kept, np.take_along_axis(similarities, order, axis=1), 0.0
            ).astype(np.float32)
            found.append((part_similarities, part_ids))
        return found


_LOCAL_MASK = (1 << PART_SHIFT) - 1


class JoinAbandonedError(Exception):
    """A join stopped part-way because it was no longer wanted."""


def _copy_lists(
    sources: list[faiss.BlockInvertedLists],
    into: faiss.BlockInvertedLists,
    locks: list[ReadersWriterLock],
    abandon: Callable[[], bool] | None = None,
) -> int:
    """Append each list of every source (part ``n``: ``sources[n]``, read under
    ``locks[n]``) to ``into``'s list of the same number, the ids marked with their part;
    returns the vectors copied (raises :class:`JoinAbandonedError` once ``abandon()``)."""
    copied = 0
    for list_number in range(into.nlist):
        if abandon is not None and abandon():
            raise JoinAbandonedError(f"abandoned after {list_number} of {into.nlist} lists")
        with contextlib.ExitStack() as reading:
            for lock in locks:
                reading.enter_context(lock.reading())
            copied += _copy_list(sources, into, list_number)
    return copied


def _copy_list(
    sources: list[faiss.BlockInvertedLists], into: faiss.BlockInvertedLists, list_number: int
) -> int:
    """Append list ``list_number`` of every source to ``into``'s; returns its vectors."""
    sizes = [source.list_size(list_number) for source in sources]
    order = _part_order(sizes, into.block_size)
    if order is None:
        return _copy_list_repacked(sources, into, list_number)
    for number in order:
        source, size = sources[number], sizes[number]
        ids = _marked_ids(source, list_number, size, number)
        codes = source.get_codes(list_number)
        try:  # codes as stored (packed in blocks), which the joined lists take as such
            into.add_entries(list_number, size, faiss.swig_ptr(ids), codes)
        finally:
            source.release_codes(list_number, codes)
    return sum(sizes)


def _part_order(sizes: list[int], block_bytes: int) -> list[int] | None:
    """An order in which to append the parts' shares of a list: FAISS copies the codes
    given to a non-empty block list as whole blocks, too many of them, when its length is a
    multiple of the block's size in bytes (not entries), so no part may be appended at such
    a length. ``None`` if no order avoids it (the list is then packed anew)."""
    present = [number for number, size in enumerate(sizes) if size]
    for order in itertools.islice(itertools.permutations(present), 720):
        length, safe = 0, True
        for number in order:
            if length and length % block_bytes == 0:
                safe = False
                break
            length += sizes[number]
        if safe:
            return list(order)
    return None


def _copy_list_repacked(
    sources: list[faiss.BlockInvertedLists], into: faiss.BlockInvertedLists, list_number: int
) -> int:
    """Append one list of every source to ``into`` as one, its codes unpacked and packed
    again in one run of blocks (appended to an empty list, FAISS copies them as given)."""
    packer = into.packer
    code_bytes, per_block, block_bytes = packer.code_size, packer.nvec, packer.block_size
    flat, ids = [], []
    for number, source in enumerate(sources):
        size = source.list_size(list_number)
        if not size:
            continue
        ids.append(_marked_ids(source, list_number, size, number))
        blocks = -(-size // per_block)
        codes = source.get_codes(list_number)
        try:
            packed = faiss.rev_swig_ptr(codes, blocks * block_bytes)
            unpacked = np.empty((blocks * per_block, code_bytes), dtype=np.uint8)
            for block in range(blocks):
                packer.unpack_all(
                    faiss.swig_ptr(packed[block * block_bytes :]),
                    faiss.swig_ptr(unpacked[block * per_block :]),
                )
        finally:
            source.release_codes(list_number, codes)
        flat.append(unpacked[:size])
    if not ids:
        return 0
    all_ids = np.concatenate(ids)
    size = len(all_ids)
    blocks = -(-size // per_block)
    padded = np.zeros((blocks * per_block, code_bytes), dtype=np.uint8)
    padded[:size] = np.concatenate(flat)
    repacked = np.zeros(blocks * block_bytes, dtype=np.uint8)
    for block in range(blocks):
        packer.pack_all(
            faiss.swig_ptr(padded[block * per_block :]),
            faiss.swig_ptr(repacked[block * block_bytes :]),
        )
    if into.list_size(list_number):
        raise ValueError(f"list {list_number} is not empty")
    into.add_entries(list_number, size, faiss.swig_ptr(all_ids), faiss.swig_ptr(repacked))
    return size


def _marked_ids(
    source: faiss.InvertedLists, list_number: int, size: int, number: int
) -> np.ndarray:
    """A copy of a source list's ids with part ``number`` in their top bits."""
    pointer = source.get_ids(list_number)
    try:
        ids = faiss.rev_swig_ptr(pointer, size).copy()
    finally:
        source.release_ids(list_number, pointer)
    if int(ids.min()) < 0 or int(ids.max()) > _LOCAL_MASK:
        raise ValueError(f"part {number} has vector ids that do not fit below the part bits")
    return ids | (np.int64(number) << np.int64(PART_SHIFT))


class JoinedListsCache:
    """One process's joins of the parts it searches together, by the parts (held weakly).

    A join is made at once when small (a few milliseconds per 100,000 vectors), else in the
    background, one at a time (the parts are searched one by one until it is made); it is
    dropped once any of its parts is let go (an index published again, a shard closed).
    Keeps at most :data:`JOINS_KEPT` joins (a process searching more groups of shards
    than that makes theirs again in turn). A join that cannot be made is not tried again
    for the same parts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._joins: dict[tuple[weakref.ref[VectorIndex], ...], JoinedLists] = {}
        self._making: tuple[weakref.ref[VectorIndex], ...] | None = None
        # the parts the join being made is for, or those that replaced some of them since
        self._wanted: tuple[weakref.ref[VectorIndex], ...] | None = None
        self._refused: set[tuple[weakref.ref[VectorIndex], ...]] = set()

    def get(self, training: VectorIndex, parts: Sequence[VectorIndex]) -> JoinedLists | None:
        """The join of ``parts`` on ``training``, if made (``None`` while it is being made,
        or when the parts cannot be joined).

        Parameters
        ----------
        training : VectorIndex
        parts : sequence of VectorIndex

        Returns
        -------
        joined : JoinedLists or None
        """
        key = tuple(weakref.ref(part, self._let_go) for part in parts)
        with self._lock:
            for stale in [k for k, joined in self._joins.items() if not joined.current()]:
                del self._joins[stale]  # (a part changed by a writer in this process)
            joined = self._joins.get(key)
            if joined is not None and joined.holds(parts):
                self._joins[key] = self._joins.pop(key)  # most recently used last
                return joined
            self._joins.pop(key, None)
            if self._making is not None:
                if key != self._making and set(key) & set(self._making):
                    # some of its parts, others replaced (published again): the join being
                    # made is dropped (a group of other shards waits its turn instead)
                    self._wanted = key
                return None
            if key in self._refused:
                return None
            self._making = self._wanted = key
        if sum(part.size for part in parts) <= JOIN_AT_ONCE_VECTORS:
            return self._make(key, training, tuple(parts))
        try:
            threading.Thread(
                target=self._make,
                args=(key, training, tuple(parts)),
                name="tunetrace-join-lists",
                daemon=True,
            ).start()
        except RuntimeError as exc:  # no thread to be had (a limit, or shutting down)
            logger.warning("the lists of %d shards cannot be joined now (%s)", len(parts), exc)
            with self._lock:
                self._making = None
        return None

    def _make(
        self,
        key: tuple[weakref.ref[VectorIndex], ...],
        training: VectorIndex,
        parts: tuple[VectorIndex, ...],
    ) -> JoinedLists | None:
        started = time.perf_counter()
        joined, abandoned = None, False
        try:
            joined = JoinedLists(training, parts, abandon=lambda: self._wanted != key)
        except JoinAbandonedError as exc:
            abandoned = True
            logger.info("a join of %d shards' lists no longer wanted: %s", len(parts), exc)
        except Exception as exc:  # any failure: the parts are searched one by one
            logger.warning("the lists of %d shards cannot be searched together (%r): each "
                           "is searched on its own", len(parts), exc)  # fmt: skip
        finally:
            with self._lock:
                self._making = None
                if joined is None and not abandoned:
                    self._refused.add(key)
                elif joined is not None and joined.holds(parts):  # (unchanged meanwhile)
                    self._joins[key] = joined
                    for older in list(self._joins)[:-JOINS_KEPT]:
                        self._joins.pop(older, None)
        if joined is not None:
            logger.info("joined the lists of %d shards (%d vectors) in %.1f s", len(parts),
                        joined.size, time.perf_counter() - started)  # fmt: skip
        return joined

    def _let_go(self, _: weakref.ref[VectorIndex]) -> None:
        """A part was let go: drop every join and refusal naming a part no longer held.
        (Run by the garbage collector, possibly inside :meth:`get` on the same thread: it
        takes no lock, and makes only single dictionary and set operations.)"""
        for key in list(self._joins):
            if any(ref() is None for ref in key):
                self._joins.pop(key, None)
        self._refused.difference_update(
            [key for key in list(self._refused) if any(ref() is None for ref in key)]
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._joins)
