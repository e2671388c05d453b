"""Downstream probes on OmniSpectra embeddings: heads, class weights, samplers, save/load.

Paper, section *Downstream Linear Probe*: the encoder's hidden states are mean-pooled
over the valid tokens (:meth:`omnispectra.model.OmniSpectra.embed`), normalized with a
``LayerNorm`` and mapped by one ``Linear`` layer to logits (classification) or
normalized targets (regression). This module holds the pieces that do not need
Lightning (training lives in :mod:`omnispectra.training.probe_module`):

- :class:`Probe`: a head (``linear`` = LayerNorm -> Linear, or ``mlp`` = LayerNorm ->
  [Linear -> ReLU -> Dropout] x n -> Linear; optionally an ensemble of ``members`` such
  heads, trained independently with different seeds and averaged, see
  :class:`HeadEnsemble`) plus everything needed to use it: the task kind, label/class
  names, the target transforms (``log10`` for Teff) and the training-set normalization
  of regression targets, and the fingerprint of the encoder it was trained on;
- :func:`class_weights` (inverse of the normalized square root of the class counts,
  as in the paper's source classification) and :func:`class_balanced_sampler` (a
  ``WeightedRandomSampler`` drawing each training spectrum with its class's weight);
- :class:`KNNProbe`: distance-weighted k-nearest-neighbour regression on embeddings
  (the zero-shot protocol for galaxy properties, following AstroCLIP);
- :func:`save_probe` / :func:`load_probe`: safetensors + a JSON header (no pickle);
  loading a probe for the wrong encoder raises :class:`~omnispectra.exceptions.CheckpointError`.

Regression targets are normalized with the *training-set* mean and standard deviation
(the paper estimates them per training batch; a fixed training-set estimate gives the
same optimum and a well-defined de-normalization at prediction time).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .exceptions import CheckpointError
from .fileio import atomic_write
from .pretrained import bundled_weights_path

__all__ = [
    "Probe",
    "KNNProbe",
    "HeadEnsemble",
    "make_head",
    "class_weights",
    "class_balanced_sampler",
    "fit_normalization",
    "ensemble_spread",
    "TRANSFORMS",
    "encoder_fingerprint",
    "encoder_description",
    "save_probe",
    "load_probe",
    "read_probe_header",
    "validate_probe_header",
    "PROBE_FORMAT",
    "PROBE_FILES",
    "bundled_probe_path",
    "resolve_probe",
    "checked_probe",
    "probe_meta",
    "stellar_domain_flags",
    "stellar_grids",
    "MIN_GRID_COVERAGE",
]

PROBE_FORMAT = "omnispectra-probe"
#: File names of the probes shipped in ``omnispectra/data``, by task (made by
#: ``omnispectra train-predictors``, :func:`omnispectra.training.predictors.train_predictors`).
PROBE_FILES = {
    "source_class": "probe-source-class.safetensors",
    "stellar_params": "probe-stellar-params.safetensors",
    "stellar_params_survey": "probe-stellar-params-survey.safetensors",
    "redshift": "probe-redshift.safetensors",
}
#: What makes a bundled probe other than ``omnispectra train-predictors`` (named when it is missing).
_TRAINERS = {"stellar_params_survey": "scripts/train_stellar_survey.py (in a source checkout)"}
PROBE_FORMAT_VERSION = 1
EPS = 1e-8
KINDS = ("classification", "regression")

# forward transform applied to a target before normalization, and its inverse
TRANSFORMS: dict[str, tuple[Any, Any]] = {
    "identity": (lambda v: v, lambda v: v),
    "log10": (np.log10, lambda v: np.power(10.0, v)),
}


# ---------------------------------------------------------------------------------------
# class imbalance


def class_weights(labels: Sequence[int] | np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Per-class loss weights: the inverse of the normalized square root of the counts.

    With counts ``c_k`` the weight is ``w_k = sum_j sqrt(c_j) / sqrt(c_k)`` (paper,
    *Source Classification*). Classes absent from ``labels`` get weight 0. Negative or
    NaN labels are ignored.

    >>> class_weights([0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    array([7.  , 3.5 , 1.75])
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    y = y[np.isfinite(y) & (y >= 0)].astype(np.int64)
    n = int(n_classes if n_classes is not None else (y.max() + 1 if y.size else 0))
    counts = np.bincount(y, minlength=n)[:n].astype(np.float64)
    root = np.sqrt(counts)
    total = root.sum()
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, total / np.where(root > 0, root, 1.0), 0.0)
    return weights


def class_balanced_sampler(
    labels: Sequence[int] | np.ndarray,
    weights: np.ndarray | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> torch.utils.data.WeightedRandomSampler:
    """A ``WeightedRandomSampler`` drawing training item ``i`` with weight ``weights[labels[i]]``.

    ``weights`` default to :func:`class_weights` of ``labels``; ``num_samples`` to
    ``len(labels)``; draws are with replacement and reproducible from ``seed``. Use it
    for the training set only: the test set keeps its natural class distribution.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    if weights is None:
        weights = class_weights(y)
    per_item = torch.as_tensor(np.asarray(weights, dtype=np.float64)[y], dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.WeightedRandomSampler(per_item, int(num_samples or y.size),
                                                  replacement=True, generator=generator)


def fit_normalization(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware per-column mean and standard deviation (1 where undefined or zero)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    mean = np.zeros(y.shape[1])
    std = np.ones(y.shape[1])
    for k in range(y.shape[1]):
        col = y[:, k][np.isfinite(y[:, k])]
        if col.size:
            mean[k] = col.mean()
            s = col.std()
            std[k] = s if s > 0 and math.isfinite(s) else 1.0
    return mean, std


def ensemble_spread(members: np.ndarray) -> np.ndarray:
    """The raw uncertainty of an ensemble: the standard deviation (ddof 1) of the members'
    outputs over axis 0, ``(M, ...) -> (...)``. The one definition both the calibration of
    ``sigma_scale`` (:mod:`omnispectra.training.predictors`) and :meth:`Probe.predict_with_spread`
    use, so that the shipped errors are the calibrated ones."""
    return np.asarray(members, dtype=np.float64).std(axis=0, ddof=1)


# ---------------------------------------------------------------------------------------
# heads


def make_head(in_dim: int, n_out: int, head: str = "linear", hidden: Sequence[int] = (),
              dropout: float = 0.0, layer_norm: bool = True) -> nn.Sequential:
    """``linear``: LayerNorm -> Linear (the paper's probe). ``mlp``: LayerNorm ->
    [Linear -> ReLU -> Dropout] per hidden width -> Linear."""
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if layer_norm else []
    if head == "linear":
        if hidden:
            raise ValueError("a linear head has no hidden layers")
        layers.append(nn.Linear(in_dim, n_out))
    elif head == "mlp":
        if not hidden:
            raise ValueError("an mlp head needs at least one hidden width")
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, n_out))
    else:
        raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
    return nn.Sequential(*layers)


class HeadEnsemble(nn.Module):
    """The mean of the raw outputs of ``n`` heads of one architecture (:func:`make_head`).

    Averaging independently trained heads (different initializations, batch orders and
    dropout draws) lowers the variance of a head fitted on a few hundred spectra, which
    is what limits the stellar-parameter probe. The members are trained one by one
    (:func:`omnispectra.training.probe_module.fit_probe_on_embeddings`), each by the
    same loss as a single head, not through the average: jointly training the average
    would just be one wider network. Classification averages logits.
    """

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(heads) < 2:
            raise ValueError("an ensemble needs at least two heads")
        self.members = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


class Probe(nn.Module):
    """A trained (or trainable) head on pooled encoder embeddings, with its metadata.

    Parameters
    ----------
    in_dim : int
        Embedding width ``D`` of the encoder.
    kind : {"classification", "regression"}
    names : sequence of str
        Class names (classification; output ``k`` is class ``names[k]``) or target
        names (regression).
    head, hidden, dropout, layer_norm
        See :func:`make_head`.
    members : int
        1: one head (the paper's probe); more: a :class:`HeadEnsemble` of that many
        heads of this architecture.
    transforms : mapping, optional
        Target name -> key of :data:`TRANSFORMS` (regression; default identity).
    units : mapping, optional
        Target name -> unit string of the physical values.
    mean, std : array, optional
        Training-set normalization of the (transformed) regression targets.
    encoder : dict, optional
        :func:`encoder_description` of the encoder the head was trained on.
    info : dict, optional
        Free-form JSON-serializable provenance (training recipe, held-out scores).
    calibration : dict, optional
        Post-hoc calibration fitted on a held-out fold (:mod:`omnispectra.training.predictors`),
        stored in the header's ``calibration``: ``temperature`` (classification: the
        probabilities are ``softmax(logits / temperature)``), ``sigma_scale`` (regression:
        one factor per target multiplying the ensemble spread, in the transformed space),
        ``coverage_1sigma``, ``fold``. Absent keys mean no calibration
        (:attr:`temperature` 1, :attr:`sigma_scale` all 1).
    """

    def __init__(
        self,
        in_dim: int,
        kind: str,
        names: Sequence[str],
        head: str = "linear",
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        layer_norm: bool = True,
        members: int = 1,
        transforms: Mapping[str, str] | None = None,
        units: Mapping[str, str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        encoder: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
        calibration: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.names = [str(n) for n in names]
        if not self.names:
            raise ValueError("a probe needs at least one class or target name")
        if kind == "classification" and len(self.names) < 2:
            raise ValueError("a classification probe needs at least two classes")
        self.in_dim = int(in_dim)
        self.head_type = head
        self.hidden = [int(h) for h in hidden]
        self.dropout = float(dropout)
        self.layer_norm = bool(layer_norm)
        self.members = int(members)
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        heads = [make_head(self.in_dim, len(self.names), head, self.hidden, self.dropout, self.layer_norm)
                 for _ in range(self.members)]
        # a single head keeps the original tensor names (head.0.weight, ...) of version-1 files
        self.head = heads[0] if self.members == 1 else HeadEnsemble(heads)
        transforms = dict(transforms or {})
        unknown = set(transforms.values()) - set(TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown transform(s) {sorted(unknown)}; known: {sorted(TRANSFORMS)}")
        self.transforms = ({n: transforms.get(n, "identity") for n in self.names}
                           if kind == "regression" else {})
        self.units = {str(k): str(v) for k, v in (units or {}).items()}
        n = len(self.names)
        self.mean = np.zeros(n) if mean is None else np.asarray(mean, dtype=np.float64).reshape(n)
        self.std = np.ones(n) if std is None else np.asarray(std, dtype=np.float64).reshape(n)
        self.encoder = dict(encoder or {})
        self.info = dict(info or {})
        self.calibration = dict(calibration or {})

    @property
    def n_out(self) -> int:
        """Number of outputs: classes (classification) or targets (regression)."""
        return len(self.names)

    # -- calibration --------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """Softmax temperature of a classification probe (``calibration.temperature``; 1 if absent).

        Raises
        ------
        CheckpointError
            A stored temperature that is not a positive finite number.
        """
        value = self.calibration.get("temperature", 1.0)
        try:
            t = float(value)
        except (TypeError, ValueError):
            t = float("nan")
        if not (math.isfinite(t) and t > 0):
            raise CheckpointError(f"the probe's calibration temperature must be a positive number, "
                                  f"got {value!r}")
        return t

    @property
    def sigma_scale(self) -> np.ndarray:
        """Per-target factors on the ensemble spread (``calibration.sigma_scale``; ones if absent).

        Raises
        ------
        CheckpointError
            A stored ``sigma_scale`` that is not one positive finite number per target.
        """
        value = self.calibration.get("sigma_scale")
        if value is None:
            return np.ones(self.n_out)
        try:
            scale = np.asarray(value, dtype=np.float64).reshape(self.n_out)
        except (TypeError, ValueError):
            scale = np.full(self.n_out, np.nan)
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise CheckpointError(f"the probe's calibration sigma_scale must hold {self.n_out} positive "
                                  f"numbers (one per target {self.names}), got {value!r}")
        return scale

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Raw outputs: logits, or normalized (transformed) targets."""
        return self.head(embeddings)

    # -- targets ------------------------------------------------------------------------
    def transform_targets(self, y: np.ndarray) -> np.ndarray:
        """Physical targets ``(N, n_out)`` -> transformed (e.g. log10 Teff), NaN kept."""
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.n_out).copy()
        for k, name in enumerate(self.names):
            fwd = TRANSFORMS[self.transforms[name]][0]
            with np.errstate(all="ignore"):
                y[:, k] = fwd(y[:, k])
        return y

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.n_out).copy()
        for k, name in enumerate(self.names):
            y[:, k] = TRANSFORMS[self.transforms[name]][1](y[:, k])
        return y

    def fit_normalization(self, y_physical: np.ndarray) -> np.ndarray:
        """Set :attr:`mean`/:attr:`std` from training targets; return them normalized."""
        z = self.transform_targets(y_physical)
        self.mean, self.std = fit_normalization(z)
        return self.normalize(z)

    def normalize(self, y_transformed: np.ndarray) -> np.ndarray:
        return (np.asarray(y_transformed, dtype=np.float64) - self.mean) / (self.std + EPS)

    def denormalize(self, y_norm: np.ndarray) -> np.ndarray:
        """Normalized outputs -> transformed targets (e.g. log10 Teff)."""
        return np.asarray(y_norm, dtype=np.float64) * (self.std + EPS) + self.mean

    # -- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def raw_predict(self, embeddings: Any, batch_size: int = 4096) -> np.ndarray:
        """Outputs for ``(N, D)`` embeddings (numpy or tensor), in eval mode."""
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected embeddings of shape (N, {self.in_dim}), got {tuple(x.shape)}")
        was = self.training
        self.eval()
        param = next(self.parameters())
        try:
            outs = [self(x[i:i + batch_size].to(param.device, param.dtype)).float().cpu()
                    for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was)
        return torch.cat(outs).numpy() if outs else np.zeros((0, self.n_out), np.float32)

    def predict(self, embeddings: Any) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` or physical targets ``(N, n_targets)``.

        Probabilities are calibrated: ``softmax(logits / temperature)`` (:attr:`temperature`;
        :meth:`raw_predict` gives the uncalibrated logits, averaged over an ensemble).
        """
        out = self.raw_predict(embeddings).astype(np.float64)
        if self.kind == "classification":
            return self.probabilities(out)
        return self.inverse_transform(self.denormalize(out))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of logits ``(..., n_classes)``: ``softmax(logits / temperature)``."""
        out = np.asarray(logits, dtype=np.float64) / self.temperature
        out = out - out.max(axis=-1, keepdims=True)
        p = np.exp(out)
        return p / p.sum(axis=-1, keepdims=True)

    @torch.no_grad()
    def member_outputs(self, embeddings: Any) -> np.ndarray:
        """Raw outputs of every ensemble member, ``(members, N, n_out)`` (``(1, N, n_out)``
        for a single head); their mean over axis 0 is :meth:`raw_predict`."""
        if self.members == 1:
            return self.raw_predict(embeddings)[None]
        heads = self.head.members
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        was = self.training
        self.eval()
        param = next(self.parameters())
        try:
            outs = [torch.stack([m(x[i:i + 4096].to(param.device, param.dtype)) for m in heads]).float().cpu()
                    for i in range(0, x.shape[0], 4096)]
        finally:
            self.train(was)
        return (torch.cat(outs, dim=1).numpy() if outs
                else np.zeros((self.members, 0, self.n_out), np.float32))

    def predict_with_spread(self, embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
        """Regression targets and their 1-sigma uncertainties, both physical ``(N, n_targets)``.

        The spread (:func:`ensemble_spread`: standard deviation, ddof 1) of the ensemble members' outputs in
        the transformed space (e.g. log10 Teff), times :attr:`sigma_scale`, mapped to
        physical units through the inverse transform (half the width of
        ``inverse(y + s) - inverse(y - s)``; for log10 Teff this is ``Teff * ln10 * s`` to
        first order). A single head has no spread: NaN uncertainties.
        """
        members = self.member_outputs(embeddings).astype(np.float64)          # (M, N, k)
        centre = self.denormalize(members.mean(0))                              # transformed
        values = self.inverse_transform(centre)
        if members.shape[0] < 2:
            return values, np.full_like(values, np.nan)
        spread = ensemble_spread(members) * (self.std + EPS) * self.sigma_scale
        upper, lower = self.inverse_transform(centre + spread), self.inverse_transform(centre - spread)
        errors = 0.5 * np.abs(upper - lower)
        return values, errors

    def predict_transformed(self, embeddings: Any) -> np.ndarray:
        """Regression outputs in the transformed (fitted) space, e.g. log10 Teff."""
        return self.denormalize(self.raw_predict(embeddings))

    # -- (de)serialization ---------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        """The JSON-serializable description stored with the tensors."""
        return {
            "kind": self.kind,
            "names": self.names,
            "head": {"type": self.head_type, "in_dim": self.in_dim, "hidden": self.hidden,
                     "dropout": self.dropout, "layer_norm": self.layer_norm, "members": self.members},
            "transforms": self.transforms,
            "units": self.units,
            "normalization": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "encoder": self.encoder,
            "info": self.info,
            **({"calibration": self.calibration} if self.calibration else {}),
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Probe:
        head = header["head"]
        norm = header.get("normalization") or {}
        return cls(in_dim=head["in_dim"], kind=header["kind"], names=header["names"], head=head["type"],
                   hidden=head.get("hidden", ()), dropout=head.get("dropout", 0.0),
                   layer_norm=head.get("layer_norm", True), members=head.get("members", 1),
                   transforms=header.get("transforms"),
                   units=header.get("units"), mean=norm.get("mean"), std=norm.get("std"),
                   encoder=header.get("encoder"), info=header.get("info"),
                   calibration=header.get("calibration"))

    def check_encoder(self, model: Any, what: str = "probe") -> None:
        """Raise :class:`CheckpointError` unless ``model`` is the encoder this probe belongs to
        (the message calls the probe ``what``)."""
        check_encoder(self.encoder, model, what=what)

    def __repr__(self) -> str:
        arch = self.head_type if not self.hidden else f"{self.head_type}{self.hidden}"
        if self.members > 1:
            arch = f"{self.members} x {arch}"
        return f"<Probe {self.kind} {arch} {self.in_dim}->{self.names}>"


class KNNProbe:
    """Distance-weighted k-nearest-neighbour regression on embeddings (no training).

    The zero-shot protocol of the paper's galaxy-property table (after AstroCLIP):
    embeddings are standardized with the training set's per-dimension statistics and a
    target is the inverse-distance-weighted mean over the ``k`` nearest training
    spectra (Euclidean). NaN targets of a neighbour are skipped.
    """

    def __init__(self, k: int = 16) -> None:
        self.k = int(k)

    def fit(self, embeddings: np.ndarray, targets: np.ndarray) -> KNNProbe:
        x = np.asarray(embeddings, dtype=np.float64)
        self.mean_ = x.mean(0)
        self.scale_ = x.std(0) + 1e-6
        self.x_ = (x - self.mean_) / self.scale_
        y = np.asarray(targets, dtype=np.float64)
        self.y_ = y[:, None] if y.ndim == 1 else y
        return self

    def predict(self, embeddings: np.ndarray, chunk: int = 1024) -> np.ndarray:
        q = (np.asarray(embeddings, dtype=np.float64) - self.mean_) / self.scale_
        k = min(self.k, self.x_.shape[0])
        out = np.empty((q.shape[0], self.y_.shape[1]))
        for s in range(0, q.shape[0], chunk):
            d = np.sqrt(np.maximum(((q[s:s + chunk, None, :] - self.x_[None]) ** 2).sum(-1), 0.0))
            idx = np.argsort(d, axis=1)[:, :k]
            dist = np.take_along_axis(d, idx, axis=1)
            w = 1.0 / np.maximum(dist, 1e-12)
            ny = self.y_[idx]                                   # (n, k, t)
            ok = np.isfinite(ny)
            ww = w[..., None] * ok
            with np.errstate(invalid="ignore", divide="ignore"):
                out[s:s + chunk] = (np.where(ok, ny, 0.0) * ww).sum(1) / ww.sum(1)
        return out


# ---------------------------------------------------------------------------------------
# encoder identity


def encoder_fingerprint(model: nn.Module) -> str:
    """sha256 over the encoder's tensors (names, dtypes, shapes and bytes, sorted by name).

    Independent of how the model was obtained (file, registry, memory) and of its device.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def encoder_description(model: nn.Module) -> dict[str, Any]:
    """``{"sha256", "config", "name", "file_sha256"}`` of an :class:`~omnispectra.model.OmniSpectra`."""
    info = getattr(model, "info", {}) or {}
    desc = {"sha256": encoder_fingerprint(model), "config": model.config.to_dict()}
    if info.get("name"):
        desc["name"] = str(info["name"])
    path = info.get("path")
    if path and os.path.isfile(path):
        from .pretrained import file_sha256  # cached: load_model already hashed this file

        desc["file_sha256"] = file_sha256(path)
    return desc


def check_encoder(expected: Mapping[str, Any], model: Any, what: str = "probe") -> None:
    """Raise :class:`CheckpointError` when ``model`` is not the encoder ``expected`` describes."""
    if not expected or "sha256" not in expected:
        raise CheckpointError(f"the {what} does not record which encoder it belongs to")
    config = model.config.to_dict()
    want = {k: v for k, v in (expected.get("config") or {}).items() if k not in ("attention", "extra")}
    have = {k: v for k, v in config.items() if k not in ("attention", "extra")}
    if want and want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise CheckpointError(
            f"the {what} was trained on a different encoder: configuration differs in {diff} "
            f"(probe: { {k: want.get(k) for k in diff} }, model: { {k: have.get(k) for k in diff} })")
    digest = encoder_fingerprint(model)
    if digest != expected["sha256"]:
        name = expected.get("name", "an encoder")
        raise CheckpointError(
            f"the {what} was trained on {name} with weights sha256 {expected['sha256'][:12]}..., "
            f"but the given model's weights have sha256 {digest[:12]}...; load the matching "
            "encoder or retrain the probe (omnispectra train-probe / train-predictors)")


# ---------------------------------------------------------------------------------------
# files


def save_probe(probe: Probe, path: str | os.PathLike, card: bool = True) -> Path:
    """Write a probe as safetensors (tensors) + JSON header metadata; no pickle.

    Both files are written atomically (:func:`omnispectra.fileio.atomic_write`), mode
    0644 (package data: readable by everyone). With ``card=True`` the header is also
    written, human-readable, to ``<path>.json`` (``.safetensors`` replaced).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in probe.state_dict().items()}
    header = probe.header()
    metadata = {"format": PROBE_FORMAT, "format_version": str(PROBE_FORMAT_VERSION),
                "probe": json.dumps(header)}
    with atomic_write(path, mode=0o644) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    if card:
        with atomic_write(path.with_suffix(".json"), mode=0o644) as tmp:
            tmp.write_text(json.dumps(header, indent=2) + "\n")
    return path


def read_probe_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a probe file (raises :class:`CheckpointError` if it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"probe file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if meta.get("format") != PROBE_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an omnispectra probe")
    if int(meta.get("format_version", -1)) != PROBE_FORMAT_VERSION:
        raise CheckpointError(f"{path} has probe format version {meta.get('format_version')}; "
                              f"this omnispectra reads version {PROBE_FORMAT_VERSION}")
    try:
        return json.loads(meta["probe"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has a corrupt probe header: {err}") from err


# ---------------------------------------------------------------------------------------
# header validation: every field a predictor reads is checked when the file is loaded, so
# that a bad probe fails before any spectrum is read (not after a whole embedding run)

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 60, 60, 6, 4


def _bad_field(source: str, field: str, expected: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{source}: invalid probe header field {field!r}: expected {expected}, "
                           f"got {_SHORT.repr(value)}")


def _is_number(value: Any) -> bool:
    """A finite real number (JSON int or float; not a bool, a string or null)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _is_list(value: Any) -> bool:
    """A JSON list (or, for an in-memory probe, a tuple or 1-D array)."""
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum


def _check_numbers(source: str, field: str, value: Any, n: int, positive: bool = False) -> None:
    """``value`` is a list of ``n`` finite (positive) numbers."""
    what = f"a list of {n} finite {'positive ' if positive else ''}numbers"
    if not _is_list(value) or len(value) != n or not all(_is_number(v) for v in value):
        raise _bad_field(source, field, what, value)
    if positive and not all(float(v) > 0 for v in value):
        raise _bad_field(source, field, what, value)


def _check_head(source: str, head: Any) -> None:
    if not isinstance(head, Mapping):
        raise _bad_field(source, "head", "an object", head)
    if head.get("type") not in ("linear", "mlp"):
        raise _bad_field(source, "head.type", "'linear' or 'mlp'", head.get("type"))
    if not _is_count(head.get("in_dim"), 1):
        raise _bad_field(source, "head.in_dim", "a positive integer", head.get("in_dim"))
    hidden = head.get("hidden", [])
    if not _is_list(hidden) or not all(_is_count(h, 1) for h in hidden):
        raise _bad_field(source, "head.hidden", "a list of positive integers", hidden)
    dropout = head.get("dropout", 0.0)
    if not (_is_number(dropout) and 0.0 <= float(dropout) < 1.0):
        raise _bad_field(source, "head.dropout", "a number in [0, 1)", dropout)
    if not isinstance(head.get("layer_norm", True), bool):
        raise _bad_field(source, "head.layer_norm", "true or false", head.get("layer_norm"))
    if not _is_count(head.get("members", 1), 1):
        raise _bad_field(source, "head.members", "a positive integer", head.get("members"))


def _check_targets(source: str, header: Mapping[str, Any]) -> list[str]:
    """``kind``, ``names``, ``transforms``, ``units``, ``normalization``; returns the names."""
    kind, names = header.get("kind"), header.get("names")
    if kind not in KINDS:
        raise _bad_field(source, "kind", f"one of {list(KINDS)}", kind)
    minimum = 2 if kind == "classification" else 1
    if (not _is_list(names) or len(names) < minimum or len(set(map(str, names))) != len(names)
            or not all(isinstance(n, str) and n for n in names)):
        raise _bad_field(source, "names", f"a list of at least {minimum} distinct non-empty strings", names)
    transforms = header.get("transforms") or {}
    if not isinstance(transforms, Mapping) or not all(
            k in names and v in TRANSFORMS for k, v in transforms.items()):
        raise _bad_field(source, "transforms", f"an object mapping target names to one of "
                         f"{sorted(TRANSFORMS)}", transforms)
    units = header.get("units") or {}
    if not isinstance(units, Mapping) or not all(isinstance(v, str) for v in units.values()):
        raise _bad_field(source, "units", "an object mapping names to unit strings", units)
    norm = header.get("normalization") or {}
    if not isinstance(norm, Mapping):
        raise _bad_field(source, "normalization", "an object with 'mean' and 'std'", norm)
    for key in ("mean", "std"):
        if norm.get(key) is not None:
            _check_numbers(source, f"normalization.{key}", norm[key], len(names), positive=key == "std")
    return [str(n) for n in names]


def _check_support(source: str, support: Any) -> None:
    """``info.wavelength_support``: ``overall`` ``[min, max]`` and optional ``surveys``
    ``{name: {min, max[, spectra]}}`` in Angstrom (the format of
    :func:`omnispectra.flags.support_fraction`)."""
    field = "info.wavelength_support"
    if support is None:
        return
    if not isinstance(support, Mapping):
        raise _bad_field(source, field, "an object with 'overall' [min, max]", support)
    overall = support.get("overall")
    interval = "[min, max] with 0 < min < max (Angstrom)"
    if not (_is_list(overall) and len(overall) == 2 and all(_is_number(v) for v in overall)
            and 0 < float(overall[0]) < float(overall[1])):
        raise _bad_field(source, f"{field}.overall", interval, overall)
    surveys = support.get("surveys", {})
    if not isinstance(surveys, Mapping):
        raise _bad_field(source, f"{field}.surveys", "an object of {min, max} per survey", surveys)
    for name, entry in surveys.items():
        ok = (isinstance(entry, Mapping) and _is_number(entry.get("min")) and _is_number(entry.get("max"))
              and 0 < float(entry["min"]) <= float(entry["max"])
              and ("spectra" not in entry or _is_count(entry["spectra"], 0)))
        if not ok:
            raise _bad_field(source, f"{field}.surveys.{name}", "{min, max[, spectra]} with "
                             "0 < min <= max (Angstrom) and a count of spectra", entry)


def _check_calibration(source: str, calibration: Any, names: list[str]) -> None:
    from .class_evidence import COMBINATION_KEY, combination_of

    if not isinstance(calibration, Mapping):
        raise _bad_field(source, "calibration", "an object", calibration)
    if "temperature" in calibration and not (_is_number(calibration["temperature"])
                                             and float(calibration["temperature"]) > 0):
        raise _bad_field(source, "calibration.temperature", "a positive finite number",
                         calibration["temperature"])
    if calibration.get("sigma_scale") is not None:
        _check_numbers(source, "calibration.sigma_scale", calibration["sigma_scale"], len(names),
                       positive=True)
    try:
        combination_of(calibration, names)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: invalid probe header field "
                              f"'calibration.{COMBINATION_KEY}': {err}") from err


def validate_probe_header(header: Any, source: str | os.PathLike = "probe") -> None:
    """Check every field of a probe header that building or using the probe reads.

    Called by :func:`load_probe` (and :func:`checked_probe` on an in-memory probe), so that
    a malformed probe fails when it is loaded, before any spectrum is read.

    Parameters
    ----------
    header : dict
        As returned by :func:`read_probe_header`.
    source : str or path-like
        The file (or a description), named in the error.

    Raises
    ------
    CheckpointError
        Naming ``source`` and the first invalid field (``kind``, ``names``, ``head.*``,
        ``transforms``, ``units``, ``normalization.*``, ``encoder``, ``info``,
        ``info.wavelength_support*``, ``calibration.*``), with the value found.
    """
    source = str(source)
    if not isinstance(header, Mapping):
        raise _bad_field(source, "(header)", "a JSON object", header)
    names = _check_targets(source, header)
    _check_head(source, header.get("head"))
    for key in ("encoder", "info"):
        if not isinstance(header.get(key) or {}, Mapping):
            raise _bad_field(source, key, "an object", header.get(key))
    info = header.get("info") or {}
    if "name" in info and not isinstance(info["name"], str):
        raise _bad_field(source, "info.name", "a string", info["name"])
    _check_support(source, info.get("wavelength_support"))
    _check_calibration(source, header.get("calibration") or {}, names)


def load_probe(path: str | os.PathLike, model: Any = None) -> Probe:
    """Load a probe written by :func:`save_probe`.

    Parameters
    ----------
    path : path-like
    model : OmniSpectra, optional
        When given, the probe's recorded encoder is checked against it
        (:class:`CheckpointError` on mismatch).

    Raises
    ------
    CheckpointError
        Not a probe file, a header field that is not what the probe needs
        (:func:`validate_probe_header`: the file and the field are named), tensors that do
        not match the header, or (with ``model``) another encoder.
    """
    from safetensors.torch import load_file

    header = read_probe_header(path)
    validate_probe_header(header, path)
    try:
        probe = Probe.from_header(header)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid probe header: {err}") from err
    tensors = load_file(str(path), device="cpu")
    try:
        probe.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: tensors do not match the probe header: {err}") from err
    probe.eval()
    if model is not None:
        probe.check_encoder(model)
    return probe


# ---------------------------------------------------------------------------------------
# the probes shipped with the package: files, resolution, validation


def bundled_probe_path(task: str) -> Path:
    """Where the bundled probe of ``task`` (a key of :data:`PROBE_FILES`) lives (may be absent)."""
    if task not in PROBE_FILES:
        raise ValueError(f"unknown probe task {task!r}; known: {sorted(PROBE_FILES)}")
    return bundled_weights_path().parent / PROBE_FILES[task]


def resolve_probe(probe: Any, task: str) -> Probe:
    """A :class:`~omnispectra.probes.Probe` from ``None`` (the bundled probe of ``task``), a path
    or an instance."""
    if isinstance(probe, Probe):
        return probe
    if probe is None:
        path = bundled_probe_path(task)
        if not path.is_file():
            trainer = _TRAINERS.get(task, "`omnispectra train-predictors`")
            raise CheckpointError(
                f"the bundled {task.replace('_', ' ')} probe ({path.name}) is missing from this "
                f"installation ({path.parent}); train one with {trainer} or pass probe=PATH")
        probe = path
    if isinstance(probe, (str, os.PathLike)):
        loaded = load_probe(probe)
        loaded.info.setdefault("name", Path(probe).name)  # the provenance's PROBE (a name, no folder)
        return loaded
    raise CheckpointError(f"probe must be a path or an omnispectra.probes.Probe, got {type(probe).__name__}")


def checked_probe(probe: Any, task: str, net: Any) -> Probe:
    """:func:`resolve_probe` of ``task``, checked to be of the task's kind and to belong to ``net``."""
    head = resolve_probe(probe, task)
    if isinstance(probe, Probe):  # a file was validated when loaded
        validate_probe_header(head.header(), f"the {task.replace('_', ' ')} probe")
    expected_kind = "classification" if task == "source_class" else "regression"
    if head.kind != expected_kind:
        raise CheckpointError(f"the probe is a {head.kind} probe; {task} needs a {expected_kind} probe")
    head.check_encoder(net, what=f"{'bundled ' if probe is None else ''}{task.replace('_', ' ')} probe")
    return head


def probe_meta(head: Any, prefix: str) -> dict[str, str]:
    """Name and tensor sha256 of a second probe in a table's meta (``<prefix>PROBE``, ``<prefix>PROBSHA``)."""
    return {f"{prefix}PROBE": Path(str(head.info.get("name", ""))).name,
            f"{prefix}PROBSHA": encoder_fingerprint(head) if hasattr(head, "state_dict") else ""}


# ---------------------------------------------------------------------------------------
# the domain of the stellar probe

#: A spectrum is inside a grid's support when its valid pixels inside the probe's input
#: window span at least this fraction of the grid's wavelength range (an echelle order or
#: one LAMOST MRS arm does not)...
MIN_GRID_COVERAGE = 0.8
#: ... and its pixel resolution lies within the grid's range widened by the training
#: domain's :data:`omnispectra.domain.DOMAIN_TOLERANCE`.


def stellar_grids(probe: Probe, wavelengths_list: Sequence[Any],
                  resolutions: Sequence[float] | None = None) -> list[str]:
    """The grid of the stellar probe's training spectra that each spectrum lies on, or ``""``.

    The probe stores ``info["input_window"]`` (``[lo, hi]`` Angstrom: the library's range;
    only the pixels inside it are embedded) and ``info["support_by_grid"]``
    (``{grid: {"wavelength": [lo, hi], "resolution": [min, max], "n": N}}``: the median
    first and last valid wavelength inside the window, and the range of pixel resolutions
    ``lambda / delta lambda``, of its training spectra). A spectrum lies on a grid when its
    valid pixels inside the window span at least :data:`MIN_GRID_COVERAGE` of the grid's
    range and its pixel resolution is within the grid's range widened by
    :data:`~omnispectra.domain.DOMAIN_TOLERANCE`; of several such grids, the one whose
    resolution range has the nearest centre (geometric mean, in log) wins, so that a library
    star is on the library's grid and an SDSS star on SDSS's where the widened ranges
    overlap. An APOGEE (infrared) spectrum, one echelle order or a sharper grid than any
    trained one (X-shooter) lies on none.

    Parameters
    ----------
    probe : Probe
        A stellar probe with ``support_by_grid`` and ``input_window`` in its ``info``.
    wavelengths_list : sequence of 1-D arrays
        The wavelengths (Angstrom, increasing) of each spectrum's *valid* pixels.
    resolutions : sequence of float, optional
        Pixel resolution ``lambda / delta lambda`` per spectrum; by default the median
        over its pixels inside the window.

    Returns
    -------
    list of str, one grid name (a key of ``support_by_grid``) or ``""`` per spectrum

    Raises
    ------
    CheckpointError
        The probe stores no per-grid support (trained before it existed).
    ValueError
        ``resolutions`` and ``wavelengths_list`` differ in length.
    """
    from .domain import DOMAIN_TOLERANCE, pixel_resolution

    info = getattr(probe, "info", None) or {}
    support, win = info.get("support_by_grid"), info.get("input_window")
    if not support or not win:
        raise CheckpointError("this probe stores no per-grid support (info['support_by_grid'] and "
                              "info['input_window']); retrain it with scripts/train_stellar_survey.py")
    if resolutions is not None and len(resolutions) != len(wavelengths_list):
        raise ValueError(f"{len(resolutions)} resolutions for {len(wavelengths_list)} spectra")
    out = []
    for i, wave in enumerate(wavelengths_list):
        w = np.sort(np.asarray(wave, dtype=np.float64).ravel())
        w = w[np.isfinite(w) & (w >= win[0]) & (w <= win[1])]
        res = float(resolutions[i]) if resolutions is not None else pixel_resolution(w)
        best, distance = "", math.inf
        for name, grid in support.items():
            (lo, hi), (rmin, rmax) = grid["wavelength"], grid["resolution"]
            span = min(w[-1], hi) - max(w[0], lo) if w.size >= 2 else 0.0
            if (span >= MIN_GRID_COVERAGE * (hi - lo)
                    and rmin / DOMAIN_TOLERANCE <= res <= rmax * DOMAIN_TOLERANCE):
                off = abs(math.log(res / math.sqrt(rmin * rmax)))   # from the centre: ranges overlap
                if off < distance:
                    best, distance = name, off
        out.append(best)
    return out


def stellar_domain_flags(probe: Probe, wavelengths_list: Sequence[Any],
                         resolutions: Sequence[float] | None = None) -> np.ndarray:
    """``0`` or :attr:`omnispectra.flags.Flag.OUT_OF_DOMAIN` per spectrum: whether it lies on
    one of the grids the stellar probe was trained on (:func:`stellar_grids`, which has the
    parameters and raises the same errors).

    Returns
    -------
    numpy.ndarray of int64, one value per spectrum
    """
    from .flags import Flag

    grids = stellar_grids(probe, wavelengths_list, resolutions)
    return np.asarray([0 if grid else int(Flag.OUT_OF_DOMAIN) for grid in grids], dtype=np.int64)
