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

    def codes(self, blob: bytes, n_bins: int) -> np.ndarray:
        """The codes of a stored spectrum, shape ``(n_bins, n_frames)``, uint8.

        Raises
        ------
        ValueError
            If the blob is not a spectrum of ``n_bins`` bins stored by this codec.
        """
        if self.compressed:
            try:
                raw = zstandard.ZstdDecompressor().decompress(blob)
            except zstandard.ZstdError as exc:
                raise ValueError(f"stored spectrum is damaged ({exc})") from exc
        else:
            raw = blob
        if len(raw) == 0 or len(raw) % n_bins:
            raise ValueError(f"stored spectrum of {len(raw)} codes is not {n_bins} bins wide")
        return np.frombuffer(raw, dtype=np.uint8).reshape(n_bins, -1)

    def levels(self, scale: float) -> np.ndarray:
        """The value of every byte code, shape ``(256,)``, float32 (codes past the top
        code, which this codec never writes, are ``scale``)."""
        return _levels(self, float(scale))

    def decode(self, blob: bytes, scale: float, n_bins: int) -> np.ndarray:
        """Inverse of :meth:`encode` (to the codec's precision), shape ``(n_bins, n_frames)``,
        float32."""
        return self.levels(scale)[self.codes(blob, n_bins)]


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
    """The Zstandard-compressed codec of ``bits`` bits and companding ``exponent``."""
    return codec_named(f"b{bits}e{exponent:.3g}z" if exponent != 1.0 else f"b{bits}e1.0z")


def codec_named(name: str) -> SpectrumCodec:
    """The codec a stored row names.

    Raises
    ------
    ValueError
        If the name is no codec's (a catalogue written by a later tunetrace, or damaged).
    """
    if name == LEGACY_CODEC.name:
        return LEGACY_CODEC
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"spectra stored as {name!r}, which this tunetrace cannot read")
    bits, exponent, compressed = match.groups()
    return SpectrumCodec(name, int(bits), float(exponent), bool(compressed))


#: What new references are stored with (chosen on the calibration split: docs/benchmarks.md).
COMPACT_CODEC = compact_codec(5, 0.7)
