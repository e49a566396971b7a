"""Full-vector indexes kept on disk in half precision and searched in single precision.

A ``flat`` or ``ivfflat`` index holds every patch vector whole. FAISS searches float32 vectors
with its fastest kernels (BLAS for exact search); its float16 scalar-quantised twins search
several times slower. So the vectors are rounded to float16 when they are added (which loses
no neighbour that matters: the patch vectors are 2-D Fourier magnitudes of 8-bit-derived
chroma), written to disk as the float16 twin of the index, and widened back to float32 when
the file is read: half the bytes on disk, the same search, and a file read back searches
exactly as the index that wrote it.
"""

from __future__ import annotations

import faiss
import numpy as np

#: Index kinds whose files hold float16 vectors.
HALF_PRECISION_KINDS = ("flat", "ivfflat")


def rounded(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` rounded to float16 precision, as float32 (what the file keeps)."""
    return np.asarray(vectors, dtype=np.float16).astype(np.float32)


def to_disk_form(index: faiss.Index) -> faiss.Index:
    """The float16 twin of a ``flat`` (id map around ``IndexFlatIP``) or ``ivfflat`` index.

    Other indexes are returned as they are.
    """
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlat):
            return index
        twin = faiss.IndexScalarQuantizer(
            inner.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        return _mapped(twin, inner.reconstruct_n(0, inner.ntotal), index.id_map)
    source = faiss.downcast_index(index)
    if not isinstance(source, faiss.IndexIVFFlat):
        return index
    quantiser = faiss.clone_index(source.quantizer)
    twin = faiss.IndexIVFScalarQuantizer(
        quantiser,
        source.d,
        source.nlist,
        faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT,
        False,  # the vectors themselves, not their residuals from the list centroid
    )
    twin.own_fields = True  # the clone is the index's to delete
    quantiser.this.disown()
    twin.is_trained = True
    _copy_lists(source, twin, lambda codes: codes.view(np.float32).astype(np.float16))
    return twin


def from_disk_form(index: faiss.Index) -> faiss.Index:
    """Inverse of :func:`to_disk_form`; other indexes are returned as they are."""
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if not _is_half_quantiser(inner):
            return index
        flat = faiss.IndexFlatIP(inner.d)
        return _mapped(flat, inner.reconstruct_n(0, inner.ntotal), index.id_map)
    source = faiss.downcast_index(index)
    if not (isinstance(source, faiss.IndexIVFScalarQuantizer) and _is_half_quantiser(source)):
        return index
    quantiser = faiss.clone_index(source.quantizer)
    wide = faiss.IndexIVFFlat(quantiser, source.d, source.nlist, faiss.METRIC_INNER_PRODUCT)
    wide.own_fields = True
    quantiser.this.disown()
    wide.is_trained = True
    _copy_lists(source, wide, lambda codes: codes.view(np.float16).astype(np.float32))
    return wide


def _mapped(empty: faiss.Index, vectors: np.ndarray, id_map: faiss.Int64Vector) -> faiss.Index:
    """``vectors`` in ``empty`` under the ids of ``id_map``, inside an id map that owns it."""
    mapped = faiss.IndexIDMap2(empty)
    mapped.own_fields = True
    empty.this.disown()
    mapped.add_with_ids(vectors, faiss.vector_to_array(id_map))
    return mapped


def _is_half_quantiser(index: faiss.Index) -> bool:
    quantiser = getattr(index, "sq", None)
    return quantiser is not None and quantiser.qtype == faiss.ScalarQuantizer.QT_fp16


def _copy_lists(source: faiss.IndexIVF, target: faiss.IndexIVF, convert) -> None:
    """Every inverted list of ``source`` into ``target``, codes converted by ``convert``."""
    lists, into = source.invlists, target.invlists
    for number in range(source.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy()
        converted = np.ascontiguousarray(convert(codes)).view(np.uint8)
        into.add_entries(number, size, faiss.swig_ptr(ids), faiss.swig_ptr(converted))
    target.ntotal = source.ntotal
