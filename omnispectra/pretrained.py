"""Pretrained things: model weights (safetensors files that carry their own configuration)
and the Redrock template bases the redshift fit uses.

A weights file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: the
encoder's tensors plus a JSON header with the :class:`~omnispectra.model.OmniSpectraConfig`
and free-form provenance (training corpus, validation MSE, ...). Loading never unpickles
anything, so a weights file from the internet cannot run code, and every tensor's name
and shape is checked against the configuration before the model is built.

Templates: the package ships the Redrock bases in a compact form (float32 on the fitter's
log grid, :func:`omnispectra.templates.library.write_compact`, BSD-3 licence alongside);
:func:`resolve_templates` picks an explicit folder, else ``$OMNISPECTRA_TEMPLATES``, else
those. The registry also pins the full upstream files by sha256, which
:func:`fetch_templates` (``omnispectra download templates``) puts into the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .exceptions import CheckpointError, ConfigError, InvalidTemplatesError, TemplatesNotFoundError
from .fileio import atomic_write
from .model import ATTENTION_IMPLS, OmniSpectra, OmniSpectraConfig

__all__ = ["WEIGHTS_FORMAT", "WEIGHTS_FORMAT_VERSION", "save_weights", "load_weights",
           "read_weights_metadata", "read_safetensors_header", "validate_config",
           "expected_tensor_shapes", "sha256sum", "file_sha256",
           "DEFAULT_MODEL", "ModelDownloadError", "load_model", "fetch_model", "list_models",
           "read_registry", "bundled_weights_path", "bundled_card", "cache_dir",
           "TEMPLATES_RELEASE", "TEMPLATES_HELP", "bundled_templates_path", "templates_license_path",
           "locate_templates", "resolve_templates", "templates_meta", "templates_info", "fetch_templates",
           "templates_cache_dir", "TEMPLATES_ENV", "TEMPLATES_GROUP"]

WEIGHTS_FORMAT = "omnispectra-weights"
WEIGHTS_FORMAT_VERSION = 1

#: Largest safetensors JSON header read (a real one is a few kB).
MAX_HEADER_BYTES = 16 << 20
#: Upper bounds of a loadable configuration: far above any trained model, low enough that
#: working out its tensor shapes is instant.
CONFIG_LIMITS = {"patch_size": 4096, "stride": 4096, "dim": 16384, "n_layers": 256, "n_heads": 1024,
                 "mlp_ratio": 64}
#: safetensors dtype codes a weights file may use, with their sizes in bytes.
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already computed


def file_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256sum` of a file, computed once per (path, size, modification time)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256sum(path)
    return _digests[key]


def save_weights(model: OmniSpectra, path: str | os.PathLike, info: dict[str, Any] | None = None) -> str:
    """Write ``model``'s tensors and config to a safetensors file; return its sha256.

    The file is written to a temporary name next to ``path`` and renamed at the end, so
    an interrupted write never leaves a truncated file under the final name.

    Parameters
    ----------
    model : OmniSpectra
        The model to save (tensors are copied to CPU, contiguous).
    path : path-like
        Output file, conventionally ``*.safetensors``.
    info : dict, optional
        JSON-serializable provenance stored in the header (corpus, metrics, ...).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": str(WEIGHTS_FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "info": json.dumps(info or {}),
    }
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return sha256sum(path)


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The JSON header of a safetensors file, read without touching the tensor data.

    Returns
    -------
    tensors : dict
        Tensor name -> ``{"dtype", "shape", "data_offsets"}`` as stored.
    metadata : dict
        The free-form ``__metadata__`` strings.

    Raises
    ------
    CheckpointError
        Missing file, a header that is not JSON or larger than :data:`MAX_HEADER_BYTES`,
        malformed entries, or tensor data that does not fit in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a readable safetensors file: it is only {size} bytes")
        (n_header,) = struct.unpack("<Q", prefix)
        if n_header > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path} is not a readable safetensors file: its header claims {n_header} bytes")
        raw = fh.read(n_header)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: bad header ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a readable safetensors file: bad header")
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - n_header
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            ok = (all(isinstance(v, int) and v >= 0 for v in (*shape, start, end))
                  and 0 <= start <= end <= data_bytes)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path} is corrupt: tensor {name!r} has an invalid header entry "
                                  f"or its data lies outside the file ({data_bytes} data bytes)")
        if dtype in FLOAT_DTYPES and end - start != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise CheckpointError(f"{path} is corrupt: tensor {name!r} of shape {tuple(shape)} "
                                  f"does not fill its {end - start} bytes")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path} is not a readable safetensors file: bad metadata")
    return header, metadata


def validate_config(values: Any, source: str = "the configuration") -> OmniSpectraConfig:
    """An :class:`~omnispectra.model.OmniSpectraConfig` from an untrusted dict, checked first.

    Every field must have the right type (``bool`` is not an ``int``), sizes must be
    positive and at most :data:`CONFIG_LIMITS`, ``dim`` even and divisible by
    ``n_heads``, ``stride <= patch_size``, ``0 <= dropout < 1`` and ``0 < mask_ratio < 1``.

    Raises
    ------
    CheckpointError
        Naming the first offending key and value (``source`` says where it came from).
    """
    if not isinstance(values, dict):
        raise CheckpointError(f"{source} is not a mapping of model settings")
    defaults = OmniSpectraConfig()
    known = set(defaults.to_dict())
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"{source} has unknown model settings {unknown}")

    def bad(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {key}={values[key]!r} {why}")

    for key, value in values.items():
        kind = type(getattr(defaults, key))
        if kind is int and (type(value) is not int):
            raise bad(key, "is not an integer")
        if kind is int and not 1 <= value <= CONFIG_LIMITS[key]:
            raise bad(key, f"is outside [1, {CONFIG_LIMITS[key]}]")
        if kind is float and (type(value) not in (int, float) or not math.isfinite(value)):
            raise bad(key, "is not a finite number")
        if kind is bool and type(value) is not bool:
            raise bad(key, "is not true/false")
        if kind is dict and not isinstance(value, dict):
            raise bad(key, "is not a mapping")
    merged = {**defaults.to_dict(), **values}
    if merged["attention"] not in ATTENTION_IMPLS:
        raise CheckpointError(f"{source}: attention={merged['attention']!r} is not one of {ATTENTION_IMPLS}")
    if merged["dim"] % 2 or merged["dim"] % merged["n_heads"]:
        raise CheckpointError(f"{source}: dim={merged['dim']} must be even and divisible by "
                              f"n_heads={merged['n_heads']}")
    if merged["stride"] > merged["patch_size"]:
        raise CheckpointError(f"{source}: stride={merged['stride']} is larger than "
                              f"patch_size={merged['patch_size']}")
    if not 0.0 <= merged["dropout"] < 1.0 or not 0.0 < merged["mask_ratio"] < 1.0:
        raise CheckpointError(f"{source}: dropout must be in [0, 1) and mask_ratio in (0, 1)")
    try:
        return OmniSpectraConfig.from_dict(dict(values))
    except (TypeError, ValueError) as err:  # pragma: no cover - checked above
        raise CheckpointError(f"{source} is invalid: {err}") from err


def expected_tensor_shapes(config: OmniSpectraConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the model ``config`` describes (nothing allocated).

    The model is built on PyTorch's ``meta`` device, so even a huge configuration costs
    no memory; call :func:`validate_config` first to bound the time.
    """
    with torch.device("meta"):
        model = OmniSpectra(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_tensor_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                        source: str) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the ``expected`` names and shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(n for n in set(expected) & set(found) if tuple(expected[n]) != tuple(found[n]))
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing tensors {missing[:5]}")
        if unexpected:
            problems.append(f"unexpected tensors {unexpected[:5]}")
        if wrong:
            problems.append("shape mismatch for " + ", ".join(
                f"{n} {tuple(found[n])} != {tuple(expected[n])}" for n in wrong[:5]))
        raise CheckpointError(f"{source} does not match its configuration: " + "; ".join(problems))


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a weights file: ``{"config": dict, "info": dict, "format_version": int}``.

    Raises
    ------
    CheckpointError
        The file is missing, not a safetensors file, or not an omnispectra weights file.
    """
    path = Path(path)
    _, header = read_safetensors_header(path)
    if header.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an omnispectra weights file")
    try:
        version = int(header.get("format_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version != WEIGHTS_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has weights format version {version}; this omnispectra reads version "
            f"{WEIGHTS_FORMAT_VERSION}"
        )
    try:
        config = json.loads(header["config"])
        info = json.loads(header.get("info", "{}"))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has a corrupt configuration header: {err}") from err
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} has a corrupt provenance header (not a mapping)")
    return {"config": config, "info": info, "format_version": version}


def load_weights(
    path: str | os.PathLike, device: str | torch.device | None = None, **config_overrides: Any
) -> OmniSpectra:
    """Build the model a weights file describes and load its tensors (no unpickling).

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_weights` (or ``omnispectra export``).
    device : str or torch.device, optional
        Where to put the model (default CPU).
    **config_overrides
        Runtime-only settings to change, e.g. ``attention="sdpa"``.

    Returns
    -------
    OmniSpectra
        In eval mode; ``model.info`` holds the file's provenance dict plus ``"sha256"``,
        the file's digest.

    Raises
    ------
    CheckpointError
        Corrupt file, unknown format, an invalid configuration, or tensors (names,
        shapes, dtypes, sizes) that do not match it. All of this is checked from the
        file's header before the model is built or any tensor is read, so a small file
        claiming a huge model is refused without allocating it.
    """
    from safetensors.torch import load_file

    path = Path(path)
    header = read_weights_metadata(path)
    allowed = {"attention", "dropout"}
    if set(config_overrides) - allowed:
        raise ValueError(f"only {sorted(allowed)} may be overridden when loading weights")
    config = validate_config({**header["config"], **config_overrides}, source=f"{path}'s model configuration")
    entries, _ = read_safetensors_header(path)
    odd = sorted(n for n, e in entries.items() if e["dtype"] not in FLOAT_DTYPES)
    if odd:
        raise CheckpointError(f"{path}: tensors {odd[:5]} are not floating point "
                              f"(dtypes {sorted({entries[n]['dtype'] for n in odd})})")
    check_tensor_shapes({n: tuple(e["shape"]) for n, e in entries.items()},
                        expected_tensor_shapes(config), str(path))
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from err
    model = OmniSpectra(config)
    model.load_state_dict(tensors, strict=True)
    model.info = {**header["info"], "sha256": file_sha256(path)}
    return model.to(device or "cpu").eval()


# ---------------------------------------------------------------------------------------
# named models: the bundled default and a pooch registry of released weights

#: Name of the weights bundled inside the package.
DEFAULT_MODEL = "default"

_BUNDLED_WEIGHTS = "omnispectra-default.safetensors"
_BUNDLED_CARD = "omnispectra-default.json"
_REGISTRY_FILE = "registry.txt"
#: Registry group of the full Redrock template files (names ``templates/FILE``).
TEMPLATES_GROUP = "templates"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ModelDownloadError(CheckpointError, OSError):
    """Weights could not be downloaded (offline, server error) and no cached copy exists."""


def _data_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("omnispectra") / "data"))


def bundled_weights_path() -> Path:
    """Where the bundled default weights live in this installation (the file may be absent)."""
    return _data_dir() / _BUNDLED_WEIGHTS


def bundled_card() -> dict[str, Any]:
    """The bundled model's card (``omnispectra-default.json``), ``{}`` when absent."""
    card = _data_dir() / _BUNDLED_CARD
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"the bundled model card {card} is corrupt: {err}") from err


def cache_dir() -> Path:
    """The download cache: ``$OMNISPECTRA_CACHE`` or pooch's per-user cache for omnispectra.

    Raises
    ------
    ConfigError
        ``$OMNISPECTRA_CACHE`` names something that exists and is not a folder.
    """
    import pooch

    env = os.environ.get("OMNISPECTRA_CACHE")
    path = Path(env).expanduser() if env else Path(pooch.os_cache("omnispectra"))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"OMNISPECTRA_CACHE={env!r} names {path}, which is not a folder; point it "
                          "at a folder (it is created if missing) or unset it")
    return path


def read_registry(path: str | os.PathLike | None = None, group: str = "models") -> dict[str, dict[str, str]]:
    """Parse a registry file (default: the one shipped in the package).

    Each non-comment line is ``NAME URL SHA256``. A model's NAME is a plain name; a template
    file's is ``templates/FILE`` (e.g. ``templates/rrtemplate-galaxy.fits``).

    Parameters
    ----------
    path : path-like, optional
        The registry file.
    group : {"models", "templates"}
        Which entries: the models (keys: their names) or the template files (keys: FILE).

    Returns
    -------
    dict
        ``{name: {"url", "sha256"}}`` in file order.

    Raises
    ------
    CheckpointError
        A malformed line, a duplicate or reserved name, or a digest that is not 64 hex
        characters.
    """
    if group not in ("models", TEMPLATES_GROUP):
        raise ValueError(f"group must be 'models' or {TEMPLATES_GROUP!r}, not {group!r}")
    path = Path(path) if path is not None else _data_dir() / _REGISTRY_FILE
    if not path.is_file():
        return {}
    entries: dict[str, dict[str, str]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path.name} line {number}"
        if len(parts) != 3:
            raise CheckpointError(f"{where}: expected 'NAME URL SHA256', got {raw.strip()!r}")
        name, url, digest = parts
        digest = digest.lower().removeprefix("sha256:")
        kind, _, file = name.rpartition("/")
        if (kind not in ("", TEMPLATES_GROUP) or not file or not set(file) <= _NAME_CHARS
                or name == DEFAULT_MODEL):
            raise CheckpointError(f"{where}: invalid or reserved model name {name!r}")
        if name in entries:
            raise CheckpointError(f"{where}: model {name!r} is listed twice")
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise CheckpointError(f"{where}: {digest!r} is not a hex sha256 digest")
        entries[name] = {"url": url, "sha256": digest}
    prefix = f"{TEMPLATES_GROUP}/"
    if group == TEMPLATES_GROUP:
        return {n.removeprefix(prefix): e for n, e in entries.items() if n.startswith(prefix)}
    return {n: e for n, e in entries.items() if "/" not in n}


def _cache_name(name: str) -> str:
    return f"omnispectra-{name}.safetensors"


def _pooch(path: Path, files: dict[str, dict[str, str]]):
    """A pooch store in ``path`` that knows ``files`` (file name -> ``{"url", "sha256"}``)."""
    import pooch

    return pooch.create(
        path=path,
        base_url="",
        registry={f: f"sha256:{e['sha256']}" for f, e in files.items()},
        urls={f: e["url"] for f, e in files.items()},
        retry_if_failed=0,
    )


def _looks_like_path(name: str | os.PathLike) -> bool:
    if isinstance(name, os.PathLike):
        return True
    return (os.sep in name or (os.altsep or os.sep) in name or name.endswith(".safetensors")
            or Path(name).is_file())


def _check_bundled_digest(path: Path, expected: str | None) -> None:
    if not expected:
        return
    digest = file_sha256(path)
    if digest != expected.lower():
        raise CheckpointError(
            f"the bundled weights {path} do not match the sha256 in {_BUNDLED_CARD} "
            f"({digest[:12]}... != {expected[:12]}...): the installation is corrupt; reinstall omnispectra"
        )


def _known_names(registry: dict[str, dict[str, str]]) -> str:
    return ", ".join([DEFAULT_MODEL, *registry])


def fetch_model(name: str | os.PathLike = DEFAULT_MODEL, progressbar: bool | None = None) -> Path:
    """Local path of the weights file for a model name, downloading it if needed.

    Parameters
    ----------
    name : str or path-like
        ``"default"`` (the weights bundled with the package; the environment variable
        ``OMNISPECTRA_DEFAULT_MODEL`` may name another weights file to use instead), a
        name from the package's model registry (downloaded once into :func:`cache_dir`,
        then reused while its sha256 matches), or the path of a local weights file.
    progressbar : bool, optional
        Show a download progress bar (default: when stderr is a terminal).

    Raises
    ------
    CheckpointError
        Unknown name (the message lists the known ones), missing bundled weights, a
        missing local file, or a download whose sha256 does not match the registry (the
        bad download is deleted).
    ModelDownloadError
        The download failed (e.g. no network) and no cached copy exists.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise CheckpointError(f"a model name must be a string or a path, got {type(name).__name__}")
    if name == DEFAULT_MODEL:
        override = os.environ.get("OMNISPECTRA_DEFAULT_MODEL")
        if override:
            path = Path(override).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"OMNISPECTRA_DEFAULT_MODEL names {path}, which does not exist")
            return path
        path = bundled_weights_path()
        if not path.is_file():
            raise CheckpointError(
                f"the bundled default weights ({_BUNDLED_WEIGHTS}) are missing from this "
                f"installation (looked in {path.parent}); this omnispectra release does not "
                "ship trained weights yet. Pass a weights file path or a registry name to "
                "load_model() (see omnispectra.pretrained.list_models()), or set "
                "OMNISPECTRA_DEFAULT_MODEL to a weights file"
            )
        _check_bundled_digest(path, bundled_card().get("sha256"))
        return path
    registry = read_registry()
    if isinstance(name, str) and name in registry:
        return _download(name, registry, progressbar)
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        return path
    raise CheckpointError(f"unknown model {name!r}; known models: {_known_names(registry)} "
                          "(or give the path of a weights file)")


def _download(name: str, registry: dict[str, dict[str, str]], progressbar: bool | None) -> Path:
    store = _pooch(cache_dir(), {_cache_name(n): m for n, m in registry.items()})
    return _fetch_file(store, _cache_name(name), registry[name]["url"], f"model {name!r}", progressbar,
                       ModelDownloadError, CheckpointError,
                       "(or copy the file there by hand, or pass a local weights file path)")


def _fetch_file(store: Any, file: str, url: str, what: str, progressbar: bool | None,
                offline_error: type[Exception], corrupt_error: type[Exception], hint: str) -> Path:
    """``store.fetch(file)``: a download failure raises ``offline_error``; a file that does not
    match its registry sha256 is deleted and raises ``corrupt_error``."""
    import sys

    import requests

    target = Path(store.abspath) / file
    if progressbar is None:
        progressbar = bool(getattr(sys.stderr, "isatty", lambda: False)())
    try:
        return Path(store.fetch(file, progressbar=progressbar))
    except requests.exceptions.RequestException as err:
        raise offline_error(
            f"could not download {what} from {url} and there is no cached copy in "
            f"{store.abspath}: {err}. Check your network connection {hint}"
        ) from err
    except ValueError as err:
        if "hash" not in str(err).lower():
            raise
        if target.is_file():  # never keep a file that does not match its registry digest
            target.unlink()
        raise corrupt_error(
            f"the file downloaded for {what} from {url} does not match the sha256 in "
            f"the registry; the download was deleted. The file on the server has changed "
            f"or is corrupt: {err}"
        ) from err


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    attention: str | None = None,
) -> OmniSpectra:
    """Load a pretrained OmniSpectra model by name or path.

    Parameters
    ----------
    name : str or path-like
        ``"default"`` for the weights bundled with the package (works offline), a name
        from the package's registry (see :func:`list_models`; downloaded once and cached),
        or the path of a weights file written by :func:`save_weights` /
        ``omnispectra export``.
    device : str or torch.device, optional
        Where to put the model; default ``"cuda"`` when available, else ``"cpu"``.
    attention : str, optional
        Override the attention implementation (``"auto"``, ``"sdpa"``, ``"flash_attn"``,
        ``"torch_varlen"``).

    Returns
    -------
    OmniSpectra
        In eval mode; ``model.info`` holds the file's provenance, plus ``"name"`` (the
        model name, or the file name - never a folder - for a path), ``"sha256"`` (the
        weights file's digest) and ``"path"`` (for this session only: it is never written
        into results, see :func:`omnispectra.results.provenance_meta`).

    Raises
    ------
    CheckpointError, ModelDownloadError
        See :func:`fetch_model` and :func:`load_weights`.
    """
    path = fetch_model(name)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = {} if attention is None else {"attention": attention}
    try:
        model = load_weights(path, device=device, **overrides)
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(str(err)) from err
    named = isinstance(name, str) and (name == DEFAULT_MODEL or name in read_registry())
    label = name if named else Path(name).name  # a local file: its name, not where it lives
    model.info = {**model.info, "name": label, "path": str(path)}
    return model


def list_models() -> list[dict[str, Any]]:
    """Models this installation knows, with where each one is.

    Returns
    -------
    list of dict
        One dict per model with ``name``, ``source`` (``"bundled"`` or ``"registry"``),
        ``available`` (loadable without a download), ``cached`` (registry models: a
        verified copy is in the cache), ``path`` (local file or None), ``url`` and
        ``sha256`` (registry models).
    """
    bundled = bundled_weights_path()
    models = [{
        "name": DEFAULT_MODEL, "source": "bundled", "available": bundled.is_file(),
        "cached": False, "path": str(bundled) if bundled.is_file() else None,
        "url": None, "sha256": bundled_card().get("sha256") if bundled.is_file() else None,
    }]
    registry = read_registry()
    cache = cache_dir()
    for name, entry in registry.items():
        path = cache / _cache_name(name)
        cached = path.is_file() and file_sha256(path) == entry["sha256"]
        models.append({"name": name, "source": "registry", "available": cached, "cached": cached,
                       "path": str(path) if cached else None, "url": entry["url"],
                       "sha256": entry["sha256"]})
    return models


# ---------------------------------------------------------------------------------------
# templates: the bundled compact Redrock bases, the folder users choose, the full files

#: The upstream files the bundled compact templates were made from and the registry pins:
#: desihub/redrock-templates at commit 110d448e (2026-08-12), except ``rrtemplate-galaxy.fits``
#: from commit a85ec737 (2016-02-20).
TEMPLATES_RELEASE = "redrock-templates 110d448e (galaxy a85ec737)"
#: Environment variable naming a template folder (or compact file) to use instead of the bundled one.
TEMPLATES_ENV = "OMNISPECTRA_TEMPLATES"
_BUNDLED_TEMPLATES = "redrock-templates-compact.npz"
_TEMPLATES_LICENSE = "redrock-templates-LICENSE.md"

#: How to choose other templates, for the errors of :func:`resolve_templates`.
TEMPLATES_HELP = (
    "Give a folder DIR holding DIR/redrock/rrtemplate-*.fits[.gz] (the full Redrock files: "
    "`omnispectra download templates` puts them in the cache and prints the folder) or a compact "
    f".npz file, as templates=DIR (CLI: --templates DIR) or {TEMPLATES_ENV}=DIR; with neither, the "
    "compact Redrock templates bundled with omnispectra are used")


def bundled_templates_path() -> Path:
    """Where the bundled compact Redrock templates live in this installation (may be absent)."""
    return _data_dir() / _BUNDLED_TEMPLATES


def templates_license_path() -> Path:
    """The Redrock templates' licence (BSD-3, DESI Collaboration) shipped with them."""
    return _data_dir() / _TEMPLATES_LICENSE


def templates_cache_dir() -> Path:
    """The template folder :func:`fetch_templates` fills (``<cache>/templates``, files in ``redrock/``)."""
    return cache_dir() / TEMPLATES_GROUP


def _template_root(given: str | os.PathLike, what: str) -> Path:
    root = Path(given).expanduser()
    if root.is_file() and root.suffix == ".npz":
        return root
    if root.name == "redrock" and not (root / "redrock").is_dir():
        root = root.parent
    if not any((root / "redrock").glob("rrtemplate-*.fits*")):
        raise TemplatesNotFoundError(f"no Redrock templates (redrock/rrtemplate-*.fits) in {root} "
                                     f"({what}). {TEMPLATES_HELP}")
    return root


def locate_templates(templates: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The templates to use and where the choice came from.

    Precedence: ``templates`` > ``$OMNISPECTRA_TEMPLATES`` > the bundled compact templates,
    so redshifts work offline on a fresh install with no setting. A folder must hold
    ``redrock/rrtemplate-*.fits[.gz]`` (a path to the ``redrock/`` folder itself is taken
    as its parent); a compact ``.npz`` file is accepted as it is. Nothing is loaded here
    (see :func:`omnispectra.templates.library.load_library`, which validates).

    Returns
    -------
    path : Path
        The template folder or compact file.
    source : str
        ``"path"`` (the argument), ``"env"`` (``$OMNISPECTRA_TEMPLATES``) or ``"bundled"``.

    Raises
    ------
    TemplatesNotFoundError
        The folder given holds no Redrock templates, or (with nothing given) the bundled file
        is missing from the installation; the message says what to do (:data:`TEMPLATES_HELP`).
    """
    if templates is not None and str(templates):
        return _template_root(templates, "the templates given"), "path"
    env = os.environ.get(TEMPLATES_ENV)
    if env:
        return _template_root(env, f"{TEMPLATES_ENV}"), "env"
    path = bundled_templates_path()
    if not path.is_file():
        raise TemplatesNotFoundError(f"the bundled templates ({_BUNDLED_TEMPLATES}) are missing from this "
                                     f"installation (looked in {path.parent}): reinstall omnispectra. "
                                     f"{TEMPLATES_HELP}")
    return path, "bundled"


def resolve_templates(templates: str | os.PathLike | None = None) -> Path:
    """The template folder or compact file to use: :func:`locate_templates` without the source."""
    return locate_templates(templates)[0]


def _library_of(templates: Any) -> Any:
    """A TemplateLibrary from a library, a fitter (its ``library``) or a path (loaded, validated)."""
    from .templates.library import TemplateLibrary, load_library

    if isinstance(templates, TemplateLibrary):
        return templates
    if isinstance(getattr(templates, "library", None), TemplateLibrary):
        return templates.library
    return load_library(resolve_templates(templates), pyhammer=False)


def templates_meta(templates: Any = None) -> dict[str, str]:
    """What a result's ``meta`` says of the templates a redshift came from.

    Parameters
    ----------
    templates : TemplateLibrary, RedshiftFitter, path or None
        A loaded library, a fitter (its ``library``), or what :func:`resolve_templates`
        takes (then loaded and validated).

    Returns
    -------
    dict
        ``TMPLREL``: the release (the compact file's, :data:`TEMPLATES_RELEASE` for a folder
        whose Redrock files all match the registry's sha256, else ``"local"``);
        ``TMPLSHA``: the sha256 of the one file the templates came from (the compact file),
        else the sha256 of the lines ``"FILE SHA256"`` of the files, sorted. Never a path.
    """
    library = _library_of(templates)
    sources = sorted({Path(t.source) for t in library.templates if t.source})
    digests = {p.name: file_sha256(p) for p in sources if p.is_file()}
    if len(digests) == 1:
        digest = next(iter(digests.values()))
    else:
        digest = _sha256_text("".join(f"{name} {d}\n" for name, d in sorted(digests.items())))
    release = str(library.info.get("release", ""))
    if not release:
        known = set(e["sha256"] for e in read_registry(group=TEMPLATES_GROUP).values())
        release = TEMPLATES_RELEASE if digests and set(digests.values()) <= known else "local"
    return {"TMPLREL": release, "TMPLSHA": digest}


def _sha256_text(text: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def templates_info(templates: str | os.PathLike | None = None) -> dict[str, Any]:
    """What ``omnispectra info`` says of the templates a redshift would use now.

    Returns
    -------
    dict
        ``source`` (``"bundled"``, ``"env"`` or ``"path"``), ``path``, ``release`` and
        ``sha256`` (:func:`templates_meta`), ``n_templates``, ``n_bases`` (basis vectors in
        all), ``names``.

    Raises
    ------
    TemplatesNotFoundError, InvalidTemplatesError
        As :func:`locate_templates` and :func:`omnispectra.templates.library.load_library`.
    """
    path, source = locate_templates(templates)
    library = _library_of(path)
    meta = templates_meta(library)
    return {"source": source, "path": str(path), "release": meta["TMPLREL"], "sha256": meta["TMPLSHA"],
            "n_templates": len(library), "n_bases": int(sum(t.basis.shape[0] for t in library.templates)),
            "names": [t.name.removeprefix("redrock:") for t in library.templates]}


def fetch_templates(progressbar: bool | None = None) -> Path:
    """Download the full Redrock template files the registry lists into the cache (once).

    Each file is checked against its registry sha256 (a file that does not match is
    deleted); files already cached and matching are not downloaded again.

    Returns
    -------
    Path
        The template folder (:func:`templates_cache_dir`; files in its ``redrock/``), ready
        for ``templates=`` / ``--templates`` / ``$OMNISPECTRA_TEMPLATES``.

    Raises
    ------
    TemplatesNotFoundError
        The registry lists no template files, or a download failed with no cached copy.
    InvalidTemplatesError
        A downloaded file does not match its sha256.
    """
    files = read_registry(group=TEMPLATES_GROUP)
    if not files:
        raise TemplatesNotFoundError("this installation's registry lists no template files to download")
    root = templates_cache_dir()
    store = _pooch(root / "redrock", files)
    for file, entry in files.items():
        _fetch_file(store, file, entry["url"], f"template file {file}", progressbar, TemplatesNotFoundError,
                    InvalidTemplatesError, "(or copy the file there by hand)")
    return root
