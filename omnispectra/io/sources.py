"""Paths -> files, and the rules every reader's caller shares.

The one owner of: path expansion (files, directories walked, glob patterns), the spectrum
file suffixes, the one rule for bad paths, reading a file under the reader lock, and the
id rule. Every entry point that takes paths (the API's inputs, the CLI, ``corpus build``,
:func:`iter_spectra`) comes through here, so one folder gives the same files everywhere:

* **Expansion.** Files are used as named (whatever their suffix); directories are walked
  (sorted, hidden entries ignored, iteratively: a tree of any depth) for files ending in
  one of :data:`SPECTRUM_FILE_SUFFIXES`; glob patterns are expanded. A path given twice
  is read once.
* **One rule for bad paths: report and go on.** A missing path, a broken symbolic link,
  a special file (FIFO, socket, device: never opened, so never a hang), a file or folder
  that cannot be read (permission): each becomes a :class:`PathProblem` naming the path,
  which the caller reports (and raises under ``on_error="raise"``).
* **Ids.** A spectrum's id is its reader's (survey-native) ``meta['id']``, else
  :func:`default_id` (``<file stem>:<k>``). Ids are unique within one call: when a
  second *file* yields an id already taken (``A/spec.fits`` and ``B/spec.fits``), the id
  is prefixed with as many parent folder names as make it unique (``B/spec``)
  (:class:`IdAllocator`).
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import NotASpectrumError, SpectrumFormatError
from ._common import file_stem

logger = logging.getLogger(__name__)

__all__ = [
    "SPECTRUM_FILE_SUFFIXES",
    "ON_ERROR",
    "check_on_error",
    "PathProblem",
    "check_readable_file",
    "expand_paths",
    "expand_sources",
    "names_file",
    "read_file",
    "default_id",
    "IdAllocator",
    "ReadFailure",
    "SpectrumReadWarning",
    "SpectrumIterator",
    "iter_spectra",
]

#: File suffixes picked up when a directory is walked (case-insensitive). Files named
#: explicitly are read whatever their suffix.
SPECTRUM_FILE_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz",
                          ".fits.fz", ".fits.bz2", ".hdf5", ".h5", ".hdf", ".he5")

#: Accepted values of ``on_error``.
ON_ERROR = ("raise", "skip", "warn")


class SpectrumReadWarning(UserWarning):
    """Emitted with ``on_error='warn'`` for each input that was skipped."""


def check_on_error(on_error: str) -> None:
    """ValueError unless ``on_error`` is one of :data:`ON_ERROR`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


def default_id(path: str | os.PathLike | None, k: int | str) -> str:
    """The id of a spectrum whose reader gives none.

    ``<file stem>:<k>`` for the ``k``-th spectrum of a file; ``<k>`` (its position among
    the inputs) for an in-memory spectrum (``path`` None).
    """
    return str(k) if path is None else f"{file_stem(path)}:{k}"


# ---------------------------------------------------------------------------------------
# paths


@dataclass(frozen=True)
class PathProblem:
    """A path that cannot be read, found while expanding the inputs."""

    path: Path
    reason: str
    #: a file a folder walk passed over on purpose (reported, never raised)
    passed_over: bool = False

    def error(self) -> SpectrumFormatError:
        """The error this problem raises under ``on_error='raise'``."""
        return SpectrumFormatError(f"{self.path}: {self.reason}")


def _ascii_suffixes() -> tuple[str, ...]:
    from .tables import ASCII_GZ_SUFFIXES, ASCII_SUFFIXES

    return ASCII_SUFFIXES + ASCII_GZ_SUFFIXES


def _has_spectral_suffix(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in SPECTRUM_FILE_SUFFIXES)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None (it is a readable regular file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "file not found"
    except PermissionError:
        return "permission denied"
    except OSError as err:
        return f"cannot be accessed ({err.strerror or err})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a spectrum file"
    if not stat.S_ISREG(st.st_mode):
        mode = st.st_mode
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
        return f"is {kind}, not a regular file; not opened"
    if not os.access(path, os.R_OK):
        return "permission denied (not readable)"
    return None


def check_readable_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a readable regular file, else SpectrumFormatError.

    Special files (FIFOs, sockets, devices) are refused without being opened.
    """
    path = Path(path)
    problem = _file_problem(path)
    if problem is not None:
        raise SpectrumFormatError(f"{path}: {problem}")
    return path


def _list_dir(folder: Path) -> tuple[list[str], list[str]]:
    """``(sub-folder names, file names)`` in ``folder``, each sorted, hidden entries left out.

    As :func:`os.walk` does: a link to a folder counts as a folder but is not walked into
    (never a loop); anything else, broken links included, counts as a file.
    """
    dirs, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir and not entry.is_symlink() else files if not is_dir else []).append(entry.name)
    return sorted(dirs), sorted(files)


def _walk(root: Path) -> Iterator[Path | PathProblem]:
    """Spectrum files under ``root`` (sorted, hidden entries skipped) and the problems met.

    Top-down and depth-first like :func:`os.walk`, but with an explicit stack, so a tree of
    any depth is walked (os.walk recurses and fails on a few thousand levels).
    """
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            dirs, files = _list_dir(here)
        except OSError as err:
            yield PathProblem(here, f"folder cannot be read ({err.strerror or err})")
            continue
        for name in files:
            if _has_spectral_suffix(name):
                path = here / name
                problem = _file_problem(path)
                yield path if problem is None else PathProblem(path, problem)
            elif name.lower().endswith(_ascii_suffixes()):
                yield PathProblem(here / name, "an ASCII table found in a folder is not read (folders "
                                  "often hold catalogues and index files): name it to read it", True)
        stack.extend(here / name for name in reversed(dirs))


def expand_paths(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path | PathProblem]:
    """Files named by ``sources`` (files, directories walked recursively, glob patterns).

    Returns, in order, every file to read and a :class:`PathProblem` for every path that
    cannot be read (missing, broken link, special file, unreadable file or folder, a glob
    that matches nothing). A file reached twice is listed once.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Path | PathProblem] = []
    seen: set[str] = set()

    def add(entry: Path | PathProblem) -> None:
        path = entry.path if isinstance(entry, PathProblem) else entry
        key = os.path.realpath(path) if os.path.exists(path) else str(path)
        if key not in seen:
            seen.add(key)
            out.append(entry)

    def add_path(path: Path) -> None:
        if path.is_dir():
            for entry in _walk(path):
                add(entry)
        else:
            problem = _file_problem(path)
            add(path if problem is None else PathProblem(path, problem))

    for src in sources:
        text = os.fspath(src)
        path = Path(text).expanduser()
        if not os.path.lexists(path) and _glob.has_magic(text):
            matches = sorted(_glob.glob(str(path), recursive=True))
            if not matches:
                add(PathProblem(path, "no file matches this pattern"))
            for match in matches:
                add_path(Path(match))
        else:
            add_path(path)
    return out


def names_file(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a file itself (not a folder to walk nor a glob pattern).

    A known non-spectrum file met while walking a folder is skipped quietly; one named
    explicitly is an error.
    """
    text = os.fspath(source)
    return not Path(text).is_dir() and not (_glob.has_magic(text) and not os.path.lexists(text))


def expand_sources(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The paths of :func:`expand_paths`, problems included as their paths (reading them
    reports the problem). Kept for code written against ``omnispectra.io.registry``."""
    return [e.path if isinstance(e, PathProblem) else e for e in expand_paths(sources)]


#: Readers use warnings.catch_warnings(), which saves and restores the process-global
#: warning filters: two threads doing so at once can leave the filters changed for good.
#: Reading threads therefore read one file at a time (tokenizing runs in parallel).
_READ_LOCK = threading.Lock()


def read_file(path: Path, format: str | None, **kwargs: Any):
    """:func:`omnispectra.io.read` of one checked file, under the reader lock."""
    from .registry import read

    check_readable_file(path)
    with _READ_LOCK:
        return read(path, format=format, **kwargs)


# ---------------------------------------------------------------------------------------
# many files -> spectra (the iterator behind omnispectra.io.iter_spectra)


@dataclass
class ReadFailure:
    """One file :func:`iter_spectra` could not read."""

    path: Path
    error: Exception

    def __str__(self) -> str:
        return f"{self.path}: {type(self.error).__name__}: {self.error}"


class SpectrumIterator:
    """Iterable of spectra from many files, with a record of what failed.

    Attributes
    ----------
    files : list of Path
        Every file considered, in order (problem paths included); filled while iterating,
        as are the others.
    failures : list of ReadFailure
        Files that raised (``on_error`` 'warn'/'skip').
    not_spectra : list of ReadFailure
        Files that are known non-spectra (:class:`NotASpectrumError`: redrock files,
        catalogues, ...) when ``skip_non_spectra`` is True.
    passed_over : list of PathProblem
        ASCII tables met while walking a folder: named, not read (name a file to read it).
    skipped_rows : list of (Path, str)
        Invalid rows/arms skipped inside files that were otherwise read (e.g. all-zero-ivar
        sky fibres of a DESI coadd).
    n_files_read, n_spectra : int
        Files read and spectra returned so far.
    """

    def __init__(self, sources, format=None, on_error="raise", skip_non_spectra=True,
                 callback: Callable[[ReadFailure], None] | None = None, **kwargs):
        check_on_error(on_error)
        self._entries = expand_paths(sources)
        self.files = [e.path if isinstance(e, PathProblem) else e for e in self._entries]
        self.format = format
        self.on_error = on_error
        self.skip_non_spectra = skip_non_spectra
        self.callback = callback
        self.kwargs = kwargs
        self.failures: list[ReadFailure] = []
        self.passed_over: list[PathProblem] = []  # ASCII tables met in a folder walk
        self.not_spectra: list[ReadFailure] = []
        self.skipped_rows: list[tuple[Path, str]] = []
        self.n_files_read = 0
        self.n_spectra = 0

    def __iter__(self) -> Iterator:
        for entry in self._entries:
            if isinstance(entry, PathProblem) and entry.passed_over:
                self.passed_over.append(entry)
                continue
            if isinstance(entry, PathProblem):
                self._fail(entry.path, entry.error())
                continue
            try:
                spectra = read_file(entry, self.format, **self.kwargs)
            except NotASpectrumError as exc:
                if self.skip_non_spectra:
                    self.not_spectra.append(ReadFailure(entry, exc))
                    continue
                self._fail(entry, exc)
                continue
            except Exception as exc:
                self._fail(entry, exc)
                continue
            self.n_files_read += 1
            self.skipped_rows.extend((entry, msg) for msg in getattr(spectra, "skipped", ()))
            for spec in spectra:
                self.n_spectra += 1
                yield spec

    def _fail(self, path: Path, exc: Exception) -> None:
        failure = ReadFailure(path, exc)
        if self.on_error == "raise":
            raise exc
        self.failures.append(failure)
        if self.callback is not None:
            self.callback(failure)
        if self.on_error == "warn":
            warnings.warn(str(failure), SpectrumReadWarning, stacklevel=3)

    def summary(self) -> str:
        """One line: files read, spectra, failures, non-spectrum files skipped."""
        return (f"{self.n_files_read} files read, {self.n_spectra} spectra, "
                f"{len(self.failures)} failed, {len(self.not_spectra)} non-spectrum files skipped, "
                f"{len(self.skipped_rows)} invalid rows skipped inside files")


def iter_spectra(sources, format: str | None = None, on_error: str = "raise", *,
                 skip_non_spectra: bool = True,
                 callback: Callable[[ReadFailure], None] | None = None,
                 **kwargs: Any) -> SpectrumIterator:
    """Spectra from files, directories (recursive, :data:`SPECTRUM_FILE_SUFFIXES`) and glob
    patterns, in sorted order.

    Returns a :class:`SpectrumIterator`: iterate it for the spectra; afterwards its
    ``failures`` (``[ReadFailure(path, error), ...]``), ``not_spectra``, ``n_files_read``
    and ``n_spectra`` say what happened. ``on_error='raise'`` re-raises the first error;
    ``'warn'`` emits a :class:`SpectrumReadWarning` per failed file and goes on; ``'skip'``
    goes on silently. ``callback(failure)`` is called for each failure in both modes.
    Missing paths, broken links, special files and unreadable files or folders are
    failures too (see the module docstring). Known non-spectrum files
    (:class:`NotASpectrumError`) are recorded in ``not_spectra`` and skipped unless
    ``skip_non_spectra=False`` (then they count as failures).
    """
    return SpectrumIterator(sources, format=format, on_error=on_error,
                            skip_non_spectra=skip_non_spectra, callback=callback, **kwargs)



# ---------------------------------------------------------------------------------------
# ids


class IdAllocator:
    """Unique ids within one call (see the module docstring)."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}
        self._given: set[tuple[str, str]] = set()

    def seen(self, sid: str, source: str) -> bool:
        """Whether ``sid`` was already given to a spectrum of ``source`` (a true duplicate)."""
        return (sid, source) in self._given

    def assign(self, sid: str, source: str) -> str:
        """``sid`` if free, else an id prefixed with ``source``'s parent folders (``B/spec``)
        or suffixed ``#2``, ``#3`` ... until unique."""
        self._given.add((sid, source))
        owner = self._owner.get(sid)
        if owner is None:
            self._owner[sid] = source
            return sid
        in_file = owner != source and not source.startswith("input ")
        parents = Path(source).parent.parts[::-1] if in_file else ()
        candidate = sid
        for part in parents:
            candidate = f"{part}/{candidate}"
            if candidate not in self._owner:
                break
        k = 2
        base = candidate
        while candidate in self._owner:
            candidate = f"{base}#{k}"
            k += 1
        self._owner[candidate] = source
        return candidate
