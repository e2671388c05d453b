"""Model, device and dtype resolution, inference context, and the checks on model outputs.

The user verbs (:mod:`omnispectra.api`), the evaluation harness and the scripts resolve
``model=`` / ``device=`` / ``dtype=`` arguments here, so every entry point means the same
thing by ``"default"``, ``"auto"`` or ``None``. This module also reads the wavelength
support stored with a model (:func:`wavelength_support`) and checks spectra against it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import CheckpointError, ConfigError, InvalidSpectrumError, NonFiniteOutputError, UnitsError

if TYPE_CHECKING:  # pragma: no cover
    from .model import OmniSpectra

__all__ = [
    "WavelengthSupport",
    "cpu_has_native_bf16",
    "default_dtype",
    "resolve_dtype",
    "resolve_device",
    "resolve_model",
    "model_device",
    "inference",
    "wavelength_support",
    "card_entry",
    "check_support",
    "check_wavelength_plausible",
    "check_finite",
    "release_free_heap",
]

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):   # not glibc (e.g. musl)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``).

    A long run of batches of varied sizes leaves freed arrays scattered over glibc's heaps,
    which the process keeps: over an engine corpus of 5,000 spectra the full row's resident
    memory between batches rose from 790 to 890 MB while a trim brought it back to 570-680 MB
    every time. Called after each batch, the resident memory between batches is the live
    memory; the peak is not lowered (it is the live memory plus the largest batch's working
    set, :doc:`/performance`).

    Returns
    -------
    bool
        Whether memory was handed back; False where the C library has no ``malloc_trim``
        (not glibc), where this does nothing.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), Linux only.

    Without it, bf16 autocast is emulated and slower than float32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(device: Any = "cpu"):
    """The inference dtype that ``dtype="auto"`` picks on ``device``.

    bfloat16 autocast on a CUDA GPU that supports it, float32 everywhere else (CPUs
    included, even those with native bf16), so results computed on CPUs are the same on
    every machine. It is the default of :func:`omnispectra.embed` and
    :func:`omnispectra.classify`: on 134 real SDSS, LAMOST and MILES spectra the bundled
    encoder's bf16 embeddings have a cosine similarity >= 0.99998 to float32 and the source
    classifier gave the same class for every spectrum (probabilities within 0.0013;
    ``benchmarks/run.py``, section ``bf16``). The regressors
    (:func:`~omnispectra.predict_stellar_parameters`, :func:`~omnispectra.predict_redshift`)
    default to float32: on the same MILES stars bf16 moved Teff by 2 K typically but by up
    to 180 K. Pass ``dtype="bf16"`` to use bf16 on a CPU with native bf16
    (:func:`cpu_has_native_bf16`; 1.3-1.6x faster on this project's CPU), and
    ``dtype="float32"`` for float32 on a GPU. The dtype used is recorded in every result
    table's ``meta`` (``DTYPE``).
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_device(device: Any = None):
    """A usable :class:`torch.device` for ``device`` (None: CUDA when available, else CPU).

    Raises
    ------
    ConfigError
        ``device`` is not a torch device name (``"gpu"``), or names a device this
        installation cannot use (``"cuda"`` on a CPU-only torch, ``"cuda:3"`` on a
        one-GPU machine).
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available in this torch installation "
                              f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                              "device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(dtype: Any, device: Any = "cpu"):
    """Autocast dtype for ``dtype`` (``None`` means plain float32, no autocast).

    ``"auto"`` is :func:`default_dtype`; strings ``float32``/``fp32``, ``bfloat16``/``bf16``,
    ``float16``/``fp16``/``half`` and torch dtypes are accepted.
    """
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() == "auto":
            dtype = default_dtype(device)
        elif dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
        else:
            dtype = getattr(torch, _DTYPES[dtype.lower()])
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return None if dtype == torch.float32 else dtype


def resolve_model(model: Any = "default", device: Any = None) -> OmniSpectra:
    """An :class:`~omnispectra.model.OmniSpectra` from a name, a weights path or an instance.

    An instance is moved to ``device`` when one is given; names and paths are loaded with
    :func:`omnispectra.pretrained.load_model` (default device: CUDA when available). The
    device is checked first (:func:`resolve_device`: a typed :class:`ConfigError` for an
    unknown or unavailable device).
    """
    from .model import OmniSpectra
    from .pretrained import load_model

    if isinstance(model, OmniSpectra):
        return model if device is None else model.to(resolve_device(device))
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device=resolve_device(device))
    raise CheckpointError(
        f"model must be a model name, a weights-file path or an OmniSpectra instance, got "
        f"{type(model).__name__}")


def model_device(model: OmniSpectra):
    """The device of the model's parameters."""
    return next(model.parameters()).device


@contextlib.contextmanager
def inference(model: OmniSpectra, dtype: Any):
    """No-grad eval mode (restored afterwards), under autocast when ``dtype`` is set."""
    import torch

    device_type = model_device(model).type
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if dtype is None:
                yield
            else:
                with torch.autocast(device_type=device_type, dtype=dtype):
                    yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------
# wavelength support


class WavelengthSupport(dict):
    """The wavelength range a model was trained on (vacuum Angstrom).

    A dict as stored in the model card (``overall`` ``[min, max]``, ``surveys`` ``{name:
    {min, max, spectra}}``) with :attr:`range` for the overall interval.
    """

    @property
    def range(self) -> tuple[float, float]:
        """``(min, max)`` over all training surveys."""
        lo, hi = self["overall"]
        return float(lo), float(hi)


def card_entry(model: Any, key: str) -> Any:
    """An entry of a model's card (``wavelength_support``, ``anomaly``, ...), or None.

    Looked up in the weights file's provenance (``model.info[key]``) and, for the bundled
    model, in its card (``omnispectra/data/omnispectra-default.json``).
    """
    from .pretrained import bundled_card, bundled_weights_path

    info = dict(getattr(model, "info", None) or {})
    value = info.get(key)
    if value:
        return value
    path = info.get("path")
    if path and Path(path).resolve() == bundled_weights_path().resolve():
        try:
            return bundled_card().get(key)
        except CheckpointError:  # a corrupt card: nothing known
            return None
    return None


def wavelength_support(model: Any = "default") -> WavelengthSupport | None:
    """The wavelength support stored with a model, or None when it has none.

    Looked up in the weights file's provenance (``model.info['wavelength_support']``) and,
    for the bundled model, in its card (``omnispectra/data/omnispectra-default.json``,
    computed from the training corpus by ``scripts/make_bundled.py``).

    Parameters
    ----------
    model : str, path-like or OmniSpectra
        As for :func:`resolve_model` (a name or path is loaded on the CPU).
    """
    net = resolve_model(model, "cpu" if isinstance(model, (str, os.PathLike)) else None)
    support = card_entry(net, "wavelength_support")
    return None if not support else WavelengthSupport(support)


def check_support(token_wavelength: np.ndarray, support: WavelengthSupport | None) -> None:
    """Refuse a spectrum whose tokens all lie outside the model's wavelength support.

    Raises
    ------
    InvalidSpectrumError
        Naming the spectrum's range and the model's range.
    """
    if support is None or token_wavelength.size == 0:
        return
    lo, hi = support.range
    if np.all((token_wavelength < lo) | (token_wavelength > hi)):
        raise InvalidSpectrumError(
            f"the spectrum's tokens lie at {token_wavelength.min():.1f}-{token_wavelength.max():.1f} "
            "Angstrom, "
            f"entirely outside the model's wavelength support {lo:.1f}-{hi:.1f} Angstrom (its "
            "training data); the model cannot say anything about it")


#: Minimum fraction of a unit-less wavelength range that must fall inside the support.
_PLAUSIBLE_FRACTION = 0.5


def check_wavelength_plausible(wavelength: np.ndarray, support: WavelengthSupport | None) -> None:
    """Check that plain-array wavelengths, taken to be Angstrom, are plausible for the model.

    At least half of the range must lie inside the model's wavelength support; otherwise
    the values were most likely given in another unit (nm, micron, or off by a decade),
    and the spectrum is refused with a message saying so. Without a stored support the
    check uses 100-100 000 Angstrom.

    Raises
    ------
    UnitsError
    """
    lo, hi = support.range if support is not None else (100.0, 100_000.0)
    w0, w1 = float(wavelength[0]), float(wavelength[-1])
    inside = max(0.0, min(w1, hi) - max(w0, lo))
    if inside >= _PLAUSIBLE_FRACTION * (w1 - w0) and w1 > w0:
        return
    guesses = []
    for unit, factor in (("nm", 10.0), ("micron", 1e4), ("units of 0.1 Angstrom (off by a decade)", 0.1)):
        a, b = w0 * factor, w1 * factor
        if max(0.0, min(b, hi) - max(a, lo)) >= _PLAUSIBLE_FRACTION * (b - a):
            guesses.append(f"{unit} ({a:.6g}-{b:.6g} Angstrom)")
    hint = f"; the values would fit as {' or '.join(guesses)}" if guesses else ""
    raise UnitsError(
        f"wavelengths given without units were assumed to be Angstrom, but {w0:.6g}-{w1:.6g} "
        f"Angstrom lies mostly outside the model's wavelength support {lo:.1f}-{hi:.1f} "
        f"Angstrom{hint}. Pass the wavelength as an astropy Quantity (e.g. wave * u.nm)")


def check_finite(values: np.ndarray, what: str, ids: list[str] | None = None) -> None:
    """Refuse NaN or inf in a model output (an embedding, probabilities, predictions).

    Raises
    ------
    NonFiniteOutputError
        Naming the rows (ids) affected.
    """
    values = np.asarray(values)
    if values.size == 0 or np.all(np.isfinite(values)):
        return
    rows = np.flatnonzero(~np.all(np.isfinite(values.reshape(values.shape[0], -1)), axis=1)) \
        if values.ndim > 0 else np.zeros(1, int)
    names = [ids[i] for i in rows[:5]] if ids is not None else [str(i) for i in rows[:5]]
    raise NonFiniteOutputError(
        f"the {what} of {len(rows)} spectrum/spectra ({', '.join(names)}"
        f"{', ...' if len(rows) > 5 else ''}) is not finite (NaN or inf)")
