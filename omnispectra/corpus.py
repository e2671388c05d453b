"""HDF5 training corpora: build them from spectrum files, read them back lazily.

A *corpus* is the on-disk form of the pretraining data (paper, section *Dataset*:
"The files are in HDF5 format"). Spectra keep their native pixel grids (no
resampling, no padding): all spectra of a file are concatenated into flat arrays and
``offsets`` marks where each one starts.

File layout (``format_version`` 2)
----------------------------------
One HDF5 file holds the spectra of **one survey**::

    /                      attrs: format="omnispectra-corpus", format_version=2,
                                  omnispectra_version, created (ISO 8601 UTC),
                                  survey, n_spectra, flux_unit ("" = dimensionless,
                                  "mixed" when rows differ: see meta/flux_unit),
                                  wavelength_unit="Angstrom", wavelength_frame="vacuum"
    /spectra/wavelength    float64 (N_pix,)  vacuum Angstrom, strictly increasing per spectrum
    /spectra/flux          float32 (N_pix,)
    /spectra/ivar          float64 (N_pix,)  inverse variance (1 where the input had none)
    /spectra/mask          uint8   (N_pix,)  1 = bad pixel (specutils convention)
    /spectra/offsets       int64   (n + 1,)  spectrum i is [offsets[i], offsets[i+1])
    /meta/<column>         (n,)     one dataset per metadata column (see META_COLUMNS)

Pixel arrays are chunked and compressed (gzip + shuffle by default, ``lzf`` on
request). Metadata columns: strings are UTF-8 (empty string = missing), floats are
float64 (NaN = missing), flags are uint8. Besides the reader contract's ``id``,
``object_id``, ``survey``, ``source_file``, ``format``, ``rest_frame`` and the labels
``class``, ``subclass``, ``z``, ``z_err``, ``teff``, ``logg``, ``fe_h``, the builder
stores ``flux_unit``, ``has_ivar`` (False: the input had no uncertainty), ``n_valid``
(pixels the tokenizer will use: finite flux, finite ``ivar > 0``, not masked),
``wave_min`` and ``wave_max``, so datasets can filter and summarize without touching
pixel data.

Round trip
----------
Flux is stored as float32, inverse variance and wavelengths as float64, so
``CorpusReader.spectrum(i)`` returns exactly (bit for bit) the float32-cast flux and the
float64 ivar and wavelength of the input (inputs already in float32, such as SDSS,
DESI or LAMOST spectra, come back unchanged). float64 ivar keeps any physical flux unit:
a flux of 1e-19 erg/s/cm2/A with an error of 1e-20 has ivar 1e40, beyond float32 (format
version 1 stored float32 ivar; such corpora are still read). Flux beyond the float32
range is refused at build time. A wavelength axis given in another spectral unit is
converted to Angstrom once, at build time (:func:`omnispectra.spectrum.spectrum_data`).
Ids are the readers' ids made unique across the build
(:class:`omnispectra.io.sources.IdAllocator`): ``A/spec.fits`` and ``B/spec.fits`` give
``spec`` and ``B/spec``, never a dropped duplicate.

One file per survey
-------------------
:func:`build_corpus` writes ``output`` when every spectrum belongs to one survey, and
``<stem>-<survey><suffix>`` files next to it (e.g. ``corpus-sdss.h5``,
``corpus-miles.h5``) when several surveys come in; when ``output`` is a directory it
always writes ``<output>/<survey>.h5``. ``survey=NAME`` overrides the survey of every
spectrum (one output file); ``only_surveys=[...]`` keeps just those surveys.
:class:`omnispectra.dataset.SpectrumDataset` takes any number of corpus files (or a
directory of them) and mixes surveys in one training run.

Every file is written to a hidden temporary file in the target directory and moved
into place with :func:`os.replace` once complete, so an interrupted build never leaves
a file that looks like a finished corpus and never damages an existing one. The
temporary name, ``.<survey>.build-<output>-<host>-<pid>-<start>.<random>.h5.tmp``,
names the build's output and its writer process: a build killed with SIGKILL cannot
clean up, and the next build to the same output removes the temporary files of earlier
builds whose process has provably ended (:func:`omnispectra.fileio.writer_is_dead`),
never those of a build still running.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy import units as u

from . import __version__
from .exceptions import CorpusError, InvalidSpectrumError, SpectrumTypeError, UnitsError
from .fileio import check_output, commit, safe_filename, writer_is_dead, writer_tag
from .io.sources import IdAllocator, PathProblem, check_readable_file, default_id, expand_paths, read_file
from .spectrum import bad_pixels, is_spectrum, spectrum_data

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LABEL_COLUMNS",
    "META_COLUMNS",
    "BuildReport",
    "FileFailure",
    "build_corpus",
    "CorpusReader",
    "open_corpus",
    "is_corpus",
    "corpus_files",
    "corpus_info",
    "format_corpus_info",
]

FORMAT_NAME = "omnispectra-corpus"
FORMAT_VERSION = 2
#: Version 1 stored ivar as float32 (faint spectra in physical units overflowed to inf);
#: version 2 stores it as float64. Both are read.
SUPPORTED_VERSIONS = (1, 2)

LABEL_COLUMNS = ("class", "subclass", "z", "z_err", "teff", "logg", "fe_h")
_STRING_COLUMNS = ("id", "object_id", "survey", "source_file", "format", "class", "subclass", "flux_unit")
_FLOAT_COLUMNS = ("z", "z_err", "teff", "logg", "fe_h", "wave_min", "wave_max")
_FLAG_COLUMNS = ("rest_frame", "has_ivar")
_INT_COLUMNS = ("n_valid",)
#: Every metadata column of a format-version-1 corpus, in storage order.
META_COLUMNS = ("id", "object_id", "survey", "source_file", "format", "rest_frame",
                "class", "subclass", "z", "z_err", "teff", "logg", "fe_h",
                "flux_unit", "has_ivar", "n_valid", "wave_min", "wave_max")
_PIXEL_ARRAYS = {"wavelength": np.float64, "flux": np.float32, "ivar": np.float64, "mask": np.uint8}
_SPECTRUM_ERRORS = (InvalidSpectrumError, SpectrumTypeError, UnitsError)


# --------------------------------------------------------------------------- building


@dataclass
class FileFailure:
    """An input that could not be read (it was skipped)."""

    path: str
    error: str  # exception class name
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}: {self.message}"


@dataclass
class BuildReport:
    """What :func:`build_corpus` did.

    Attributes
    ----------
    outputs : dict
        Survey name -> path of the corpus file written for it.
    counts : dict
        Survey name -> number of spectra written.
    n_files : int
        Input files attempted.
    failed_files : list of FileFailure
        Inputs that could not be read (skipped; the build went on).
    skipped_spectra : list of (str, str)
        ``(id or source, reason)`` of spectra that were read but not stored (bad
        wavelength axis, 2-D flux, duplicate id, filtered survey, ...).
    n_pixels : int
        Pixels written in all files.
    seconds : float
        Wall time of the build.
    removed_temporaries : list of str
        Temporary files of earlier, dead builds to the same output that this build removed.
    """

    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    n_files: int = 0
    failed_files: list[FileFailure] = field(default_factory=list)
    skipped_spectra: list[tuple[str, str]] = field(default_factory=list)
    n_pixels: int = 0
    seconds: float = 0.0
    removed_temporaries: list[str] = field(default_factory=list)

    @property
    def n_spectra(self) -> int:
        """Spectra written in all files."""
        return sum(self.counts.values())

    @property
    def n_failed(self) -> int:
        """Input files that could not be read."""
        return len(self.failed_files)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"{self.n_spectra} spectra ({self.n_pixels} pixels) from "
                 f"{self.n_files - self.n_failed} of {self.n_files} files in {self.seconds:.1f} s"]
        for survey, path in sorted(self.outputs.items()):
            lines.append(f"  {survey:<16s} {self.counts.get(survey, 0):>9d} spectra -> {path}")
        if self.failed_files:
            lines.append(f"{self.n_failed} file(s) skipped:")
            lines += [f"  {f}" for f in self.failed_files]
        if self.skipped_spectra:
            lines.append(f"{len(self.skipped_spectra)} spectrum/spectra skipped:")
            lines += [f"  {name}: {why}" for name, why in self.skipped_spectra[:50]]
            if len(self.skipped_spectra) > 50:
                lines.append(f"  ... and {len(self.skipped_spectra) - 50} more")
        if self.removed_temporaries:
            lines.append(f"removed {len(self.removed_temporaries)} temporary file(s) left by killed builds")
        return "\n".join(lines)

    __str__ = summary


def _expand_inputs(inputs: Any) -> list[Any]:
    """Paths (via :func:`omnispectra.io.sources.expand_paths`: the same files every command
    reads, with unreadable paths as :class:`~omnispectra.io.sources.PathProblem`) and spectra,
    in order."""
    if isinstance(inputs, (str, os.PathLike)) or is_spectrum(inputs):
        inputs = [inputs]
    items: list[Any] = []
    seen: set[str] = set()  # a file reached from two inputs is read once
    for item in inputs:
        if is_spectrum(item):
            items.append(item)
        elif isinstance(item, (str, os.PathLike)):
            for entry in expand_paths(item):
                key = os.path.realpath(entry.path if isinstance(entry, PathProblem) else entry)
                if key not in seen:
                    seen.add(key)
                    items.append(entry)
        elif isinstance(item, Iterable):  # e.g. a SpectrumList
            items.extend(item)
        else:
            raise TypeError(f"inputs must be paths or specutils spectra, got {type(item).__name__}")
    return items


def _default_reader(format: str | None) -> Callable[[Path], Iterable[Any]]:
    """Read a file with :func:`~omnispectra.io.sources.read_file` (under the reader lock)."""

    def reader(path: Path) -> Iterable[Any]:
        return read_file(path, format)

    return reader


def _safe_name(survey: str) -> str:
    name = survey.strip().lower()
    return safe_filename(name) if name else "unknown"


#: Largest flux magnitude the corpus stores (its flux array is float32).
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _stored_arrays(spec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool, str]:
    """``(wavelength float64, flux float32, ivar float64, mask bool, has_ivar, flux_unit)``.

    Arrays come from :func:`omnispectra.spectrum.spectrum_data` (the one conversion);
    flux beyond the float32 range is refused rather than stored as inf.
    """
    data = spectrum_data(spec)
    finite = data.flux[np.isfinite(data.flux)]
    if finite.size and np.max(np.abs(finite)) > _FLOAT32_MAX:
        raise InvalidSpectrumError(
            f"flux values up to {np.max(np.abs(finite)):.3g} exceed the corpus' float32 range; "
            "rescale the spectrum (e.g. change its flux unit)")
    return (data.wavelength, data.flux.astype(np.float32), data.ivar, data.mask, data.has_ivar,
            data.flux_unit)


def _as_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(getattr(value, "value", value))
    except (TypeError, ValueError):
        return math.nan


def _as_flag(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return int(_as_str(value).lower() in {"1", "true", "yes", "t", "y"})
    try:
        return int(bool(value))
    except (TypeError, ValueError):
        return 0


class _SurveyWriter:
    """Appends spectra of one survey to a temporary HDF5 file."""

    def __init__(self, survey: str, directory: Path, compression: str | None,
                 compression_opts: int | None, chunk: int, build_tag: str = "") -> None:
        self.survey = survey
        fd, tmp = tempfile.mkstemp(prefix=f".{_safe_name(survey)}.{build_tag}.", suffix=".h5.tmp",
                                   dir=directory)
        os.close(fd)
        self.tmp = Path(tmp)
        self.file = h5py.File(self.tmp, "w")
        self.n_written = 0
        self.offsets = [0]
        self.columns: dict[str, list] = {c: [] for c in META_COLUMNS}
        self.buffers: dict[str, list[np.ndarray]] = {k: [] for k in _PIXEL_ARRAYS}
        self.buffered = 0
        self.chunk = chunk
        spectra = self.file.create_group("spectra")
        opts: dict[str, Any] = {}
        if compression:
            opts = {"compression": compression, "shuffle": True}
            if compression == "gzip":
                opts["compression_opts"] = 4 if compression_opts is None else compression_opts
        for name, dtype in _PIXEL_ARRAYS.items():
            spectra.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,), **opts)

    def add(self, wave, flux, ivar, mask, meta: dict[str, Any]) -> None:
        for name, arr in zip(_PIXEL_ARRAYS, (wave, flux, ivar, mask), strict=True):
            self.buffers[name].append(arr)
        self.buffered += wave.size
        self.offsets.append(self.offsets[-1] + wave.size)
        for c in META_COLUMNS:
            self.columns[c].append(meta[c])
        if self.buffered >= 16 * self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        for name, dtype in _PIXEL_ARRAYS.items():
            data = np.concatenate(self.buffers[name]).astype(dtype, copy=False)
            dset = self.file["spectra"][name]
            dset.resize((self.n_written + data.size,))
            dset[self.n_written:] = data
            self.buffers[name] = []
        self.n_written += self.buffered
        self.buffered = 0

    def finalize(self) -> None:
        self.flush()
        f = self.file
        n = len(self.offsets) - 1
        f["spectra"].create_dataset("offsets", data=np.asarray(self.offsets, dtype=np.int64),
                                    chunks=True if n > 1024 else None)
        meta = f.create_group("meta")
        str_dtype = h5py.string_dtype("utf-8")
        for c in META_COLUMNS:
            values = self.columns[c]
            if c in _STRING_COLUMNS:
                data = np.array(values, dtype=object) if values else np.zeros(0, dtype=object)
                meta.create_dataset(c, data=data, dtype=str_dtype)
            elif c in _FLOAT_COLUMNS:
                meta.create_dataset(c, data=np.asarray(values, dtype=np.float64))
            elif c in _FLAG_COLUMNS:
                meta.create_dataset(c, data=np.asarray(values, dtype=np.uint8))
            else:
                meta.create_dataset(c, data=np.asarray(values, dtype=np.int64))
        meta.attrs["columns"] = list(META_COLUMNS)
        units = sorted(set(self.columns["flux_unit"]))
        f.attrs.update({
            "format": FORMAT_NAME,
            "format_version": np.int64(FORMAT_VERSION),
            "omnispectra_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "survey": self.survey,
            "n_spectra": np.int64(n),
            "flux_unit": units[0] if len(units) == 1 else ("mixed" if units else ""),
            "wavelength_unit": "Angstrom",
            "wavelength_frame": "vacuum",
        })
        f.close()

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:  # pragma: no cover - already closed / broken
            pass
        self.tmp.unlink(missing_ok=True)


def _targets(output: Path, surveys: Sequence[str], as_dir: bool) -> dict[str, Path]:
    if as_dir:
        return {s: output / f"{_safe_name(s)}.h5" for s in surveys}
    if len(surveys) == 1:
        return {surveys[0]: output}
    suffix = output.suffix or ".h5"
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return {s: output.with_name(f"{stem}-{_safe_name(s)}{suffix}") for s in surveys}


#: ``.<survey>.build-<output hash>-<writer tag>.<random>.h5.tmp`` (see the module docstring)
_TEMPORARY = re.compile(r"^\.(?:.+)\.build-(?P<output>[0-9a-f]{8})-(?P<writer>[0-9a-f]{8}-[0-9]+-[0-9]+)"
                        r"\.[^.]*\.h5\.tmp$")


def _output_tag(output: Path) -> str:
    """8 hex digits naming a build's output (its resolved path) in its temporary files' names."""
    return hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:8]


def _remove_dead_temporaries(directory: Path, output: Path) -> list[str]:
    """Remove the temporary files that killed builds to ``output`` left in ``directory``.

    Only files whose name says they belong to a build to this output and whose writer
    process has provably ended (:func:`omnispectra.fileio.writer_is_dead`) are removed; a
    running build's file, another output's, or one of unknown origin is kept (the last
    two are logged).
    """
    removed, unknown = [], []
    for path in sorted(directory.glob(".*.h5.tmp")):
        match = _TEMPORARY.match(path.name)
        if match is None:
            unknown.append(path.name)
        elif match["output"] == _output_tag(output) and writer_is_dead(match["writer"]):
            size = path.stat().st_size if path.exists() else 0
            path.unlink(missing_ok=True)
            logger.info("removed %s (%d bytes), left by a corpus build that was killed", path, size)
            removed.append(str(path))
    if unknown:
        logger.warning("%d temporary file(s) of unknown origin in %s (e.g. %s) are kept: remove them by "
                       "hand if no corpus build is running there", len(unknown), directory, unknown[0])
    return removed


def _previous_outputs(output: Path, as_dir: bool) -> list[Path]:
    """Files an earlier build to ``output`` made: replaced (or refused) by a new build.

    A folder output: the corpus files in it; a file output ``x.h5``: ``x.h5`` and the
    per-survey ``x-<survey>.h5``.
    """
    if as_dir:
        if not output.is_dir():
            return []
        return sorted(p for pattern in ("*.h5", "*.hdf5") for p in output.glob(pattern) if is_corpus(p))
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    found = [output] if output.exists() or output.is_symlink() else []
    found += sorted(p for p in output.parent.glob(f"{glob.escape(stem)}-*{output.suffix or '.h5'}")
                    if is_corpus(p))
    return found


def build_corpus(
    inputs: Any,
    output: str | os.PathLike,
    survey: str | None = None,
    format: str | None = None,
    progress: bool = True,
    *,
    only_surveys: Sequence[str] | None = None,
    overwrite: bool = False,
    compression: str | None = "gzip",
    compression_opts: int | None = None,
    chunk_size: int = 8192,
    reader: Callable[[Path], Iterable[Any]] | None = None,
) -> BuildReport:
    """Convert spectrum files (any format :mod:`omnispectra.io` reads) into HDF5 corpora.

    Parameters
    ----------
    inputs : path, glob, directory, specutils spectrum, or a sequence of them
        Directories are searched recursively for FITS/HDF5 files; each file may hold
        many spectra (every spectrum :func:`omnispectra.io.read` returns is stored).
    output : path
        Target file (``corpus.h5``) or directory. One file is written per survey: see
        the module docstring for the naming rule. Inputs are never overwritten.
    survey : str, optional
        Override the survey of every spectrum (all go to one file, ``output``).
    format : str, optional
        Force a reader format (passed to :func:`omnispectra.io.read`).
    progress : bool
        Show a tqdm progress bar over input files.
    only_surveys : sequence of str, optional
        Keep only spectra of these surveys (case-insensitive); others are counted as
        skipped.
    overwrite : bool
        Replace existing output files (only once the new ones are complete); the
        per-survey files of an earlier build to ``output`` that the new build does not
        make are removed, so readers of the folder do not count them again.
    compression : {"gzip", "lzf", None}
        Filter of the pixel arrays (with the shuffle filter). gzip is readable by
        every HDF5 installation; lzf is faster but h5py-specific.
    compression_opts : int, optional
        gzip level (default 4).
    chunk_size : int
        HDF5 chunk length of the pixel arrays, in pixels. A random read decompresses
        whole chunks, so chunks near a typical spectrum's length read fastest (8192:
        ~1.6x faster random reads than 32768 with gzip, ~30% larger files).
    reader : callable, optional
        ``reader(path) -> iterable of spectra``; defaults to
        ``omnispectra.io.read(path, format=format)``.

    Returns
    -------
    BuildReport
        Output paths, counts, and every input file or spectrum that was skipped and why.
        Unreadable files never abort the build.

    Raises
    ------
    OutputExistsError
        An output exists and ``overwrite`` is False (a ``FileExistsError``; checked
        before the build for the files an earlier build to ``output`` made).
    OutputIsInputError
        An output would replace one of the inputs (always refused).
    ValueError
        Nothing could be stored.
    """
    start = time.perf_counter()
    output = Path(output).expanduser()
    as_dir = (output.is_dir() or str(output).endswith(("/", os.sep))
              or (not output.suffix and not output.exists()))
    directory = output if as_dir else output.parent
    directory.mkdir(parents=True, exist_ok=True)
    if compression not in ("gzip", "lzf", None):
        raise ValueError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    items = _expand_inputs(inputs)
    input_files = [p for p in items if isinstance(p, Path) and p.exists()]
    if not as_dir:
        check_output(output, input_files, overwrite=True)  # the output is never an input
    previous = _previous_outputs(output, as_dir)
    for old in previous:  # checked before the build, not after it
        check_output(old, input_files, overwrite=overwrite)
    removed = _remove_dead_temporaries(directory, output)
    build = _Build(directory, survey, None if only_surveys is None else {s.lower() for s in only_surveys},
                   (compression, compression_opts, chunk_size, f"build-{_output_tag(output)}-{writer_tag()}"))
    build.report.removed_temporaries = removed
    # omnispectra.io is imported only when a file has to be read
    spectra = _spectra_of(items, reader or _default_reader(format), build.report)
    try:
        from tqdm.auto import tqdm

        bar = tqdm(spectra, desc="corpus", unit="spectrum", disable=not progress, dynamic_ncols=True)
        for spec, source, k in bar:
            build.add(spec, source, k)
        bar.close()
        if not build.writers:
            raise ValueError("no spectrum could be stored:\n" + build.report.summary())
        targets = _targets(output, sorted(build.writers), as_dir)
        for target in targets.values():
            check_output(target, input_files, overwrite=overwrite)
        for writer in build.writers.values():
            writer.finalize()
    except BaseException:
        for writer in build.writers.values():
            writer.abort()
        raise
    _commit_outputs(build, targets, previous)
    build.report.seconds = time.perf_counter() - start
    return build.report


def _spectra_of(items: list[Any], read: Callable[[Path], Iterable[Any]],
                report: BuildReport) -> Iterator[tuple[Any, str, int]]:
    """``(spectrum, source file or "", index in its file or among the inputs)``, in order.

    A file that cannot be read is recorded in ``report.failed_files`` and skipped: a bad
    input never aborts the build.
    """
    for position, item in enumerate(items):
        if is_spectrum(item):
            yield item, "", position
            continue
        report.n_files += 1
        try:
            if isinstance(item, PathProblem):
                raise item.error()
            spectra = list(read(check_readable_file(item)))
        except ImportError:
            raise
        except Exception as err:
            where = str(item.path if isinstance(item, PathProblem) else item)
            report.failed_files.append(FileFailure(where, type(err).__name__, str(err)))
            continue
        for k, spec in enumerate(spectra):
            yield spec, str(item), k


class _Build:
    """The per-survey writers of one build and its report."""

    def __init__(self, directory: Path, survey: str | None, keep: set[str] | None,
                 storage: tuple[str | None, int | None, int, str]) -> None:
        self.directory, self.survey, self.keep, self.storage = directory, survey, keep, storage
        self.report = BuildReport()
        self.writers: dict[str, _SurveyWriter] = {}
        self.ids = IdAllocator()

    def add(self, spec: Any, source: str, k: int) -> None:
        """Store one spectrum (or record in the report why it was not)."""
        report = self.report
        meta = dict(getattr(spec, "meta", None) or {})
        source_file = _as_str(meta.get("source_file")) or source
        sid = _as_str(meta.get("id")) or default_id(source_file or None, k)
        name = _as_str(self.survey) or _as_str(meta.get("survey")) or "unknown"
        if self.keep is not None and name.lower() not in self.keep:
            report.skipped_spectra.append((sid, f"survey {name!r} not selected"))
            return
        if self.ids.seen(sid, source_file):  # the same spectrum of the same file again
            report.skipped_spectra.append((sid, "duplicate id"))
            return
        try:
            wave, flux, ivar, mask, has_ivar, unit = _stored_arrays(spec)
        except _SPECTRUM_ERRORS as err:
            report.skipped_spectra.append((sid, f"{type(err).__name__}: {err}"))
            return
        sid = self.ids.assign(sid, source_file)
        row = {
            "id": sid,
            "object_id": _as_str(meta.get("object_id")) or sid,
            "survey": name,
            "source_file": source_file,
            "format": _as_str(meta.get("format")),
            "rest_frame": _as_flag(meta.get("rest_frame", False)),
            "class": _as_str(meta.get("class")),
            "subclass": _as_str(meta.get("subclass")),
            **{c: _as_float(meta.get(c)) for c in ("z", "z_err", "teff", "logg", "fe_h")},
            "flux_unit": unit,
            "has_ivar": int(has_ivar),
            "n_valid": int((~bad_pixels(flux, ivar, mask)).sum()),
            "wave_min": float(wave[0]),
            "wave_max": float(wave[-1]),
        }
        if name not in self.writers:
            self.writers[name] = _SurveyWriter(name, self.directory, *self.storage)
        self.writers[name].add(wave, flux, ivar, mask, row)
        report.n_pixels += wave.size
        report.counts[name] = report.counts.get(name, 0) + 1


def _commit_outputs(build: _Build, targets: dict[str, Path], previous: list[Path]) -> None:
    """Move the complete files into place (each move is atomic), then drop stale ones."""
    for name, target in targets.items():
        commit(build.writers[name].tmp, target)
        build.report.outputs[name] = str(target)
    stale = [old for old in previous if not any(old.resolve() == t.resolve() for t in targets.values())]
    for old in stale:  # per-survey files of the replaced build would be read again with the new ones
        logger.info("overwrite: removing %s of the previous build", old)
        old.unlink()


# --------------------------------------------------------------------------- reading


def is_corpus(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file written by :func:`build_corpus` (any version)."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return _as_str(f.attrs.get("format")) == FORMAT_NAME
    except OSError:
        return False


def corpus_files(paths: Any) -> list[Path]:
    """Expand paths, globs and directories (their ``*.h5``/``*.hdf5`` files) into a sorted file list."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".h5", ".hdf5")
                            and not p.name.startswith("."))
        elif not path.exists() and glob.has_magic(str(path)):
            files += [Path(p) for p in sorted(glob.glob(str(path)))]
        else:
            files.append(path)
    return files


class CorpusReader:
    """Lazy, validated access to one corpus file.

    The HDF5 file is opened on first access and reopened in a forked process (h5py
    handles must not cross ``fork``), so a reader can be shared with DataLoader workers;
    pickling drops the handle. Offsets (``8 (n+1)`` bytes) are read at construction;
    pixel data only on request.

    Raises
    ------
    CorpusError
        The file is missing, not HDF5, not a corpus, of an unknown ``format_version``,
        or structurally inconsistent.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._metadata = None
        if not self.path.is_file():
            raise CorpusError(f"{self.path}: no such corpus file")
        try:
            is_hdf5 = h5py.is_hdf5(self.path)
        except OSError as err:
            raise CorpusError(f"{self.path}: cannot be opened: {err}") from err
        if not is_hdf5:
            raise CorpusError(f"{self.path} is not an HDF5 file, so not an omnispectra corpus")
        f = self._handle()
        try:
            fmt = _as_str(f.attrs.get("format"))
            if fmt != FORMAT_NAME:
                raise CorpusError(
                    f"{self.path} is an HDF5 file but not an omnispectra corpus (no format="
                    f"{FORMAT_NAME!r} attribute); build one with 'omnispectra corpus build'")
            version = f.attrs.get("format_version")
            try:
                version = int(version)
            except (TypeError, ValueError):
                raise CorpusError(f"{self.path}: invalid format_version {version!r}") from None
            if version not in SUPPORTED_VERSIONS:
                raise CorpusError(
                    f"{self.path} has corpus format_version {version}; this omnispectra "
                    f"({__version__}) reads versions {list(SUPPORTED_VERSIONS)}; upgrade omnispectra "
                    "or rebuild the corpus")
            self.format_version = version
            missing = [f"spectra/{k}" for k in (*_PIXEL_ARRAYS, "offsets") if f"spectra/{k}" not in f]
            missing += [f"meta/{c}" for c in META_COLUMNS if f"meta/{c}" not in f]
            if missing:
                raise CorpusError(f"{self.path}: corrupt corpus, missing {', '.join(missing)}")
            offsets = np.asarray(f["spectra/offsets"][:], dtype=np.int64)
            n_pix = f["spectra/flux"].shape[0]
            sizes = {k: f[f"spectra/{k}"].shape[0] for k in _PIXEL_ARRAYS}
            n = offsets.size - 1
            if (n < 0 or offsets[0] != 0 or offsets[-1] != n_pix or len(set(sizes.values())) != 1
                    or np.any(np.diff(offsets) < 0)):
                raise CorpusError(f"{self.path}: corrupt corpus, offsets do not match the pixel arrays")
            bad_cols = [c for c in META_COLUMNS if f[f"meta/{c}"].shape != (n,)]
            if bad_cols:
                raise CorpusError(f"{self.path}: corrupt corpus, metadata columns of wrong length: "
                                  f"{bad_cols}")
            self.offsets = offsets
            self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        except CorpusError:
            self.close()
            raise
        except (OSError, KeyError, ValueError) as err:
            self.close()
            raise CorpusError(f"{self.path}: corrupt corpus: {err}") from err

    # -- handle management
    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # after fork the inherited handle belongs to the parent: drop it unclosed
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise CorpusError(f"{self.path}: cannot be opened: {err}") from err
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close the HDF5 handle (it is reopened on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:  # pragma: no cover
                pass
        self._file = None

    def __enter__(self) -> CorpusReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"<CorpusReader {self.path} survey={self.attrs.get('survey')!r} n={len(self)}>"

    # -- sizes
    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def survey(self) -> str:
        """Survey name stored in the file attributes."""
        return _as_str(self.attrs.get("survey"))

    @property
    def lengths(self) -> np.ndarray:
        """Pixel count of every spectrum (int64)."""
        return np.diff(self.offsets)

    def column(self, name: str) -> np.ndarray:
        """One metadata column as a numpy array (strings as ``str``, flags as bool)."""
        if name == "n_pixels":
            return self.lengths
        if name not in META_COLUMNS:
            raise KeyError(f"no metadata column {name!r}; columns: {', '.join(META_COLUMNS)}")
        if self._metadata is not None:
            return np.asarray(self._metadata[name])
        dset = self._handle()[f"meta/{name}"]
        if name in _STRING_COLUMNS:
            values = dset.asstr()[:]
            return np.array(values.tolist() if len(values) else [], dtype=str)
        values = dset[:]
        return values.astype(bool) if name in _FLAG_COLUMNS else values

    @property
    def metadata(self):
        """All metadata as an :class:`astropy.table.Table` (plus an ``n_pixels`` column)."""
        if self._metadata is None:
            from astropy.table import Table

            table = Table()
            for name in META_COLUMNS:
                table[name] = self.column(name)
            table["n_pixels"] = self.lengths
            self._metadata = table
        return self._metadata

    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"spectrum index {i} out of range for a corpus of {n}")
        return i

    def value(self, name: str, i: int) -> Any:
        """One metadata value of spectrum ``i`` (a single small read)."""
        if name not in META_COLUMNS:
            raise KeyError(f"no metadata column {name!r}; columns: {', '.join(META_COLUMNS)}")
        value = self._handle()[f"meta/{name}"][self._index(i)]
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return bool(value) if name in _FLAG_COLUMNS else value.item()

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(wavelength float64, flux float32, ivar float64, mask bool)`` of spectrum ``i``
        (ivar float32 in format-version-1 corpora)."""
        i = self._index(i)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        spectra = self._handle()["spectra"]
        return (spectra["wavelength"][lo:hi], spectra["flux"][lo:hi], spectra["ivar"][lo:hi],
                spectra["mask"][lo:hi].astype(bool))

    def meta(self, i: int) -> dict[str, Any]:
        """Reader-contract metadata of spectrum ``i`` (missing labels are left out)."""
        i = self._index(i)
        if self._metadata is not None:
            row = {c: self._metadata[c][i] for c in META_COLUMNS}
        else:
            f = self._handle()
            row = {}
            for c in META_COLUMNS:
                value = f[f"meta/{c}"][i]
                row[c] = value.decode("utf-8") if isinstance(value, bytes) else value
        meta: dict[str, Any] = {c: str(row[c])
                                for c in ("id", "object_id", "survey", "source_file", "format")}
        meta["rest_frame"] = bool(row["rest_frame"])
        for c in ("class", "subclass"):
            if str(row[c]):
                meta[c] = str(row[c])
        for c in ("z", "z_err", "teff", "logg", "fe_h"):
            if not math.isnan(float(row[c])):
                meta[c] = float(row[c])
        return meta

    def spectrum(self, i: int):
        """Spectrum ``i`` as a :class:`specutils.Spectrum` (InverseVariance uncertainty, bool mask)."""
        from astropy.nddata import InverseVariance
        from specutils import Spectrum

        i = self._index(i)
        wave, flux, ivar, mask = self.arrays(i)
        f = self._handle()
        unit = f["meta/flux_unit"].asstr()[i]
        has_ivar = bool(f["meta/has_ivar"][i])
        return Spectrum(
            spectral_axis=u.Quantity(wave, u.AA, copy=False),
            flux=u.Quantity(flux, u.Unit(unit) if unit else u.dimensionless_unscaled, copy=False),
            uncertainty=InverseVariance(ivar) if has_ivar else None,
            mask=mask,
            meta=self.meta(i),
        )

    def __getitem__(self, i: int):
        return self.spectrum(i)

    def __iter__(self):
        for i in range(len(self)):
            yield self.spectrum(i)


def open_corpus(path: str | os.PathLike) -> CorpusReader:
    """Open and validate a corpus file (raises :class:`~omnispectra.CorpusError`)."""
    return CorpusReader(path)


# --------------------------------------------------------------------------- info


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {"min": int(values.min()), "median": float(np.median(values)),
            "mean": float(values.mean()), "max": int(values.max())}


def corpus_info(paths: Any) -> dict[str, Any]:
    """Summary of one or more corpus files (directories and globs are expanded).

    Returns
    -------
    dict
        ``{"files": [{path, survey, n_spectra, format_version, omnispectra_version,
        created, flux_unit, size_bytes}], "n_spectra", "n_pixels", "surveys": {name:
        {n_spectra, n_objects, n_pixels, pixels: {min, median, mean, max},
        wavelength: {min, max}, rest_frame, untokenizable (fewer than 20 valid pixels),
        labels: {column: non-missing count}}}}``.
    """
    files = corpus_files(paths)
    out: dict[str, Any] = {"files": [], "n_spectra": 0, "n_pixels": 0, "surveys": {}}
    per: dict[str, list[Any]] = {}
    for path in files:
        with open_corpus(path) as reader:
            table = reader.metadata
            out["files"].append({
                "path": str(path),
                "survey": reader.survey,
                "n_spectra": len(reader),
                "format_version": reader.format_version,
                "omnispectra_version": _as_str(reader.attrs.get("omnispectra_version")),
                "created": _as_str(reader.attrs.get("created")),
                "flux_unit": _as_str(reader.attrs.get("flux_unit")),
                "size_bytes": path.stat().st_size,
            })
            per.setdefault("", []).append(table)
    if not per:
        return out
    from astropy.table import vstack

    table = vstack(per[""], metadata_conflicts="silent") if len(per[""]) > 1 else per[""][0]
    out["n_spectra"] = len(table)
    out["n_pixels"] = int(np.sum(table["n_pixels"]))
    surveys = np.asarray(table["survey"], dtype=str)
    for name in sorted(set(surveys.tolist())):
        sub = table[surveys == name]
        labels = {}
        for c in LABEL_COLUMNS:
            col = np.asarray(sub[c])
            labels[c] = int(np.sum(col != "")) if c in _STRING_COLUMNS else int(np.sum(~np.isnan(col)))
        out["surveys"][name] = {
            "n_spectra": len(sub),
            "n_objects": len(set(np.asarray(sub["object_id"], dtype=str).tolist())),
            "n_pixels": int(np.sum(sub["n_pixels"])),
            "pixels": _stats(np.asarray(sub["n_pixels"])),
            "wavelength": {"min": float(np.min(sub["wave_min"])), "max": float(np.max(sub["wave_max"]))},
            "rest_frame": int(np.sum(sub["rest_frame"])),
            "untokenizable": int(np.sum(np.asarray(sub["n_valid"]) < 20)),
            "labels": labels,
        }
    return out


def format_corpus_info(info: dict[str, Any]) -> str:
    """The text of ``omnispectra corpus info``."""
    lines = []
    for f in info["files"]:
        lines.append(f"{f['path']}: {f['n_spectra']} spectra, survey {f['survey']!r}, "
                     f"format v{f['format_version']}, {f['size_bytes'] / 1e6:.1f} MB, "
                     f"flux unit {f['flux_unit'] or 'dimensionless'!s}, created {f['created']} "
                     f"by omnispectra {f['omnispectra_version']}")
    lines.append(f"total: {info['n_spectra']} spectra, {info['n_pixels']} pixels, "
                 f"{len(info['surveys'])} survey(s)")
    for name, s in info["surveys"].items():
        p, w = s["pixels"], s["wavelength"]
        lines.append(f"[{name}] {s['n_spectra']} spectra of {s['n_objects']} objects; pixels "
                     f"min {p['min']} / median {p['median']:.0f} / mean {p['mean']:.0f} / max {p['max']}; "
                     f"wavelength {w['min']:.1f}-{w['max']:.1f} A"
                     + (f"; {s['rest_frame']} rest-frame" if s["rest_frame"] else "")
                     + (f"; {s['untokenizable']} with < 20 valid pixels" if s["untokenizable"] else ""))
        labels = ", ".join(f"{c}={n}" for c, n in s["labels"].items() if n)
        lines.append(f"    labels (non-missing): {labels or 'none'}")
    return "\n".join(lines)
