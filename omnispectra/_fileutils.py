"""Deprecated location of :func:`omnispectra.fileio.default_file_mode` (kept for old imports)."""

from .fileio import default_file_mode

__all__ = ["default_file_mode"]
