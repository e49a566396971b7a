"""A stored reference derived a tile at a time, as verification reads it.

Most candidates of a query are aligned and screened and go no further: they read the
reference's frames around one alignment, a few tens of seconds of a song. A reference whose
spectrum is stored in tiles (:class:`~tunetrace.index.spectrum_codec.PackedTiles`) is decoded
and derived only where it is read. Code that knows what it reads asks for those frames
(:meth:`~tunetrace.fingerprint.features.Features.frames_read`,
:meth:`~tunetrace.fingerprint.features.Features.positions_read`); everything else reads the
attributes, which derive the whole reference first, so nothing reads a frame not yet derived.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import FREQUENCY_BLUR, blur_bins, chroma_weights
from tunetrace.index._kernels import (
    chroma_and_blurred_frames,
    frames_times_table,
    moving_average_part,
    stored_spectrum_arrays,
)
from tunetrace.index.spectrum_codec import PackedTiles


def _clamped(
    value: float, low: int, high: int, rounded: Callable[[float], float], *, nan: int
) -> int:
    """``value`` rounded by ``rounded`` into ``[low, high]``, ``nan`` when it is not a number;
    compared before it is converted, so a value of any width (a huge integer, a long double)
    lands where it lies."""
    if value != value:  # NaN
        return nan
    if value <= low:
        return low
    if value >= high:
        return high
    return min(max(int(rounded(value)), low), high)


def _plain_features(
    spectrum: np.ndarray,
    chroma: np.ndarray,
    frame_rate_hz: float,
    spectrum_frames: np.ndarray,
    chroma_bin_spectrum: np.ndarray,
) -> Features:
    """Features of arrays already derived (how a reference read in tiles is unpickled)."""
    features = Features(spectrum, chroma, frame_rate_hz)
    vars(features)["spectrum_frames"] = spectrum_frames
    vars(features)["chroma_bin_spectrum"] = chroma_bin_spectrum
    return features


class _PartlyDerived(Features):
    """The arrays of a :class:`TiledFeatures` as they stand: what they derive is computed
    afresh each time, never kept (a value kept now would miss the frames filled later), and
    asking for more frames asks the reference."""

    @property  # type: ignore[override]
    def verification_spectrum(self) -> np.ndarray:
        """See :attr:`Features.verification_spectrum` (not kept)."""
        return blur_bins(self.spectrum, circular=False)

    def frames_read(self, first: float, stop: float, *, chroma: bool = True) -> Features:
        """See :meth:`Features.frames_read` (the reference derives them)."""
        return self._owner().frames_read(first, stop, chroma=chroma)

    def positions_read(self, positions: np.ndarray) -> Features:
        """See :meth:`Features.positions_read` (the reference derives them)."""
        return self._owner().positions_read(positions)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """Pickled as the whole reference is (see :meth:`TiledFeatures.__reduce__`)."""
        return self._owner().__reduce__()

    def _owner(self) -> TiledFeatures:
        """The reference these arrays are of (held weakly: no cycle keeps it alive once
        the features cache drops it)."""
        owner = vars(self)["_owner_ref"]()
        if owner is None:
            raise RuntimeError("the reference these arrays were read from is gone")
        return owner


class TiledFeatures(Features):
    """The features of a reference stored in tiles, derived as they are read.

    The arrays are allocated whole and filled where read (NaN elsewhere); every frame's values
    equal those of the whole reference derived at once (:func:`~tunetrace.index.storage.
    stored_features`) to float rounding, and do not depend on the order the parts are read
    in. Safe to share between threads.

    Parameters
    ----------
    tiles : PackedTiles
    levels : np.ndarray [shape=(256,), dtype=float32]
        Value of each code.
    params : FingerprintParams
    bin_table : np.ndarray [shape=(bins_per_octave, bins_per_octave + 2), dtype=float32]
        Real FFT along chroma bins as a matrix (real and imaginary parts interleaved).
    on_damage : callable, optional
        Turns the ``ValueError`` of a damaged tile into the error to raise (the catalogue's
        names the reference); by default the ``ValueError`` is raised.

    Raises
    ------
    Exception
        When a tile read is damaged: what ``on_damage`` made of it, from the attribute or
        method that read the tile.
    """

    def __init__(
        self,
        tiles: PackedTiles,
        levels: np.ndarray,
        params: FingerprintParams,
        bin_table: np.ndarray,
        on_damage: Callable[[ValueError], Exception] | None = None,
    ) -> None:
        state = {
            "frame_rate_hz": params.frame_rate_hz,
            "_tiles": tiles,
            "_levels": levels,
            "_weights": chroma_weights(params),
            "_bins": params.bins_per_octave,
            "_smooth_frames": params.chroma_smooth_frames,
            "_bin_table": bin_table,
            # the arrays as they stand, for code that asked for its frames; allocated at the
            # first read (a reference read whole is derived in one pass)
            "_read": None,
            "_folded": None,
            "_tile_done": np.zeros(tiles.count, dtype=bool),
            "_chroma_done": np.zeros(tiles.n_frames, dtype=bool),
            "_lock": threading.Lock(),
            "_on_damage": on_damage,
        }
        for name, value in state.items():
            object.__setattr__(self, name, value)

    # -- what code that does not say what it reads gets: the whole reference

    @property  # type: ignore[override]
    def spectrum(self) -> np.ndarray:
        """The whole spectrum (see :attr:`Features.spectrum`)."""
        return self._whole()._read.spectrum

    @property  # type: ignore[override]
    def chroma(self) -> np.ndarray:
        """The whole chroma (see :attr:`Features.chroma`)."""
        return self._whole()._read.chroma

    @property  # type: ignore[override]
    def spectrum_frames(self) -> np.ndarray:
        """See :attr:`Features.spectrum_frames`; derives the whole reference."""
        return self._whole()._read.spectrum_frames

    @property  # type: ignore[override]
    def chroma_bin_spectrum(self) -> np.ndarray:
        """See :attr:`Features.chroma_bin_spectrum`; derives the whole reference."""
        return self._whole()._read.chroma_bin_spectrum

    @property
    def n_frames(self) -> int:
        """Number of frames (known without deriving any)."""
        return self._tiles.n_frames

    @property
    def nbytes(self) -> int:
        """Bytes the arrays hold once read (allocated whole at the first read)."""
        n_frames, n_bins, bins = self.n_frames, self._tiles.n_bins, self._bins
        return 4 * n_frames * (2 * n_bins + 2 * bins) + 8 * n_frames * (bins // 2 + 1)

    @property
    def derived_fraction(self) -> float:
        """Share of the reference's tiles decoded so far."""
        return float(self._tile_done.mean())

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """Pickled (to another process) as the whole reference's plain features, with the
        arrays derived here (not derived again there, to other float rounding)."""
        read = self._whole()._read
        return _plain_features, (
            read.spectrum, read.chroma, self.frame_rate_hz,
            read.spectrum_frames, read.chroma_bin_spectrum,
        )  # fmt: skip

    def __repr__(self) -> str:
        """What it is, without deriving anything."""
        return (
            f"TiledFeatures(n_frames={self.n_frames}, frame_rate_hz={self.frame_rate_hz}, "
            f"derived_fraction={self.derived_fraction:.2f})"
        )

    def __eq__(self, other: object) -> bool:
        """Equal to itself alone (its arrays are filled as it is read)."""
        return self is other

    __hash__ = object.__hash__

    # -- what code that says what it reads gets

    def frames(self, first: int, stop: int) -> Features:
        """See :meth:`Features.frames`; derives only those frames."""
        return self.frames_read(first, stop).frames(first, stop)

    def frames_read(self, first: float, stop: float, *, chroma: bool = True) -> Features:
        """See :meth:`Features.frames_read`."""
        n_frames = self.n_frames
        # a range that is not a number reads everything (its readers skip such positions)
        first = _clamped(first, 0, n_frames, np.floor, nan=0)
        stop = _clamped(stop, first, n_frames, np.ceil, nan=n_frames)
        tile_frames = self._tiles.tile_frames
        with self._lock:
            if self._read is None and chroma and (first, stop) == (0, n_frames):
                self._derive_whole()
            else:
                self._allocate()
                if stop > first:
                    self._decode(range(first // tile_frames, (stop - 1) // tile_frames + 1))
                    if chroma:
                        self._derive_chroma(first, stop)
        return self._read

    def positions_read(self, positions: np.ndarray) -> Features:
        """See :meth:`Features.positions_read`."""
        where = np.asarray(positions, dtype=np.float64).ravel()
        if where.size:
            last = self.n_frames - 1
            # fmax and fmin take the number where the other is NaN: NaN reads frame 0
            below = np.floor(np.fmin(np.fmax(where, 0.0), last)).astype(np.int64)
            frames = np.concatenate([below, np.minimum(below + 1, last)])
            tiles = np.flatnonzero(np.bincount(frames // self._tiles.tile_frames,
                                               minlength=self._tiles.count))  # fmt: skip
        else:
            tiles = np.zeros(0, dtype=np.int64)
        with self._lock:
            self._allocate()
            self._decode(tiles.tolist())
        return self._read

    # -- deriving

    def _whole(self) -> TiledFeatures:
        """Derive every frame not derived yet."""
        if not self._chroma_done.all():
            self.frames_read(0, self.n_frames)
        return self

    def _allocate(self) -> None:
        """Allocate the arrays, NaN until derived (lock held)."""
        if self._read is not None:
            return
        n_bins, n_frames, bins = self._tiles.n_bins, self.n_frames, self._bins
        self._install(
            {
                "spectrum": np.full((n_bins, n_frames), np.nan, dtype=np.float32),
                "chroma": np.full((bins, n_frames), np.nan, dtype=np.float32),
                "spectrum_frames": np.full((n_frames, n_bins), np.nan, dtype=np.float32),
                "chroma_bin_spectrum": np.full(
                    (n_frames, bins // 2 + 1), np.nan, dtype=np.complex64
                ),
            },
            np.full((bins, n_frames), np.nan, dtype=np.float32),
        )

    def _install(self, arrays: dict[str, np.ndarray], folded: np.ndarray) -> None:
        """Keep ``arrays`` and ``folded`` as the reference's (lock held)."""
        read = _PartlyDerived(arrays["spectrum"], arrays["chroma"], self.frame_rate_hz)
        vars(read)["_owner_ref"] = weakref.ref(self)
        vars(read)["spectrum_frames"] = arrays["spectrum_frames"]
        vars(read)["chroma_bin_spectrum"] = arrays["chroma_bin_spectrum"]
        object.__setattr__(self, "_folded", folded)
        object.__setattr__(self, "_read", read)

    def _derive_whole(self) -> None:
        """Derive every frame in one pass, before anything else was (lock held): the same
        kernels, frame by frame, as the parts, without their copies."""
        with self._damage_reported():
            codes = self._tiles.all_codes()
        spectrum, folded, frames = stored_spectrum_arrays(
            codes, self._levels, self._weights, self._bins
        )
        chroma, bin_spectrum = self._chroma_arrays(folded, 0, self.n_frames)
        self._install(
            {"spectrum": spectrum, "chroma": chroma, "spectrum_frames": frames,
             "chroma_bin_spectrum": bin_spectrum},
            folded,
        )  # fmt: skip
        self._tile_done[:] = True
        self._chroma_done[:] = True

    @contextlib.contextmanager
    def _damage_reported(self) -> Iterator[None]:
        """A damaged tile decoded inside the block raises what ``on_damage`` makes of it."""
        try:
            yield
        except ValueError as exc:
            if self._on_damage is None:
                raise
            raise self._on_damage(exc) from exc

    def _chroma_arrays(
        self, folded: np.ndarray, first: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chroma and its transform along bins of frames ``first`` to ``stop - 1``, from the
        octave fold of every frame within the moving average's reach."""
        smoothed = moving_average_part(folded, first, stop, self._smooth_frames)
        chroma, blurred = chroma_and_blurred_frames(
            smoothed, np.asarray(FREQUENCY_BLUR, dtype=np.float32)
        )
        return chroma, frames_times_table(blurred, self._bin_table).view(np.complex64)

    def _decode(self, tiles: Iterable[int]) -> None:
        """Decode the tiles not yet decoded and derive their spectra (lock held, arrays
        allocated)."""
        read = self._read
        for tile in tiles:
            if self._tile_done[tile]:
                continue
            first, stop = self._tiles.frame_range(int(tile))
            with self._damage_reported():
                codes = self._tiles.codes(int(tile))
            spectrum, folded, frames = stored_spectrum_arrays(
                codes, self._levels, self._weights, self._bins
            )
            read.spectrum[:, first:stop] = spectrum
            read.spectrum_frames[first:stop] = frames
            self._folded[:, first:stop] = folded
            self._tile_done[tile] = True

    def _derive_chroma(self, first: int, stop: int) -> None:
        """Derive the chroma arrays of frames ``first`` to ``stop - 1`` not derived yet
        (lock held; their tiles decoded)."""
        missing = np.flatnonzero(~self._chroma_done[first:stop])
        if missing.size == 0:
            return
        first, stop = first + int(missing[0]), first + int(missing[-1]) + 1
        # the moving average reads the frames around these: their tiles too
        width = self._smooth_frames
        tile_frames = self._tiles.tile_frames
        around = max(first - width, 0), min(stop + width, self.n_frames)
        self._decode(range(around[0] // tile_frames, (around[1] - 1) // tile_frames + 1))
        chroma, bin_spectrum = self._chroma_arrays(self._folded, first, stop)
        self._read.chroma[:, first:stop] = chroma
        self._read.chroma_bin_spectrum[first:stop] = bin_spectrum
        self._chroma_done[first:stop] = True
