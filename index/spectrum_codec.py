"""How a reference's log-frequency spectrum is stored: companded codes, entropy coded.

Verification compares whitened, blurred spectra and needs their shape, not 8 bits of every
bin. A codec maps each value ``v`` of a spectrum whose largest value is ``scale`` to the code
``round((v / scale) ** exponent * (2 ** bits - 1))``: an exponent below one spends more codes
on the quiet bins, where most of a spectrum lies. The codes, one byte each, are then
compressed with Zstandard, which turns their few distinct values and their runs into a
fraction of a byte each.

Every stored row names its codec (``b5e0.7z``: 5 bits, exponent 0.7, Zstandard), so
catalogues written before the compact codec existed (``u8``: linear 8-bit codes,
uncompressed) stay readable and can be rewritten row by row.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import zstandard

#: Zstandard level of stored spectra: past it, smaller blobs cost much more time to write.
ZSTD_LEVEL = 9


@dataclass(frozen=True)
class SpectrumCodec:
    """One way of storing a spectrum.

    Attributes
    ----------
    name : str
        Recorded with every row stored this way.
    bits : int
        Bits of information per code (``2 ** bits`` levels, one byte each before compression).
    exponent : float
        Companding exponent (1: linear).
    compressed : bool
        Whether the codes are Zstandard compressed.
    """

    name: str
    bits: int
    exponent: float
    compressed: bool

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
            The codes, bins first, compressed if the codec compresses.
        scale : float
            The value of the top code.
        """
        spectrum = np.asarray(spectrum, dtype=np.float32)
        scale = float(max(spectrum.max(initial=0.0), 1e-6))
        relative = np.clip(spectrum / np.float32(scale), 0.0, 1.0)
        if self.exponent != 1.0:
            relative = relative ** np.float32(self.exponent)
        codes = np.round(relative * np.float32(self.top_code)).astype(np.uint8)
        raw = np.ascontiguousarray(codes).tobytes()
        if self.compressed:
            return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw), scale
        return raw, scale

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
        if not isinstance(blob, bytes):
            raise ValueError(f"stored spectrum is a {type(blob).__name__}, not bytes")
        size = n_bins * n_frames
        if size <= 0:
            raise ValueError(f"a stored spectrum of {n_frames} frames is empty")
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
LEGACY_CODEC = SpectrumCodec("u8", bits=8, exponent=1.0, compressed=False)
_NAME = re.compile(r"^b([1-8])e(0\.[0-9]{1,3}|1\.0)(z?)$")


def compact_codec(bits: int, exponent: float) -> SpectrumCodec:
    """The Zstandard-compressed codec of ``bits`` bits and companding ``exponent``.

    Parameters
    ----------
    bits : int
        1 to 8.
    exponent : float
        In (0, 1], three decimals at most.

    Returns
    -------
    codec : SpectrumCodec
    """
    return codec_named(f"b{bits}e{exponent:.3g}z" if exponent != 1.0 else f"b{bits}e1.0z")


def codec_named(name: str) -> SpectrumCodec:
    """The codec a stored row names.

    Parameters
    ----------
    name : str
        ``u8``, or ``b{bits}e{exponent}`` with ``z`` when compressed (``b5e0.7z``).

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
    bits, exponent, compressed = match.groups()
    return SpectrumCodec(name, int(bits), float(exponent), bool(compressed))


#: What new references are stored with (chosen on the calibration split: docs/benchmarks.md).
COMPACT_CODEC = compact_codec(5, 0.7)
