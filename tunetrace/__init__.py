"""tunetrace: find tempo-, pitch- and speed-altered copies of known music."""

from __future__ import annotations

__version__ = "0.1.0"
