"""How a reference's log-frequency spectrum is stored: companded codes, losslessly packed.

Verification compares whitened, blurred spectra and needs their shape, not 8 bits of every
bin. A codec maps each value ``v`` of a spectrum whose largest value is ``scale`` to the code
``round((v / scale) ** exponent * (2 ** bits - 1))``: an exponent below one spends more codes
on the quiet bins, where most of a spectrum lies. The codes are then packed without loss:

- ``j``: as a JPEG-LS image (bins by frames; CharLS through imagecodecs), whose predictor
  and context model use the bins and frames around each code: 0.9 of the bytes Zstandard
  needs for the same codes of real songs, two thirds for works that do not repeat
  themselves;
- ``t``: as JPEG-LS images of :data:`TILE_FRAMES` frames each, behind a table of their
  lengths: about 6% more bytes than one image, and a reference can be read a part at a time
  (verification reads the frames around a candidate's alignment, a quarter of a song or less);
- ``z``: Zstandard, which turns their few distinct values and their runs into a fraction of
  a byte each (the first compact catalogues).

Every stored row names its codec (``b5e0.7j``: 5 bits, exponent 0.7, JPEG-LS), so catalogues
written before (``u8``: linear 8-bit codes, uncompressed; ``b5e0.7z``) stay readable and can
be rewritten row by row; rows of one bit depth and exponent hold the same codes however they
are packed.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

#: Zstandard level of stored spectra: past it, smaller blobs cost much more time to write.
ZSTD_LEVEL = 9
#: Frames of each JPEG-LS tile of a ``t`` packing (10 s at 10 frames per second): shorter
#: tiles cost more bytes (5 s: 9% over one image; 10 s: 6%; 20 s: 4%, on 60 real songs), longer
#: ones decode more of a reference than a candidate's alignment needs.
TILE_FRAMES = 100


@dataclass(frozen=True)
class SpectrumCodec:
    """One way of storing a spectrum.

    Attributes
    ----------
    name : str
        Recorded with every row stored this way.
    bits : int
        Bits of information per code (``2 ** bits`` levels, one byte each before packing).
    exponent : float
        Companding exponent (1: linear).
    packing : str
        How the codes are packed: ``"j"`` JPEG-LS, ``"z"`` Zstandard, ``""`` one byte each.
    """

    name: str
    bits: int
    exponent: float
    packing: str

    @property
    def tiled(self) -> bool:
        """Whether a stored spectrum can be read a tile of frames at a time
        (:meth:`tiles`)."""
        return self.packing == "t"

    @property
    def compressed(self) -> bool:
        """Whether the codes are packed smaller than a byte each."""
        return self.packing != ""

    def same_codes(self, other: SpectrumCodec) -> bool:
        """Whether a row stored by ``other`` can be repacked by this codec without loss.

        Parameters
        ----------
        other : SpectrumCodec

        Returns
        -------
        same : bool
            Both are compact codecs of the same bits and exponent (the earlier ``u8`` rows
            keep vectors beside their spectra and are quantised again instead).
        """
        return (
            self.compressed
            and other.compressed
            and (self.bits, self.exponent) == (other.bits, other.exponent)
        )

    @property
    def top_code(self) -> int:
        """The code of the largest value (``scale``)."""
        return 2**self.bits - 1

    def encode(self, spectrum: np.ndarray) -> tuple[bytes, float]:
        """Store a non-negative spectrogram as codes and one scale factor.

        Parameters
        ----------
        spectrum : np.ndarray [shape=(n_bins, n_frames)]

        Returns
        -------
        blob : bytes
            The codes, bins first, packed as the codec packs them.
        scale : float
            The value of the top code.
        """
        codes, scale = self.quantise(spectrum)
        return self.pack(codes), scale

    def quantise(self, spectrum: np.ndarray) -> tuple[np.ndarray, float]:
        """The codes :meth:`encode` packs, and their scale factor.

        Parameters
        ----------
        spectrum : np.ndarray [shape=(n_bins, n_frames)]
            Non-negative.

        Returns
        -------
        codes : np.ndarray [shape=(n_bins, n_frames), dtype=uint8]
        scale : float
            The value of the top code.
        """
        spectrum = np.asarray(spectrum, dtype=np.float32)
        scale = float(max(spectrum.max(initial=0.0), 1e-6))
        relative = np.clip(spectrum / np.float32(scale), 0.0, 1.0)
        if self.exponent != 1.0:
            relative = relative ** np.float32(self.exponent)
        return np.round(relative * np.float32(self.top_code)).astype(np.uint8), scale

    def pack(self, codes: np.ndarray) -> bytes:
        """Pack codes (of this codec's bit depth) as this codec stores them.

        Parameters
        ----------
        codes : np.ndarray [shape=(n_bins, n_frames), dtype=uint8]

        Returns
        -------
        blob : bytes
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if self.packing == "j":
            return _jpegls_image(codes, self.name)
        if self.packing == "t":
            return _packed_tiles(codes, self.name)
        if self.packing == "z":
            return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(codes.tobytes())
        return codes.tobytes()

    def codes(self, blob: bytes, n_bins: int, n_frames: int) -> np.ndarray:
        """The codes of a stored spectrum.

        Decompression is bounded by the size the row declares: a damaged or hostile blob
        cannot make it allocate more than ``n_bins * n_frames`` bytes.

        Parameters
        ----------
        blob : bytes
            From :meth:`encode`.
        n_bins, n_frames : int
            The spectrum's shape, as its row records it.

        Returns
        -------
        codes : np.ndarray [shape=(n_bins, n_frames), dtype=uint8]

        Raises
        ------
        ValueError
            If the blob is not a spectrum of that shape stored by this codec.
        """
        _check_row(blob, n_bins, n_frames)
        size = n_bins * n_frames
        if self.packing == "j":
            return _jpegls_codes(blob, n_bins, n_frames)
        if self.packing == "t":
            return self.tiles(blob, n_bins, n_frames).all_codes()
        if self.compressed:
            try:
                declared = zstandard.frame_content_size(blob)
                if declared != size:
                    raise ValueError(f"it declares {declared} codes, its row {size}")
                raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)
            except (zstandard.ZstdError, ValueError) as exc:
                raise ValueError(f"stored spectrum is damaged ({exc})") from exc
        else:
            raw = blob
        if len(raw) != size:
            raise ValueError(
                f"stored spectrum of {len(raw)} codes is not {n_bins} bins by {n_frames} frames"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(n_bins, n_frames)

    def tiles(self, blob: bytes, n_bins: int, n_frames: int) -> PackedTiles:
        """The tiles of a spectrum this (tiled) codec stored, each decoded on demand.

        Parameters
        ----------
        blob : bytes
            From :meth:`encode`.
        n_bins, n_frames : int
            The spectrum's shape, as its row records it.

        Returns
        -------
        tiles : PackedTiles

        Raises
        ------
        ValueError
            If the codec is not tiled, or the blob's table of tiles or a tile's image header
            does not describe a spectrum of that shape (the rest of each tile is checked as
            it is decoded).
        """
        if not self.tiled:
            raise ValueError(f"{self.name} does not store spectra in tiles")
        _check_row(blob, n_bins, n_frames)
        return PackedTiles.parse(blob, n_bins, n_frames)

    def levels(self, scale: float) -> np.ndarray:
        """The value of every byte code.

        Parameters
        ----------
        scale : float
            The value of the top code.

        Returns
        -------
        levels : np.ndarray [shape=(256,), dtype=float32]
            Codes past the top code, which this codec never writes, are ``scale``.

        Raises
        ------
        ValueError
            If ``scale`` is not a finite positive number.
        """
        if not isinstance(scale, (int, float)) or not 0 < float(scale) < float("inf"):
            raise ValueError(f"stored spectrum scale {scale!r} is not a positive number")
        return _levels(self, float(scale))

    def decode(self, blob: bytes, scale: float, n_bins: int, n_frames: int) -> np.ndarray:
        """Inverse of :meth:`encode`, to the codec's precision.

        Parameters
        ----------
        blob : bytes
        scale : float
        n_bins, n_frames : int

        Returns
        -------
        spectrum : np.ndarray [shape=(n_bins, n_frames), dtype=float32]

        Raises
        ------
        ValueError
            See :meth:`codes` and :meth:`levels`.
        """
        return self.levels(scale)[self.codes(blob, n_bins, n_frames)]


def _check_row(blob: object, n_bins: int, n_frames: int) -> None:
    """Raise ``ValueError`` unless a row holds bytes for a spectrum of some frames."""
    if not isinstance(blob, bytes):
        raise ValueError(f"stored spectrum is a {type(blob).__name__}, not bytes")
    if n_bins <= 0 or n_frames <= 0:
        raise ValueError(f"a stored spectrum of {n_bins} bins by {n_frames} frames is empty")


#: First bytes of a tiled spectrum, then the frames per tile, the number of tiles and each
#: tile's length in bytes (unsigned 32-bit little-endian integers), then the tiles.
_TILES_MAGIC = b"TJLS"
_TILES_HEADER = struct.Struct("<4sII")
#: Bytes of a tile read for its image header (start of image, frame header, parameters).
_TILE_HEADER_BYTES = 256


@dataclass(frozen=True)
class PackedTiles:
    """A spectrum stored as JPEG-LS tiles of frames, each decoded when asked for.

    Attributes
    ----------
    blob : bytes
    n_bins, n_frames : int
        The whole spectrum's shape.
    tile_frames : int
        Frames of every tile but the last (which holds what is left).
    bounds : tuple of int
        Byte offsets of the tiles in ``blob``, and of its end.
    """

    blob: bytes
    n_bins: int
    n_frames: int
    tile_frames: int
    bounds: tuple[int, ...]

    @classmethod
    def parse(cls, blob: bytes, n_bins: int, n_frames: int) -> PackedTiles:
        """Read the table of tiles of ``blob`` and check it, and every tile's image header,
        against the row's shape (before anything is allocated for it).

        Parameters
        ----------
        blob : bytes
        n_bins, n_frames : int
            The spectrum's shape, as its row records it.

        Returns
        -------
        tiles : PackedTiles

        Raises
        ------
        ValueError
            If the table or a tile's header is damaged or describes another shape.
        """
        if len(blob) < _TILES_HEADER.size:
            raise ValueError("stored spectrum is damaged (too short for its table of tiles)")
        magic, tile_frames, count = _TILES_HEADER.unpack_from(blob)
        if magic != _TILES_MAGIC or tile_frames == 0:
            raise ValueError("stored spectrum is damaged (no table of tiles)")
        expected = -(-n_frames // tile_frames)
        if count != expected:
            raise ValueError(
                f"stored spectrum is damaged ({count} tiles of {tile_frames} frames, "
                f"its row has {n_frames} frames)"
            )
        table_end = _TILES_HEADER.size + 4 * count
        if len(blob) < table_end:
            raise ValueError("stored spectrum is damaged (its table of tiles is cut short)")
        lengths = np.frombuffer(blob, dtype="<u4", count=count, offset=_TILES_HEADER.size)
        bounds = table_end + np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        if bounds[-1] != len(blob):
            raise ValueError(
                f"stored spectrum is damaged (its tiles add up to {int(bounds[-1])} bytes, "
                f"it has {len(blob)})"
            )
        tiles = cls(blob, n_bins, n_frames, tile_frames, tuple(int(b) for b in bounds))
        for tile in range(count):  # a header each: at most one per four bytes of the blob
            first, stop = tiles.frame_range(tile)
            start = tiles.bounds[tile]  # the headers come first: a few dozen bytes
            header = blob[start : min(start + _TILE_HEADER_BYTES, tiles.bounds[tile + 1])]
            if _jpegls_frame_shape(header) != (n_bins, stop - first):
                raise ValueError(
                    f"stored spectrum is damaged (tile {tile} is not {n_bins} bins by "
                    f"{stop - first} frames)"
                )
        return tiles

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.bounds) - 1

    def frame_range(self, tile: int) -> tuple[int, int]:
        """First frame and stop of one tile.

        Parameters
        ----------
        tile : int
            From 0 to ``count - 1``.

        Returns
        -------
        first, stop : int
            Half-open range of the spectrum's frames.
        """
        first = tile * self.tile_frames
        return first, min(first + self.tile_frames, self.n_frames)

    def codes(self, tile: int) -> np.ndarray:
        """The codes of one tile.

        Parameters
        ----------
        tile : int
            From 0 to ``count - 1``.

        Returns
        -------
        codes : np.ndarray [shape=(n_bins, frames of the tile), dtype=uint8]
            Read-only.

        Raises
        ------
        ValueError
            If the tile is damaged.
        """
        first, stop = self.frame_range(tile)
        part = self.blob[self.bounds[tile] : self.bounds[tile + 1]]
        return _jpegls_codes(part, self.n_bins, stop - first)

    def all_codes(self) -> np.ndarray:
        """The codes of every tile, side by side.

        Returns
        -------
        codes : np.ndarray [shape=(n_bins, n_frames), dtype=uint8]
            Read-only.

        Raises
        ------
        ValueError
            If a tile is damaged.
        """
        codes = np.concatenate([self.codes(tile) for tile in range(self.count)], axis=1)
        codes.flags.writeable = False  # as every codec's codes are: the kernels compiled for them
        return codes


def _jpegls_image(codes: np.ndarray, name: str) -> bytes:
    """Codes packed as one JPEG-LS image (by codec ``name``, for its errors)."""
    import imagecodecs  # only where JPEG-LS is read or written (40 ms to import)

    try:
        blob = bytes(imagecodecs.jpegls_encode(codes))
    except Exception as exc:  # CharLS reports each failure as its own error type
        raise ValueError(f"{name} cannot pack these codes ({exc})") from exc
    if _jpegls_frame_shape(blob) != codes.shape:
        raise ValueError(f"{name} packed {codes.shape} codes unreadably")
    return blob


def _packed_tiles(codes: np.ndarray, name: str) -> bytes:
    """Codes packed as :data:`TILE_FRAMES`-frame JPEG-LS tiles behind their table."""
    n_frames = codes.shape[1]
    tiles = [
        _jpegls_image(np.ascontiguousarray(codes[:, first : first + TILE_FRAMES]), name)
        for first in range(0, n_frames, TILE_FRAMES)
    ]
    lengths = np.array([len(t) for t in tiles], dtype="<u4").tobytes()
    header = _TILES_HEADER.pack(_TILES_MAGIC, TILE_FRAMES, len(tiles))
    return b"".join([header, lengths, *tiles])


def _jpegls_codes(blob: bytes, n_bins: int, n_frames: int) -> np.ndarray:
    """Codes of a JPEG-LS packed spectrum, checked against the row's shape before any of
    it is decoded (the frame header's size bounds what decoding allocates)."""
    shape = _jpegls_frame_shape(blob)
    if shape is None:
        raise ValueError("stored spectrum is damaged (no JPEG-LS image header)")
    if shape != (n_bins, n_frames):
        raise ValueError(
            f"stored spectrum is damaged (it declares {shape}, its row {(n_bins, n_frames)})"
        )
    if not blob.endswith(_EOI):  # cut short: CharLS would search past the end for seconds
        raise ValueError("stored spectrum is damaged (its JPEG-LS image is cut short)")
    import imagecodecs

    try:
        codes = imagecodecs.jpegls_decode(blob)
    except MemoryError:  # the machine, not the row
        raise
    except Exception as exc:  # CharLS reports every damage as its own error type
        raise ValueError(f"stored spectrum is damaged ({exc})") from exc
    if codes.dtype != np.uint8 or codes.shape != (n_bins, n_frames):
        raise ValueError(f"stored spectrum is damaged (decoded {codes.dtype} {codes.shape})")
    codes.flags.writeable = False  # as every codec's codes are: the kernels compiled for them
    return codes


#: JPEG-LS markers: frame header (SOF55), parameters (LSE), start of scan, end of image.
_SOF55, _LSE, _SOS, _EOI = 0xF7, 0xF8, 0xDA, b"\xff\xd9"
#: LSE parameter set giving the size of an image over 65,535 rows or columns.
_OVERSIZE = 4


def _jpegls_frame_shape(blob: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` a JPEG-LS stream declares for its one component of 8 bits at
    most, ``None`` when its headers declare no such image before its scan. An image over
    65,535 columns (frames) declares 0 there and its size in an oversize LSE segment."""
    if blob[:2] != b"\xff\xd8":
        return None
    at, shape = 2, None
    while at + 4 <= len(blob):
        if blob[at] != 0xFF:
            return None
        marker, length = blob[at + 1], int.from_bytes(blob[at + 2 : at + 4], "big")
        if length < 2:
            return None
        body = blob[at + 4 : at + 2 + length]
        if marker == _SOS:
            return shape if shape is not None and 0 not in shape else None
        if marker == _SOF55:
            if shape is not None or len(body) < 6 or body[0] > 8 or body[5] != 1:
                return None
            shape = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
        elif marker == _LSE and body[:1] == bytes([_OVERSIZE]):
            width = body[1] if len(body) > 1 else 0
            if shape != (0, 0) or width not in (2, 3, 4) or len(body) < 2 + 2 * width:
                return None
            shape = (int.from_bytes(body[2 : 2 + width], "big"),
                     int.from_bytes(body[2 + width : 2 + 2 * width], "big"))  # fmt: skip
        at += 2 + length
    return None


@functools.lru_cache(maxsize=4096)
def _levels(codec: SpectrumCodec, scale: float) -> np.ndarray:
    codes = np.minimum(np.arange(256, dtype=np.float32), np.float32(codec.top_code))
    if codec.exponent == 1.0:
        # the arithmetic of the first catalogues, bit for bit: code * (scale / top)
        table = codes * np.float32(scale / codec.top_code)
    else:
        relative = (codes / np.float32(codec.top_code)) ** np.float32(1.0 / codec.exponent)
        table = (relative * np.float32(scale)).astype(np.float32)
    table.flags.writeable = False
    return table


#: Linear 8-bit codes, uncompressed: the first catalogues' format.
LEGACY_CODEC = SpectrumCodec("u8", bits=8, exponent=1.0, packing="")
_NAME = re.compile(r"^b([1-8])e(0\.[0-9]{1,3}|1\.0)([zjt]?)$")


def compact_codec(bits: int, exponent: float, packing: str = "j") -> SpectrumCodec:
    """The codec of ``bits`` bits and companding ``exponent``, packed as ``packing`` says.

    Parameters
    ----------
    bits : int
        1 to 8.
    exponent : float
        In (0, 1], three decimals at most.
    packing : str
        ``"j"`` (JPEG-LS), ``"t"`` (JPEG-LS tiles) or ``"z"`` (Zstandard).

    Returns
    -------
    codec : SpectrumCodec
    """
    written = f"{exponent:.3g}" if exponent != 1.0 else "1.0"
    return codec_named(f"b{bits}e{written}{packing}")


def codec_named(name: str) -> SpectrumCodec:
    """The codec a stored row names.

    Parameters
    ----------
    name : str
        ``u8``, or ``b{bits}e{exponent}`` and its packing (``b5e0.7j``, ``b5e0.7t``,
        ``b5e0.7z``).

    Returns
    -------
    codec : SpectrumCodec

    Raises
    ------
    ValueError
        If the name is no codec's (a catalogue written by a later tunetrace, or damaged).
    """
    if name == LEGACY_CODEC.name:
        return LEGACY_CODEC
    match = _NAME.match(name) if isinstance(name, str) else None
    if match is None or float(match.group(2)) <= 0:
        raise ValueError(f"spectra stored as {name!r}, which this tunetrace cannot read")
    bits, exponent, packing = match.groups()
    return SpectrumCodec(name, int(bits), float(exponent), packing)


#: What new references are stored with (bits and exponent chosen on the calibration split,
#: packing on bytes per hour and on what a query costs to read: docs/benchmarks.md).
COMPACT_CODEC = compact_codec(5, 0.7, "t")
