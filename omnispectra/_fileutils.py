"""Small file helpers shared by the writers of weights, checkpoints and corpora."""

from __future__ import annotations

import os

__all__ = ["default_file_mode"]


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask.

    ``tempfile.mkstemp`` creates files readable by their owner only; files written
    through a temporary name and renamed into place get this mode first.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
