"""The API's inputs: spectra, arrays, Tokens, SpectrumLists and paths -> ordered items.

Every verb takes "spectra" in the same forms; :class:`Inputs` expands them (paths through
:mod:`omnispectra.io.sources`: one expansion, one skip rule, one id rule) into
:class:`InputItem` records in input order, each carrying its arrays
(:class:`~omnispectra.spectrum.SpectrumData`) and tokens once, so that the model, the
flags and the template fit never convert a spectrum again. Inputs that cannot be used
follow ``on_error`` and are recorded as :class:`Skipped`; the counts add up:
``n_read + len(skipped) == n_inputs``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import InvalidSpectrumError, NotASpectrumError, OmniSpectraError, SpectrumTypeError
from ..io.sources import (
    IdAllocator,
    PathProblem,
    SpectrumReadWarning,
    check_on_error,
    default_id,
    expand_paths,
    names_file,
    read_file,
)
from ..redshift import difference_ivar
from ..runtime import WavelengthSupport, check_support, check_wavelength_plausible
from ..spectrum import SpectrumData, is_spectrum, is_spectrum_list, spectrum_data
from ..tokenizer import Tokens, patch_index, tokenize_data

logger = logging.getLogger(__name__)

__all__ = ["Skipped", "InputItem", "Inputs", "is_single_spectrum", "prepare_tokens", "measure_input"]


@dataclass
class Skipped:
    """An input that was left out, and why."""

    source: str  # the file path (with its suffix) or "input <position>"
    reason: str
    id: str | None = None  # the spectrum's id when it was read but could not be used
    error: BaseException | None = field(default=None, repr=False, compare=False)
    # a spectrum its file's reader left out while the file's other spectra were read:
    # recorded (so every spectrum a file holds is named), never raised
    in_file: bool = False

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
    data: SpectrumData | None = None  # the spectrum's arrays, made once (None for Tokens)


def _is_arraylike(obj: Any) -> bool:
    import numbers

    from astropy import units as u

    if isinstance(obj, (np.ndarray, u.Quantity)):
        return True
    return isinstance(obj, list) and len(obj) > 0 and isinstance(obj[0], numbers.Number)


def is_single_spectrum(obj: Any) -> bool:
    """One spectrum: a 1-D Spectrum, Tokens or a ``(wavelength, flux[, ivar])`` tuple."""
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
                spectra = read_file(self.path, format)
            except (OmniSpectraError, OSError) as err:
                return [Skipped(self.source, _reason(err, self.source), error=err)]
            items = [InputItem(_meta_id(s) or default_id(self.path, k), s, self.source, _survey(s))
                     for k, s in enumerate(spectra)]
            out_of_file = [Skipped(self.source, r["reason"], id=r.get("id"), in_file=True)
                           for r in getattr(spectra, "skipped_in_file", ())]
        else:
            sid = self.row_id or _meta_id(self.obj) or str(self.position)
            items = [InputItem(sid, self.obj, self.source, _survey(self.obj))]
            out_of_file = []
        out: list = list(out_of_file)
        for item in items:
            if prepare is not None:
                try:
                    item.prepared = prepare(item)
                except OmniSpectraError as err:
                    out.append(Skipped(self.source, str(err), id=item.id, error=err))
                    continue
            out.append(item)
        return out


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
        check_on_error(on_error)
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
            explicit = names_file(obj)
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
                    ignorable = result.in_file or (unit.problem is not None and unit.problem.passed_over) or (
                        isinstance(result.error, NotASpectrumError) and not unit.explicit)
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


# ---------------------------------------------------------------------------------------
# one item -> its arrays and tokens (once)


def _with_context(err: OmniSpectraError, context: str) -> OmniSpectraError:
    try:
        return type(err)(f"{context}: {err}")
    except Exception:  # pragma: no cover - an exception class with another signature
        return err


def prepare_tokens(item: InputItem, patch_size: int, stride: int,
                   support: WavelengthSupport | None, measure: bool = False) -> Tokens:
    """The tokens of one input, checked against the model's wavelength support.

    Sets ``item.data`` (the arrays, made once here and used again by the flags and the
    template fit). With ``measure``, ``tok.meta`` also gets ``quality``
    (:class:`~omnispectra.flags.SpectrumQuality`, for the flags) and ``pixel_ivar`` (see
    :func:`measure_input`), which the anomaly statistic needs.
    """
    obj = item.spectrum
    context = f"spectrum {item.id!r}" + ("" if item.source.startswith("input ") else f" ({item.source})")
    try:
        if isinstance(obj, Tokens):
            if (obj.patch_size, obj.stride) != (patch_size, stride):
                raise InvalidSpectrumError(
                    f"tokens have patch size/stride {obj.patch_size}/{obj.stride}, the model "
                    f"expects {patch_size}/{stride}")
            tok = dataclasses.replace(obj, meta=dict(obj.meta or {}))
        else:
            item.data = spectrum_data(*obj) if isinstance(obj, tuple) else spectrum_data(obj)
            if isinstance(obj, tuple) and not item.data.wavelength_unit_given:
                check_wavelength_plausible(item.data.wavelength, support)
            meta = {} if isinstance(obj, tuple) else dict(getattr(obj, "meta", None) or {})
            tok = tokenize_data(item.data, patch_size=patch_size, stride=stride, meta=meta)
        check_support(tok.wavelength[tok.valid], support)
    except OmniSpectraError as err:
        raise _with_context(err, context) from err
    tok.meta = {**tok.meta, "id": item.id}
    if measure:
        tok.meta["quality"], tok.meta["pixel_ivar"] = measure_input(obj, tok, support, item.data)
    return tok


def measure_input(obj: Any, tok: Tokens, support: WavelengthSupport | None,
                  data: SpectrumData | None = None):
    """``(SpectrumQuality, pixel ivar (T, p) in normalized units or None)`` of one input.

    ``obj`` is the spectrum (or ``(wavelength, flux, ...)`` tuple, or Tokens) that
    ``tok`` was cut from, ``data`` its arrays when already made; the quality feeds
    :func:`omnispectra.flags.input_flags`. The pixel ivar is the inverse variance in the
    tokenizer's normalized flux units, 0 on invalid pixels; for a spectrum without
    uncertainties (``data.has_ivar`` False) a constant estimated from its pixel-to-pixel
    differences (:func:`omnispectra.redshift.difference_ivar`, the template fit's estimate;
    on 100 MILES stars it flags none above the card's ``ANOMALY`` threshold); None for
    Tokens (no pixels left).
    """
    from ..flags import SpectrumQuality, spectrum_quality, support_fraction

    n_valid_tokens = int(tok.valid.sum())
    if isinstance(obj, Tokens):  # no pixels left: only what the tokens tell
        return SpectrumQuality(n_valid_tokens, float("nan"),
                               support_fraction(tok.wavelength[tok.valid], support)), None
    if data is None:
        data = spectrum_data(*obj) if isinstance(obj, tuple) else spectrum_data(obj)
    ivar = data.ivar if data.has_ivar else None  # spectrum_data knows placeholder errors
    quality = spectrum_quality(data.wavelength, data.flux, ivar, data.bad, n_valid_tokens, support)
    if ivar is None:  # no uncertainties: one noise level from the data, as the template fit does
        ivar = np.full(data.flux.shape, difference_ivar(data.flux, data.bad))
    index = patch_index(tok.n_pixels, tok.patch_size, tok.stride)
    safe = np.minimum(index, tok.n_pixels - 1)
    # the ivar of normalized flux f / scale is ivar * scale**2
    pixel_ivar = np.where(tok.pixel_valid, ivar[safe] * tok.normalization.scale ** 2, 0.0)
    return quality, pixel_ivar.astype(np.float64)
