"""Paths and objects -> spectra: one expansion, one suffix list, one skip rule, unique ids.

Every entry point that takes "spectra" (the API verbs, the CLI, ``corpus build``,
:func:`omnispectra.io.iter_spectra`) expands its inputs here, so one folder gives the same
files everywhere and a bad path is treated the same way everywhere:

* **Expansion.** Files are used as named (whatever their suffix); directories are walked
  recursively (sorted, hidden entries ignored) for files ending in one of
  :data:`SPECTRUM_FILE_SUFFIXES`; glob patterns are expanded. A path given twice is read
  once.
* **One rule for bad paths: report and go on.** A missing path, a broken symbolic link,
  a special file (FIFO, socket, device: never opened, so never a hang), a file or folder
  that cannot be read (permission), a corrupt or truncated file: each becomes one
  :class:`Skipped` record ``(source, reason)`` naming the path with its suffix. Under
  ``on_error="raise"`` the first one raises instead (a typed
  :class:`~omnispectra.exceptions.OmniSpectraError`).
* **Ids.** A spectrum's id is its reader's (survey-native) ``meta['id']``, else
  ``<file stem>:<k>`` for files and the input position for in-memory spectra. Ids are
  unique within one call: when a second *file* yields an id already taken (e.g.
  ``A/spec.fits`` and ``B/spec.fits``), the id is prefixed with as many parent folder
  names as make it unique (``B/spec``) (:class:`IdAllocator`).
* **Counts add up**: ``n_read + len(skipped) == n_inputs``, where an input is a spectrum
  that was read or a path/spectrum that could not be.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import stat
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import NotASpectrumError, OmniSpectraError, SpectrumFormatError, SpectrumTypeError
from .spectrum import is_spectrum, is_spectrum_list

logger = logging.getLogger(__name__)

__all__ = [
    "SPECTRUM_FILE_SUFFIXES",
    "ON_ERROR",
    "Skipped",
    "InputItem",
    "Inputs",
    "IdAllocator",
    "PathProblem",
    "check_readable_file",
    "expand_paths",
    "expand_sources",
    "ReadFailure",
    "SpectrumReadWarning",
    "SpectrumIterator",
    "iter_spectra",
    "is_single_spectrum",
]

#: File suffixes picked up when a directory is walked (case-insensitive). Files named
#: explicitly are read whatever their suffix.
SPECTRUM_FILE_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz",
                          ".fits.fz", ".fits.bz2", ".hdf5", ".h5", ".hdf", ".he5")

#: Accepted values of ``on_error``.
ON_ERROR = ("raise", "skip", "warn")


class SpectrumReadWarning(UserWarning):
    """Emitted with ``on_error='warn'`` for each input that was skipped."""


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


# ---------------------------------------------------------------------------------------
# paths


@dataclass(frozen=True)
class PathProblem:
    """A path that cannot be read, found while expanding the inputs."""

    path: Path
    reason: str

    def error(self) -> SpectrumFormatError:
        """The error this problem raises under ``on_error='raise'``."""
        return SpectrumFormatError(f"{self.path}: {self.reason}")


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


def _walk(root: Path) -> Iterator[Path | PathProblem]:
    """Spectrum files under ``root`` (sorted, hidden entries skipped) and the problems met."""
    problems: list[PathProblem] = []

    def onerror(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        problems.append(PathProblem(where, f"folder cannot be read ({err.strerror or err})"))

    for here, dirs, files in os.walk(root, onerror=onerror):
        yield from problems
        problems.clear()
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not _has_spectral_suffix(name):
                continue
            path = Path(here) / name
            problem = _file_problem(path)
            yield path if problem is None else PathProblem(path, problem)
    yield from problems


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


def expand_sources(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The paths of :func:`expand_paths`, problems included as their paths (reading them
    reports the problem). Kept for code written against ``omnispectra.io.registry``."""
    return [e.path if isinstance(e, PathProblem) else e for e in expand_paths(sources)]


#: Readers use warnings.catch_warnings(), which saves and restores the process-global
#: warning filters: two threads doing so at once can leave the filters changed for good.
#: Reading threads therefore read one file at a time (tokenizing runs in parallel).
_READ_LOCK = threading.Lock()


def _read_file(path: Path, format: str | None, **kwargs: Any):
    from . import io

    check_readable_file(path)
    with _READ_LOCK:
        return io.read(path, format=format, **kwargs)


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

    Attributes (filled while iterating)
    ----------
    files : list of Path -- every file considered, in order (problem paths included).
    failures : list of ReadFailure -- files that raised (``on_error`` 'warn'/'skip').
    not_spectra : list of ReadFailure -- files that are known non-spectra
        (:class:`NotASpectrumError`: redrock files, catalogues, ...) when
        ``skip_non_spectra`` is True.
    skipped_rows : list of (Path, str) -- invalid rows/arms skipped inside files
        that were otherwise read (e.g. all-zero-ivar sky fibres of a DESI coadd).
    n_files_read, n_spectra : int
    """

    def __init__(self, sources, format=None, on_error="raise", skip_non_spectra=True,
                 callback: Callable[[ReadFailure], None] | None = None, **kwargs):
        _check_on_error(on_error)
        self._entries = expand_paths(sources)
        self.files = [e.path if isinstance(e, PathProblem) else e for e in self._entries]
        self.format = format
        self.on_error = on_error
        self.skip_non_spectra = skip_non_spectra
        self.callback = callback
        self.kwargs = kwargs
        self.failures: list[ReadFailure] = []
        self.not_spectra: list[ReadFailure] = []
        self.skipped_rows: list[tuple[Path, str]] = []
        self.n_files_read = 0
        self.n_spectra = 0

    def __iter__(self) -> Iterator:
        for entry in self._entries:
            if isinstance(entry, PathProblem):
                self._fail(entry.path, entry.error())
                continue
            try:
                spectra = _read_file(entry, self.format, **self.kwargs)
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
# the API's inputs: spectra, arrays, Tokens, SpectrumLists, paths -> ordered items


@dataclass
class Skipped:
    """An input that was left out, and why."""

    source: str  # the file path (with its suffix) or "input <position>"
    reason: str
    id: str | None = None  # the spectrum's id when it was read but could not be used
    error: BaseException | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, str]:
        """``{source, reason[, id]}`` (what result tables store in ``meta['skipped']``)."""
        out = {"source": self.source, "reason": self.reason}
        if self.id is not None:
            out["id"] = self.id
        return out

    def __str__(self) -> str:
        name = self.source if self.id is None or self.id == self.source else f"{self.source} [{self.id}]"
        return f"{name}: {self.reason}"


@dataclass
class InputItem:
    """One spectrum on its way to the model."""

    id: str
    spectrum: Any  # a 1-D Spectrum, a (wavelength, flux[, ivar]) tuple or Tokens
    source: str  # the file it came from, or "input <position>"
    survey: str = ""
    prepared: Any = None  # what the prepare callable returned (e.g. Tokens)


def _is_arraylike(obj: Any) -> bool:
    import numbers

    import numpy as np
    from astropy import units as u

    if isinstance(obj, (np.ndarray, u.Quantity)):
        return True
    return isinstance(obj, list) and len(obj) > 0 and isinstance(obj[0], numbers.Number)


def is_single_spectrum(obj: Any) -> bool:
    """One spectrum: a 1-D Spectrum, Tokens or a ``(wavelength, flux[, ivar])`` tuple."""
    from .tokenizer import Tokens

    if isinstance(obj, Tokens):
        return True
    if is_spectrum(obj):
        return getattr(obj.flux, "ndim", 1) == 1
    return isinstance(obj, tuple) and len(obj) in (2, 3) and _is_arraylike(obj[0])


def _meta_id(obj: Any) -> str | None:
    meta = getattr(obj, "meta", None)
    sid = meta.get("id") if isinstance(meta, dict) else None
    return None if sid is None or str(sid) == "" else str(sid)


def _survey(obj: Any) -> str:
    meta = getattr(obj, "meta", None)
    return str(meta.get("survey", "")) if isinstance(meta, dict) else ""


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


class _Unit:
    """A piece of work that yields items: reading one file, or one in-memory spectrum."""

    def __init__(self, *, path: Path | None = None, problem: PathProblem | None = None,
                 obj: Any = None, position: int | str | None = None, row_id: str | None = None,
                 explicit: bool = True) -> None:
        self.path, self.problem, self.obj = path, problem, obj
        self.position, self.row_id, self.explicit = position, row_id, explicit

    @property
    def source(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.problem is not None:
            return str(self.problem.path)
        return f"input {self.position}"

    def run(self, format: str | None, prepare: Callable[[InputItem], Any] | None) -> list:
        """Items and Skipped records of this unit (never raises an OmniSpectraError)."""
        if self.problem is not None:
            return [Skipped(self.source, self.problem.reason, error=self.problem.error())]
        if self.path is not None:
            try:
                spectra = _read_file(self.path, format)
            except (OmniSpectraError, OSError) as err:
                return [Skipped(self.source, _reason(err, self.source), error=err)]
            items = [InputItem(_meta_id(s) or f"{_stem(self.path)}:{k}", s, self.source, _survey(s))
                     for k, s in enumerate(spectra)]
        else:
            sid = self.row_id or _meta_id(self.obj) or str(self.position)
            items = [InputItem(sid, self.obj, self.source, _survey(self.obj))]
        out: list = []
        for item in items:
            if prepare is not None:
                try:
                    item.prepared = prepare(item)
                except OmniSpectraError as err:
                    out.append(Skipped(self.source, str(err), id=item.id, error=err))
                    continue
            out.append(item)
        return out


def _stem(path: Path) -> str:
    from .io import file_stem

    return file_stem(path)


def _reason(err: BaseException, source: str) -> str:
    """The error message without a leading ``<source>: `` (the record names the source)."""
    text = str(err)
    prefix = f"{source}: "
    text = text[len(prefix):] if text.startswith(prefix) else text
    if isinstance(err, NotASpectrumError):
        return f"not a spectrum ({text})"
    return text


class Inputs:
    """The spectra of an API call, in order, with the skipped inputs recorded.

    Parameters
    ----------
    spectra : spectrum, path, or iterable of them
        A 1-D ``Spectrum``/``Spectrum1D``, a ``(wavelength, flux[, ivar])`` tuple, ``Tokens``,
        a ``SpectrumList``, a 2-D ``Spectrum`` (one item per row), a file path, a
        directory, a glob pattern, or an iterable mixing these.
    format : str, optional
        Reader for files instead of auto-detection.
    on_error : {"raise", "skip", "warn"}
        What an input that cannot be read or prepared does: raise its (typed) error,
        be skipped (logged at INFO), or be skipped with a :class:`SpectrumReadWarning`.
        Known non-spectrum files found by walking a directory are always skipped.
    prepare : callable, optional
        ``prepare(item)`` run on every item (e.g. tokenization); its result is stored in
        ``item.prepared``; an :class:`OmniSpectraError` it raises skips the item. Runs in
        the reading threads when ``workers > 0``.
    workers : int or None
        Threads that read files (and prepare their spectra) ahead of the consumer, so
        reading overlaps with the model; order is kept. ``None``: 1 when files are read,
        else 0. Files are parsed one at a time (the readers' warning handling is not
        thread-safe); preparing (tokenizing) runs in parallel. ``0``: read in the calling
        thread (always so with ``on_error="warn"``: warning filters are process-global, so
        a reading thread could swallow warnings).
    callback : callable, optional
        ``callback(skipped)`` for each :class:`Skipped` record as it happens (the CLI
        prints them).

    Attributes
    ----------
    single : bool
        The input was one in-memory spectrum.
    skipped : list of Skipped
    n_inputs, n_read : int
        ``n_read + len(skipped) == n_inputs`` once iteration is complete.
    """

    def __init__(self, spectra: Any, format: str | None = None, on_error: str = "raise", *,
                 prepare: Callable[[InputItem], Any] | None = None, workers: int | None = None,
                 callback: Callable[[Skipped], None] | None = None) -> None:
        _check_on_error(on_error)
        self.format, self.on_error, self.prepare = format, on_error, prepare
        self.callback = callback
        self.skipped: list[Skipped] = []
        self.n_read = 0
        self.single = is_single_spectrum(spectra)
        self._spectra = spectra
        if not self.single and not self._is_many(spectra):
            raise SpectrumTypeError(
                f"expected a spectrum, a file path or an iterable of them, got {type(spectra).__name__}")
        self.workers = workers
        self._ids = IdAllocator()
        self._seen_paths: set[str] = set()

    @staticmethod
    def _is_many(obj: Any) -> bool:
        if isinstance(obj, (str, os.PathLike)) or is_spectrum(obj) or is_spectrum_list(obj):
            return True
        return isinstance(obj, Iterable) and not isinstance(obj, (dict, bytes))

    @property
    def n_inputs(self) -> int:
        """Inputs seen so far: spectra read plus inputs skipped."""
        return self.n_read + len(self.skipped)

    def count(self) -> int | None:
        """Number of spectra when known without reading files (for progress bars), else None."""
        if self.single:
            return 1
        spectra = self._spectra
        if is_spectrum_list(spectra) or (
                isinstance(spectra, (list, tuple)) and all(is_single_spectrum(s) for s in spectra)):
            return len(spectra)
        return None

    def _units(self) -> Iterator[_Unit]:
        if self.single:
            yield _Unit(obj=self._spectra, position=0)
            return
        if isinstance(self._spectra, (str, os.PathLike)) or is_spectrum(self._spectra):
            yield from self._expand(self._spectra, 0)
            return
        for position, obj in enumerate(self._spectra):
            yield from self._expand(obj, position)

    def _expand(self, obj: Any, position: int) -> Iterator[_Unit]:
        if is_single_spectrum(obj):
            yield _Unit(obj=obj, position=position)
        elif isinstance(obj, (str, os.PathLike)):
            explicit = not Path(obj).is_dir() and not (_glob.has_magic(os.fspath(obj))
                                                      and not os.path.lexists(obj))
            for entry in expand_paths(obj):
                key = os.path.realpath(entry.path if isinstance(entry, PathProblem) else entry)
                if key in self._seen_paths:  # a file named twice is read once
                    continue
                self._seen_paths.add(key)
                if isinstance(entry, PathProblem):
                    yield _Unit(problem=entry, explicit=explicit)
                else:
                    yield _Unit(path=entry, explicit=explicit)
        elif is_spectrum(obj):  # a 2-D Spectrum: one item per row
            base = _meta_id(obj) or str(position)
            for k in range(obj.flux.shape[0]):
                yield _Unit(obj=obj[k], position=position, row_id=f"{base}:{k}")
        elif is_spectrum_list(obj):
            for k, spec in enumerate(obj):
                yield from self._expand(spec, position if len(obj) == 1 else f"{position}:{k}")
        else:
            raise SpectrumTypeError(
                f"input {position} is a {type(obj).__name__}; expected a specutils Spectrum, a "
                "(wavelength, flux[, ivar]) tuple, omnispectra Tokens, or a file/directory path")

    def _results(self) -> Iterator[tuple[_Unit, list]]:
        workers = self.workers
        units = self._units()
        if workers is None:
            workers = 0 if self.single else 1
        if self.on_error == "warn":
            # the readers' warnings.catch_warnings() in a reading thread would swallow the
            # warnings this thread emits meanwhile (warning filters are process-global)
            workers = 0
        if workers <= 0:
            for unit in units:
                yield unit, unit.run(self.format, self.prepare)
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="omnispectra-read")
        pending: deque = deque()
        try:
            for unit in units:
                if unit.path is None:  # in-memory or a path problem: nothing to overlap
                    while pending:
                        done_unit, future = pending.popleft()
                        yield done_unit, future.result()
                    yield unit, unit.run(self.format, self.prepare)
                    continue
                pending.append((unit, pool.submit(unit.run, self.format, self.prepare)))
                if len(pending) >= 2 * workers:
                    done_unit, future = pending.popleft()
                    yield done_unit, future.result()
            while pending:
                done_unit, future = pending.popleft()
                yield done_unit, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[InputItem]:
        for unit, results in self._results():
            for result in results:
                if isinstance(result, Skipped):
                    ignorable = (isinstance(result.error, NotASpectrumError) and not unit.explicit)
                    self.record(result, raise_ok=not ignorable)
                    continue
                result.id = self._ids.assign(result.id, result.source)
                if isinstance(getattr(result.prepared, "meta", None), dict):
                    result.prepared.meta = {**(result.prepared.meta or {}), "id": result.id}
                self.n_read += 1
                yield result

    def record(self, skipped: Skipped, raise_ok: bool = True) -> None:
        """Record a skipped input (raise its error under ``on_error='raise'``)."""
        if self.on_error == "raise" and raise_ok:
            raise skipped.error if skipped.error is not None else OmniSpectraError(str(skipped))
        self.skipped.append(skipped)
        logger.info("skipped %s", skipped)
        if self.on_error == "warn":
            warnings.warn(f"skipped {skipped}", SpectrumReadWarning, stacklevel=4)
        if self.callback is not None:
            self.callback(skipped)

    def reject(self, item: InputItem, error: OmniSpectraError) -> None:
        """Skip an item already read (e.g. the model's output for it is not finite)."""
        self.n_read -= 1
        self.record(Skipped(item.source, str(error), id=item.id, error=error))

    def skipped_meta(self) -> list[dict[str, str]]:
        """``[{source, reason[, id]}, ...]`` for a result table's ``meta['skipped']``."""
        return [s.as_dict() for s in self.skipped]
