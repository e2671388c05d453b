"""The downstream evaluation harness (paper, *Downstream Fine-Tuning*, Tables 3, 4, 6).

Tasks are built from whatever real labels a corpus holds (:func:`labeled_rows`):

``source_class``
    GALAXY / QSO / STAR (:func:`source_classes`): the survey ``class`` label, with
    MaNGA spaxels as GALAXY and every MILES, APOGEE and X-shooter spectrum as STAR; for
    SDSS files that sit next to an ``index.csv`` carrying a visual-inspection class
    (``VI_CLASS_PERSON``, e.g. ``sdss/squeze``) the visual class (its ``CLASS`` column)
    replaces the pipeline class. Per-survey rows need at least two classes (as the paper
    leaves SEGUE out); the ``all`` group pools every survey.
``stellar_params``
    Teff (fitted as log10 Teff), logg, [Fe/H] of STAR spectra. A missing value is
    ignored for that target (never learned, never scored). A survey takes part when
    it has at least ``min_labeled`` (50) stars with labels: the MILES stars, and SDSS
    ELODIE values only from corpora that hold that many (the few QSO-contaminant stars
    of BOSS plate 7102 do not).
``redshift``
    ``z`` of GALAXY and QSO spectra (SDSS/BOSS/eBOSS, MaNGA, DESI, ...).

Protocol: up to ``max_per_dataset`` (20,000) labelled spectra per survey (a fixed
random subset), then for every run (seed ``0 .. runs-1``) a 50/50 train/test split
grouped by object and stratified by survey (:func:`omnispectra.dataset.split_by_object`),
per survey and for all surveys pooled. Methods:

- ``zero-shot`` / ``few-shot``: the linear probe (LayerNorm -> Linear on mean-pooled
  embeddings) trained 100 / 500 steps, batch 64, lr 1e-4; frozen encoder (embeddings
  computed once) unless ``finetune=True``;
- ``mlp`` (redshift): MLP [64, 64], dropout 0.1, lr 1e-3, 10 epochs on embeddings;
- ``galspecnet``, ``spender``: supervised CNNs from scratch, 10 epochs, lr 1e-3
  (:mod:`omnispectra.evaluation.baselines`);
- ``pca_ridge``, ``knn_pca`` (stellar parameters): PCA + ridge / kNN on resampled flux;
- ``trivial``: the majority class / the training mean.

Metrics are computed with scikit-learn only: per-class F1, macro F1, accuracy and the
confusion matrix; for regression the MSE of targets normalized with the training
split's mean and standard deviation, averaged over targets (Table 3), per-target MAE
in physical units (Teff in K) and per-target R^2 (in the fitted space). Runs are
averaged (mean and standard deviation). Outputs: ECSV tables, a markdown report laid
out like the paper's tables and PNG plots (confusion matrix, predicted vs true).
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import splits
from ..flags import CLASSES

__all__ = ["Task", "TASKS", "CLASSES", "source_classes", "labeled_rows", "LabeledData", "load_labeled",
           "classification_metrics", "regression_metrics", "evaluate", "run_method",
           "summarize", "markdown_report", "METHODS", "Method",
           "METHOD_LABELS", "task_targets", "transform_targets", "untransform_targets"]

STAR_SURVEYS = ("miles", "apogee", "xshooter")
GALAXY_SURVEYS = ("manga",)


@dataclass
class Task:
    """A downstream task: its kind, targets (physical units) and the methods run on it."""

    name: str
    kind: str
    targets: list[str]
    methods: list[str]
    classes: list[str] = field(default_factory=list)
    transforms: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    title: str = ""


TASKS: dict[str, Task] = {
    "source_class": Task("source_class", "classification", ["class"],
                         ["trivial", "zero-shot", "few-shot", "galspecnet", "spender"],
                         classes=list(CLASSES), title="Source classification (F1)"),
    "stellar_params": Task("stellar_params", "regression", ["teff", "logg", "fe_h"],
                           ["trivial", "zero-shot", "few-shot", "galspecnet", "spender", "pca_ridge",
                            "knn_pca"],
                           transforms={"teff": "log10"}, units={"teff": "K", "logg": "dex", "fe_h": "dex"},
                           title="Stellar parameters (MSE of normalized targets)"),
    "redshift": Task("redshift", "regression", ["z"],
                     ["trivial", "zero-shot", "few-shot", "mlp", "galspecnet", "spender"],
                     title="Redshift (R^2)"),
}

# protocol settings (paper, Downstream Fine-Tuning / Redshift Prediction / Table 4)
PROBE_PROTOCOLS: dict[str, dict[str, Any]] = {
    "zero-shot": {"head": "linear", "steps": 100, "lr": 1e-4},
    "few-shot": {"head": "linear", "steps": 500, "lr": 1e-4},
    "mlp": {"head": "mlp", "hidden": (64, 64), "dropout": 0.1, "epochs": 10, "lr": 1e-3},
    "mlp32": {"head": "mlp", "hidden": (32,), "dropout": 0.0, "steps": 500, "lr": 1e-3},
    # candidates of the shipped predictors (configs/predictor_recipes.yaml; the choice is in predictors.json)
    "linear-3000": {"head": "linear", "steps": 3000, "lr": 1e-3},
    "mlp128": {"head": "mlp", "hidden": (128,), "dropout": 0.1, "steps": 2000, "lr": 1e-3},
    "mlp512": {"head": "mlp", "hidden": (512,), "dropout": 0.2, "steps": 4000, "lr": 1e-3},
    "mlp128x5": {"head": "mlp", "hidden": (128,), "dropout": 0.1, "members": 5, "steps": 2000, "lr": 1e-3},
    "mlp512x5": {"head": "mlp", "hidden": (512,), "dropout": 0.2, "members": 5, "steps": 4000, "lr": 1e-3},
    "mlp512x5l1": {"head": "mlp", "hidden": (512,), "dropout": 0.2, "members": 5, "steps": 4000, "lr": 1e-3,
                   "loss": "l1"},
}
SUPERVISED = {"epochs": 10, "lr": 1e-3}


# ---------------------------------------------------------------------------------------
# labels


_VI_CACHE: dict[str, dict[str, str]] = {}


def _visual_classes(directory: Path) -> dict[str, str]:
    """``{file name: class}`` from an ``index.csv`` with a visual-inspection class, else {}."""
    key = str(directory)
    if key not in _VI_CACHE:
        table: dict[str, str] = {}
        index = directory / "index.csv"
        try:
            with open(index, newline="") as fh:
                reader = csv.DictReader(fh)
                names = reader.fieldnames or []
                if "VI_CLASS_PERSON" in names and "CLASS" in names:
                    for row in reader:
                        cls = (row.get("CLASS") or "").strip().upper()
                        if cls in CLASSES:
                            table[Path(row["file"]).name] = cls
        except OSError:
            pass
        _VI_CACHE[key] = table
    return _VI_CACHE[key]


def source_classes(classes: Sequence[str], surveys: Sequence[str],
                   source_files: Sequence[str] | None = None) -> np.ndarray:
    """GALAXY/QSO/STAR per row ('' when unknown), with the rules of the module docstring."""
    out = []
    files = source_files if source_files is not None else [""] * len(classes)
    for cls, survey, src in zip(classes, surveys, files, strict=True):
        c = str(cls).strip().upper()
        s = str(survey).lower()
        if src:
            vi = _visual_classes(Path(str(src)).parent).get(Path(str(src)).name)
            if vi:
                c = vi
        if s in STAR_SURVEYS:
            c = "STAR"
        elif s in GALAXY_SURVEYS and not c:
            c = "GALAXY"
        out.append(c if c in CLASSES else "")
    return np.asarray(out, dtype=str)


def labeled_rows(task: Task, meta: dict[str, np.ndarray], min_labeled: int = 50) -> np.ndarray:
    """Boolean mask of the rows usable for ``task`` (see the module docstring)."""
    cls = meta["source_class"]
    if task.name == "source_class":
        return cls != ""
    if task.kind == "regression":
        y = np.stack([np.asarray(meta[t], dtype=np.float64) for t in task.targets], axis=1)
        ok = np.isfinite(y).any(1)
        if task.name == "stellar_params":
            ok &= (cls == "STAR") & (np.nan_to_num(y[:, 0], nan=1.0) > 0)
            surveys = meta["survey"]
            for s in set(surveys[ok].tolist()):
                if (ok & (surveys == s)).sum() < min_labeled:
                    ok &= surveys != s
        elif task.name == "redshift":
            ok &= np.isin(cls, ["GALAXY", "QSO"])
        return ok
    raise ValueError(f"no label rule for task {task.name!r}")


@dataclass
class LabeledData:
    """The labelled subset of a corpus: dataset positions, metadata, embeddings, flux."""

    dataset: Any
    positions: np.ndarray                   # positions in ``dataset``
    meta: dict[str, np.ndarray]             # per selected row
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.positions.size)

    def arrays(self, rows: Sequence[int]) -> list[tuple[np.ndarray, ...]]:
        return [self.dataset.arrays(int(self.positions[r])) for r in rows]

    def tokens(self, rows: Sequence[int]) -> list[Any]:
        return [self.dataset[int(self.positions[r])].tokens for r in rows]


def load_labeled(corpus: Any, tasks: Sequence[Task], max_per_dataset: int = 20_000, seed: int = 0,
                 min_labeled: int = 50) -> LabeledData:
    """Open corpus files and keep up to ``max_per_dataset`` spectra per survey labelled for a task."""
    from ..dataset import SpectrumDataset

    ds = SpectrumDataset(corpus, return_index=False)
    meta = {name: ds.column(name) for name in ("id", "object_id", "survey", "source_file", "class",
                                               "z", "teff", "logg", "fe_h")}
    meta["source_class"] = source_classes(meta["class"], meta["survey"], meta["source_file"])
    use = np.zeros(len(ds), dtype=bool)
    for task in tasks:
        use |= labeled_rows(task, meta, min_labeled)
    rng = np.random.default_rng(seed)
    keep = []
    for survey in sorted(set(meta["survey"][use].tolist())):
        rows = np.flatnonzero(use & (meta["survey"] == survey))
        if rows.size > max_per_dataset:
            rows = np.sort(rng.choice(rows, max_per_dataset, replace=False))
        keep.append(rows)
    positions = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return LabeledData(ds, positions, {k: np.asarray(v)[positions] for k, v in meta.items()})


def compute_embeddings(data: LabeledData, model: Any, batch_size: int = 32, rows: Sequence[int] | None = None,
                       progress: bool | None = False) -> np.ndarray:
    """Embeddings of the selected rows (frozen encoder), through :func:`omnispectra.api.embed`."""
    from ..api import embed

    rows = list(range(len(data))) if rows is None else [int(r) for r in rows]

    def tokens():
        for r in rows:
            yield data.dataset[int(data.positions[r])].tokens

    out = embed(tokens(), model=model, batch_size=batch_size, progress=progress)
    return np.asarray(out, dtype=np.float32).reshape(len(rows), -1)


# ---------------------------------------------------------------------------------------
# metrics (scikit-learn)


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class F1, macro F1, accuracy and the confusion matrix (scikit-learn)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    labels = list(range(len(classes)))
    y_pred = np.argmax(prob, axis=1)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = [k for k in labels if (np.asarray(y_true) == k).any()]
    out: dict[str, Any] = {f"f1_{c}": float(v) if k in present else math.nan
                           for k, (c, v) in enumerate(zip(classes, f1, strict=True))}
    out["f1_macro"] = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    out["accuracy"] = float(accuracy_score(y_true, y_pred))
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=labels)
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], mean: np.ndarray,
                       std: np.ndarray, transforms: dict[str, str] | None = None) -> dict[str, Any]:
    """Normalized MSE averaged over targets, per-target normalized MSE, MAE (physical), R^2.

    ``y_true``/``y_pred`` are in the fitted (transformed) space; ``mean``/``std`` are the
    training split's statistics in that space. NaN truths are skipped per target.
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from ..probes import TRANSFORMS

    transforms = transforms or {}
    out: dict[str, Any] = {}
    mses = []
    for k, name in enumerate(names):
        ok = np.isfinite(y_true[:, k]) & np.isfinite(y_pred[:, k])
        if ok.sum() == 0:
            continue
        t, p = y_true[ok, k], y_pred[ok, k]
        s = std[k] if std[k] > 0 else 1.0
        mse = float(mean_squared_error((t - mean[k]) / s, (p - mean[k]) / s))
        inv = TRANSFORMS[transforms.get(name, "identity")][1]
        out[f"mse_norm_{name}"] = mse
        out[f"mae_{name}"] = float(mean_absolute_error(inv(t), inv(p)))
        out[f"r2_{name}"] = float(r2_score(t, p)) if ok.sum() > 1 else math.nan
        mses.append(mse)
    out["mse_norm"] = float(np.mean(mses)) if mses else math.nan
    return out


# ---------------------------------------------------------------------------------------
# methods


def task_targets(task: Task, meta: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Targets of ``rows``: class indices, or an ``(n, targets)`` float array."""
    if task.kind == "classification":
        lookup = {c: k for k, c in enumerate(task.classes)}
        return np.array([lookup[c] for c in meta["source_class"][rows]], dtype=np.int64)
    return np.stack([np.asarray(meta[t], dtype=np.float64)[rows] for t in task.targets], axis=1)


def transform_targets(task: Task, y: np.ndarray) -> np.ndarray:
    """Regression targets in the space probes fit them (e.g. log10 Teff)."""
    from ..probes import TRANSFORMS

    y = np.array(y, dtype=np.float64, copy=True)
    for k, name in enumerate(task.targets):
        with np.errstate(all="ignore"):
            y[:, k] = TRANSFORMS[task.transforms.get(name, "identity")][0](y[:, k])
    return y


def untransform_targets(task: Task, y: np.ndarray) -> np.ndarray:
    """Regression targets from the space probes fit them back to physical values (the inverse
    of :func:`transform_targets`)."""
    from ..probes import TRANSFORMS

    y = np.array(y, dtype=np.float64, copy=True)
    for k, name in enumerate(task.targets):
        y[:, k] = TRANSFORMS[task.transforms.get(name, "identity")][1](y[:, k])
    return y


def _predict_trivial(task: Task, train: dict[str, Any], test: dict[str, Any], **_: Any) -> np.ndarray:
    from . import baselines

    n_test = len(test["y"])
    if task.kind == "classification":
        return baselines.trivial_predict(train["y"], n_test, task.kind, len(task.classes))
    return baselines.trivial_predict(transform_targets(task, train["y"]), n_test, task.kind)


def _predict_probe(task: Task, train: dict[str, Any], test: dict[str, Any], *, protocol: dict[str, Any],
                   finetunable: bool, seed: int = 0, encoder: Any = None, finetune: bool = False,
                   accelerator: str = "cpu", **_: Any) -> np.ndarray:
    """A :class:`~omnispectra.probes.Probe` trained with ``protocol`` (frozen encoder unless ``finetune``)."""
    import torch

    from ..probes import Probe
    from ..training.probe_module import fit_finetune, fit_probe_on_embeddings

    proto = dict(protocol)
    head = proto.pop("head")
    hidden = proto.pop("hidden", ())
    dropout = proto.pop("dropout", 0.0)
    members = proto.pop("members", 1)
    names = task.classes if task.kind == "classification" else task.targets
    dim = train["emb"].shape[1] if "emb" in train else encoder.config.dim
    torch.manual_seed(seed)
    probe = Probe(dim, task.kind, names, head=head, hidden=hidden, dropout=dropout, members=members,
                  transforms=task.transforms, units=task.units)
    if finetune and finetunable:
        from ..api import embed

        enc = copy.deepcopy(encoder).train()
        fit_finetune(probe, enc, train["tokens"], train["y"], seed=seed, accelerator=accelerator, **proto)
        emb = embed(iter(test["tokens"]), model=enc, progress=False)
    else:
        fit_probe_on_embeddings(probe, train["emb"], train["y"], seed=seed, accelerator=accelerator, **proto)
        emb = test["emb"]
    return probe.predict(emb) if task.kind == "classification" else probe.predict_transformed(emb)


def _predict_knn(task: Task, train: dict[str, Any], test: dict[str, Any], **_: Any) -> np.ndarray:
    from ..probes import KNNProbe

    return KNNProbe().fit(train["emb"], transform_targets(task, train["y"])).predict(test["emb"])


def _predict_pca(task: Task, train: dict[str, Any], test: dict[str, Any], *, regressor: str,
                 **_: Any) -> np.ndarray:
    from . import baselines

    return getattr(baselines, regressor)(train["x"], transform_targets(task, train["y"]), test["x"])


def _predict_supervised(task: Task, train: dict[str, Any], test: dict[str, Any], *, architecture: str,
                        seed: int = 0, baseline_width: float = 0.25, accelerator: str = "cpu",
                        **_: Any) -> np.ndarray:
    """A network of :mod:`omnispectra.evaluation.baselines` trained from scratch on resampled flux."""
    import torch

    from ..probes import fit_normalization
    from ..training.probe_module import fit
    from . import baselines

    names = task.classes if task.kind == "classification" else task.targets
    torch.manual_seed(seed)
    net = baselines.make_baseline(architecture, len(names), width=baseline_width)
    x = torch.as_tensor(train["x"], dtype=torch.float32)
    if task.kind == "classification":
        y = torch.as_tensor(train["y"], dtype=torch.long)
        labels = train["y"]
        mean = std = None
    else:
        yt = transform_targets(task, train["y"])
        mean, std = fit_normalization(yt)
        y = torch.as_tensor((yt - mean) / (std + 1e-8), dtype=torch.float32)
        labels = None
    fit(net, torch.utils.data.TensorDataset(x, y), task.kind, labels=labels, seed=seed,
        accelerator=accelerator, **SUPERVISED)
    with torch.no_grad():
        xt = torch.as_tensor(test["x"], dtype=torch.float32)
        out = torch.cat([net(xt[i:i + 256]) for i in range(0, len(xt), 256)]).numpy().astype(np.float64)
    if task.kind == "classification":
        out = np.exp(out - out.max(1, keepdims=True))
        return out / out.sum(1, keepdims=True)
    return out * (std + 1e-8) + mean


@dataclass(frozen=True)
class Method:
    """One method of the harness: how its rows are labelled, what it needs, how it predicts.

    ``predict(task, train, test, seed=..., encoder=..., baseline_width=..., finetune=...,
    accelerator=...)`` returns class probabilities or regression targets in the fitted
    (transformed) space. ``inputs`` names the parts of ``train``/``test`` it reads
    besides ``y``: ``emb`` (frozen-encoder embeddings), ``x`` (resampled flux) or
    ``tokens`` (fine-tuning). ``extra`` methods run on any task when asked for by name,
    without being in a task's default list. ``plots``: ``confusion`` and/or
    ``pred_vs_true`` figures are drawn for it.
    """

    model: str
    how: str
    predict: Callable[..., np.ndarray]
    inputs: frozenset[str] = frozenset()
    extra: bool = False
    plots: frozenset[str] = frozenset()


def _probe_method(name: str, how: str, finetunable: bool = False, extra: bool = False,
                  plots: frozenset[str] = frozenset()) -> Method:
    return Method("OmniSpectra", how, functools.partial(_predict_probe, protocol=PROBE_PROTOCOLS[name],
                                                         finetunable=finetunable),
                  frozenset({"emb"}), extra, plots)


#: Every method of the harness, in the order of the report's tables.
METHODS: dict[str, Method] = {
    "trivial": Method("Trivial", "Majority / mean", _predict_trivial),
    "zero-shot": _probe_method("zero-shot", "Zero-shot", finetunable=True, plots=frozenset({"confusion"})),
    "few-shot": _probe_method("few-shot", "Few-shot", finetunable=True,
                              plots=frozenset({"confusion", "pred_vs_true"})),
    "mlp": _probe_method("mlp", "MLP [64, 64]", plots=frozenset({"pred_vs_true"})),
    "knn": Method("OmniSpectra", "kNN", _predict_knn, frozenset({"emb"}), extra=True),
    "mlp32": _probe_method("mlp32", "MLP [32]", extra=True),
    "linear-3000": _probe_method("linear-3000", "Linear, 3000 steps", extra=True),
    "mlp128": _probe_method("mlp128", "MLP [128] (shipped class recipe, without its engine spectra)",
                            extra=True),
    "mlp512": _probe_method("mlp512", "MLP [512]", extra=True),
    "mlp128x5": _probe_method("mlp128x5", "5 x MLP [128]", extra=True),
    "mlp512x5": _probe_method("mlp512x5", "5 x MLP [512]", extra=True),
    "mlp512x5l1": _probe_method("mlp512x5l1", "5 x MLP [512], L1 loss (shipped stellar recipe)", extra=True),
    "galspecnet": Method("GalSpecNet", "Supervised",
                         functools.partial(_predict_supervised, architecture="galspecnet"), frozenset({"x"}),
                         plots=frozenset({"pred_vs_true"})),
    "spender": Method("Spender-style", "Supervised",
                      functools.partial(_predict_supervised, architecture="spender"), frozenset({"x"})),
    "pca_ridge": Method("PCA + ridge", "Supervised", functools.partial(_predict_pca, regressor="pca_ridge"),
                        frozenset({"x"}), plots=frozenset({"pred_vs_true"})),
    "knn_pca": Method("kNN (PCA)", "Supervised", functools.partial(_predict_pca, regressor="knn_pca"),
                      frozenset({"x"})),
}

#: ``name -> (model, how)`` table labels of :data:`METHODS` (a view made at import; the
#: report reads :data:`METHODS` itself, so a method registered later is labelled too).
METHOD_LABELS: dict[str, tuple[str, str]] = {name: (m.model, m.how) for name, m in METHODS.items()}


def run_method(method: str, task: Task, train: dict[str, Any], test: dict[str, Any], seed: int = 0,
               encoder: Any = None, baseline_width: float = 0.25, finetune: bool = False,
               accelerator: str = "cpu") -> np.ndarray:
    """Train ``method`` (a key of :data:`METHODS`) on ``train`` and predict ``test``.

    ``train``/``test`` hold ``y`` (class indices or physical targets) and, as the method
    needs them (:attr:`Method.inputs`), ``emb`` (embeddings), ``x`` (resampled flux
    ``(N, 2, n)``) or ``tokens``. Returns class probabilities or targets in the
    *transformed* space (log10 Teff).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method].predict(task, train, test, seed=seed, encoder=encoder,
                                   baseline_width=baseline_width, finetune=finetune, accelerator=accelerator)


# ---------------------------------------------------------------------------------------
# the harness


def _groups(task: Task, data: LabeledData, rows: np.ndarray, min_group: int) -> dict[str, np.ndarray]:
    surveys = data.meta["survey"][rows]
    groups = {}
    for s in sorted(set(surveys.tolist())):
        r = rows[surveys == s]
        if r.size < min_group:
            continue
        if task.kind == "classification" and len(set(data.meta["source_class"][r].tolist())) < 2:
            continue
        groups[s] = r
    if rows.size >= min_group and (len(groups) != 1 or len(set(surveys.tolist())) > 1):
        groups["all"] = rows
    return groups


#: Which objects a run's test half may hold (:func:`evaluate`'s ``test_side``).
TEST_SIDES = ("any", "validation")


def check_test_side(test_side: str) -> None:
    """ValueError unless ``test_side`` is one of :data:`TEST_SIDES`."""
    if test_side not in TEST_SIDES:
        raise ValueError(f"test_side must be one of {TEST_SIDES}, got {test_side!r}")


def held_out_mask(object_ids: np.ndarray, surveys: np.ndarray, test_side: str = "any") -> np.ndarray:
    """Which rows of one group (``object_ids``/``surveys``) ``test_side`` allows in a test half.

    ``"validation"``: objects on the validation side of the project's object-hash split,
    leaving out every survey whose objects all hashed to that side: pretraining's split
    (:func:`omnispectra.dataset.split_by_object`, ``keep_both_sides``) moves one of them
    to its training side.

    Raises
    ------
    ValueError
        ``test_side`` is not one of :data:`TEST_SIDES`.
    """
    check_test_side(test_side)
    if test_side == "any":
        return np.ones(len(object_ids), dtype=bool)
    val = splits.is_validation(object_ids)
    one_sided = [s for s in set(surveys.tolist()) if val[surveys == s].all()]
    return val & ~np.isin(surveys, one_sided)


def held_out_rows(test: np.ndarray, object_ids: np.ndarray, surveys: np.ndarray,
                  test_side: str = "any") -> np.ndarray:
    """The rows of a run's test half ``test`` (indices into ``object_ids``/``surveys``) that
    ``test_side`` allows (:func:`held_out_mask`)."""
    return test[held_out_mask(object_ids, surveys, test_side)[test]]


def run_halves(object_ids: np.ndarray, surveys: np.ndarray, runs: int,
               test_side: str = "any") -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per run ``0 .. runs-1``: ``(run, train, test)`` row indices of one group, the 50/50
    object-grouped split stratified by survey (seed ``run``), the test half cut to
    :func:`held_out_mask` (computed once for all runs)."""
    from ..dataset import split_by_object

    allowed = held_out_mask(object_ids, surveys, test_side)
    for run in range(runs):
        train, test = split_by_object(object_ids, surveys, fraction=0.5, seed=run)
        yield run, train, test[allowed[test]]


def _split_side(idx: np.ndarray, y_all: np.ndarray, embeddings: np.ndarray | None, grows: np.ndarray,
                x_all: np.ndarray | None, tok_all: list | None) -> dict[str, Any]:
    """The rows ``idx`` of one group (``grows`` into the whole data set): the inputs ``run_method`` takes."""
    d: dict[str, Any] = {"y": y_all[idx]}
    if embeddings is not None:
        d["emb"] = embeddings[grows[idx]]
    if x_all is not None:
        d["x"] = x_all[idx]
    if tok_all is not None:
        d["tokens"] = [tok_all[i] for i in idx]
    return d


def _chosen_tasks(tasks: Sequence[str | Task], methods: Sequence[str] | None) -> list[Task]:
    """The tasks to run; ValueError naming unknown tasks or methods."""
    unknown = [t for t in tasks if isinstance(t, str) and t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
    if methods is not None and set(methods) - set(METHODS):
        raise ValueError(f"unknown method(s) {sorted(set(methods) - set(METHODS))}; "
                         f"known: {sorted(METHODS)}")
    return [TASKS[t] if isinstance(t, str) else t for t in tasks]


@dataclass
class _Scores:
    """Metric rows, summed confusion matrices and pooled regression predictions of a run."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    confusion: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    predictions: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add(self, task: Task, group: str, method: str, run: int, train: dict, test: dict,
            pred: np.ndarray) -> dict[str, float]:
        """Score one method's predictions on one split; return its metrics."""
        key = (task.name, group, method)
        if task.kind == "classification":
            m = classification_metrics(test["y"], pred, task.classes)
            self.confusion[key] = self.confusion.get(key, 0) + m.pop("confusion")
        else:
            from ..probes import fit_normalization

            mean, std = fit_normalization(transform_targets(task, train["y"]))
            yt = transform_targets(task, test["y"])
            m = regression_metrics(yt, pred, task.targets, mean, std, task.transforms)
            prev = self.predictions.get(key)
            self.predictions[key] = (yt, pred) if prev is None else (
                np.concatenate([prev[0], yt]), np.concatenate([prev[1], pred]))
        for metric, value in m.items():
            self.rows.append({"task": task.name, "group": group, "method": method, "run": run,
                              "metric": metric, "value": float(value), "n_train": len(train["y"]),
                              "n_test": len(test["y"])})
        return m


def evaluate(
    corpus: Any,
    model: Any = "default",
    output: str | Path | None = None,
    tasks: Sequence[str] = ("source_class", "stellar_params", "redshift"),
    methods: Sequence[str] | None = None,
    runs: int = 5,
    max_per_dataset: int = 20_000,
    min_group: int = 20,
    min_labeled: int = 50,
    finetune: bool = False,
    batch_size: int = 32,
    baseline_width: float = 0.25,
    baseline_pixels: int = 2048,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    test_side: str = "any",
) -> dict[str, Any]:
    """Run the downstream evaluation and (with ``output``) write tables, report and plots.

    Parameters
    ----------
    corpus : path, glob or sequence
        Corpus HDF5 files (see :class:`omnispectra.dataset.SpectrumDataset`).
    model : str, path or OmniSpectra
        The encoder (as :func:`omnispectra.api.embed`).
    output : path, optional
        Directory for ``results.ecsv``, ``results_runs.ecsv``, ``<task>.ecsv``,
        ``results.md``, ``results.json`` and PNG plots.
    tasks, methods : sequences of str, optional
        Subsets of :data:`TASKS` and of each task's methods (default all).
    runs : int
        Seeds ``0 .. runs-1`` of the 50/50 object-grouped split and of the training.
    max_per_dataset : int
        Labelled spectra kept per survey.
    min_group, min_labeled : int
        Smallest group evaluated, fewest labelled stars for a survey to join
        ``stellar_params``.
    finetune : bool
        Train the encoder with the zero-/few-shot heads (slow); default frozen.
    baseline_width, baseline_pixels : float, int
        Spender-style channel scale; cap on the resampled length of baseline inputs.
    test_side : {"any", "validation"}
        ``"validation"`` keeps in each run's test half only the objects on the validation
        side of the project's object-hash split (:func:`omnispectra.splits.is_validation`,
        its defaults): spectra no pretraining run, engine donor or engine fit of the
        project touched (the engine draws donors from the training side), so an encoder
        pretrained with engine labels is scored without a leak. Training halves are
        unchanged.

    Returns
    -------
    dict with ``runs`` (per-run rows), ``summary`` (an astropy Table), ``confusion``,
    ``predictions`` and ``report`` (markdown).
    """
    from ..runtime import resolve_model
    from . import baselines

    say = progress or (lambda msg: None)
    chosen = _chosen_tasks(tasks, methods)
    check_test_side(test_side)  # before any data is read
    t0 = time.perf_counter()
    data = load_labeled(corpus, chosen, max_per_dataset=max_per_dataset, min_labeled=min_labeled)
    say(f"{len(data)} labelled spectra from surveys {sorted(set(data.meta['survey'].tolist()))}")
    encoder = resolve_model(model, device)
    needs_emb = any("emb" in METHODS[m].inputs for t in chosen for m in (methods or t.methods))
    if needs_emb and len(data):
        data.embeddings = compute_embeddings(data, encoder, batch_size=batch_size)
        say(f"embedded {len(data)} spectra in {time.perf_counter() - t0:.1f} s")

    scores = _Scores()
    flux_cache: dict[tuple[str, ...], np.ndarray] = {}
    for task in chosen:
        task_methods = [m for m in (methods or task.methods) if m in task.methods or METHODS[m].extra]
        rows = np.flatnonzero(labeled_rows(task, data.meta, min_labeled)) if len(data) else np.zeros(0, int)
        groups = _groups(task, data, rows, min_group)
        if not groups:
            say(f"{task.name}: no group with at least {min_group} labelled spectra; skipped")
            continue
        for gname, grows in groups.items():
            need_x = any("x" in METHODS[m].inputs for m in task_methods)
            x_all = None
            if need_x:
                key = tuple(map(str, grows))
                if key not in flux_cache:
                    flux_cache[key], _ = baselines.resample_group(data.arrays(grows),
                                                                  max_pixels=baseline_pixels)
                x_all = flux_cache[key]
            tok_all = data.tokens(grows) if finetune else None
            y_all = task_targets(task, data.meta, grows)
            for run, tr, te in run_halves(data.meta["object_id"][grows], data.meta["survey"][grows], runs,
                                          test_side):
                if tr.size < 2 or te.size < 1:
                    continue
                if task.kind == "classification" and len(set(y_all[tr].tolist())) < 2:
                    continue
                train, test = (_split_side(idx, y_all, data.embeddings, grows, x_all, tok_all)
                               for idx in (tr, te))
                for method in task_methods:
                    t1 = time.perf_counter()
                    pred = run_method(method, task, train, test, seed=run, encoder=encoder,
                                      baseline_width=baseline_width, finetune=finetune)
                    m = scores.add(task, gname, method, run, train, test, pred)
                    say(f"{task.name:>14} {gname:>10} run {run} {method:>10}: "
                        + ", ".join(f"{k}={v:.3f}" for k, v in m.items()
                                    if k in ("f1_macro", "mse_norm") or k.startswith("r2_"))
                        + f"  ({time.perf_counter() - t1:.1f} s)")
    rows_out, confusion, predictions = scores.rows, scores.confusion, scores.predictions
    summary = summarize(rows_out)
    report = markdown_report(summary, [t.name for t in chosen])
    result = {"runs": rows_out, "summary": summary, "confusion": confusion, "predictions": predictions,
              "report": report, "n_spectra": len(data), "seconds": time.perf_counter() - t0,
              "test_side": test_side,
              "encoder": getattr(encoder, "info", {})}
    if output is not None:
        write_outputs(result, Path(output), chosen)
    return result


# ---------------------------------------------------------------------------------------
# tables, report and plots


def summarize(rows: list[dict[str, Any]]):
    """Mean and standard deviation over runs per (task, group, method, metric) as a Table."""
    from astropy.table import Table

    acc: dict[tuple, list] = defaultdict(list)
    sizes: dict[tuple, list] = defaultdict(list)
    for r in rows:
        key = (r["task"], r["group"], r["method"], r["metric"])
        acc[key].append(r["value"])
        sizes[key].append((r["n_train"], r["n_test"]))
    cols: dict[str, list] = defaultdict(list)
    for key in sorted(acc):
        values = np.asarray(acc[key], dtype=np.float64)
        finite = values[np.isfinite(values)]
        for name, v in zip(("task", "group", "method", "metric"), key, strict=True):
            cols[name].append(v)
        cols["mean"].append(float(finite.mean()) if finite.size else math.nan)
        cols["std"].append(float(finite.std()) if finite.size else math.nan)
        cols["n_runs"].append(int(values.size))
        cols["n_train"].append(float(np.mean([s[0] for s in sizes[key]])))
        cols["n_test"].append(float(np.mean([s[1] for s in sizes[key]])))
    names = ["task", "group", "method", "metric", "mean", "std", "n_runs", "n_train", "n_test"]
    table = Table({n: cols[n] for n in names}) if cols else Table(names=names, dtype=[str] * 4 + [float] * 2
                                                                 + [int] + [float] * 2)
    table.meta["description"] = "omnispectra downstream evaluation: mean and std over runs"
    return table


def _cell(summary, task: str, group: str, method: str, metric: str, digits: int = 3) -> str:
    sel = ((summary["task"] == task) & (summary["group"] == group) & (summary["method"] == method)
           & (summary["metric"] == metric)) if len(summary) else []
    if not len(summary) or not np.any(sel):
        return "-"
    row = summary[sel][0]
    if not np.isfinite(row["mean"]):
        return "-"
    std = f" ± {row['std']:.{digits}f}" if row["n_runs"] > 1 and np.isfinite(row["std"]) else ""
    return f"{row['mean']:.{digits}f}{std}"


def _ordered(values, first=()):
    values = list(dict.fromkeys(values))
    return [v for v in first if v in values] + sorted(v for v in values if v not in first)


def _method_label(method: str) -> tuple[str, str]:
    spec = METHODS.get(method)
    return (spec.model, spec.how) if spec is not None else (method, "")


def markdown_report(summary, tasks: Sequence[str]) -> str:
    """Markdown tables laid out like the paper's Tables 3 and 6 (plus redshift and MAE)."""
    lines = ["# OmniSpectra downstream evaluation", ""]
    if not len(summary):
        return "\n".join(lines + ["No task had enough labelled spectra.", ""])
    method_order = list(METHODS)
    for task_name in tasks:
        sub = summary[summary["task"] == task_name]
        if not len(sub):
            continue
        task = TASKS.get(task_name)
        groups = _ordered(sub["group"].tolist(), first=())
        groups = [g for g in groups if g != "all"] + (["all"] if "all" in groups else [])
        methods = _ordered(sub["method"].tolist(), first=method_order)
        sizes = {g: sub[sub["group"] == g] for g in groups}
        lines += [f"## {task.title if task else task_name}", ""]
        if task is not None and task.kind == "classification":
            cols = [f"F1 {c}" for c in task.classes] + ["macro F1"]
            lines += ["| Survey | Model | Method | " + " | ".join(cols) + " |",
                      "|---|---|---|" + "---|" * len(cols)]
            for g in groups:
                n = sizes[g]
                label = f"{g} (train {n['n_train'][0]:.0f} / test {n['n_test'][0]:.0f})"
                for k, m in enumerate(methods):
                    model, how = _method_label(m)
                    vals = [_cell(summary, task_name, g, m, f"f1_{c}") for c in task.classes]
                    vals.append(_cell(summary, task_name, g, m, "f1_macro"))
                    first = label if k == 0 else ""
                    lines.append(f"| {first} | {model} | {how} | " + " | ".join(vals) + " |")
        else:
            metric = "mse_norm" if task_name != "redshift" else "r2_z"
            head = "MSE of normalized targets (↓)" if metric == "mse_norm" else "R² (↑)"
            lines += [f"{head}; columns: survey (train / test spectra per run).", "",
                      "| Model | Method | " + " | ".join(
                          f"{g} ({sizes[g]['n_train'][0]:.0f}/{sizes[g]['n_test'][0]:.0f})"
                          for g in groups) + " |",
                      "|---|---|" + "---|" * len(groups)]
            for m in methods:
                model, how = _method_label(m)
                lines.append(f"| {model} | {how} | " + " | ".join(_cell(summary, task_name, g, m, metric)
                                                                 for g in groups) + " |")
            targets = task.targets if task else []
            lines += ["", "Per-target MAE in physical units and R² (group `all` if present, else the first):",
                      "",
                      "| Model | Method | " + " | ".join(
                          f"MAE {t}" + (f" [{task.units[t]}]" if task and t in task.units else "")
                          for t in targets)
                      + " | " + " | ".join(f"R² {t}" for t in targets) + " |",
                      "|---|---|" + "---|" * (2 * len(targets))]
            g = "all" if "all" in groups else groups[0]
            for m in methods:
                model, how = _method_label(m)
                vals = [_cell(summary, task_name, g, m, f"mae_{t}", 1 if t == "teff" else 3) for t in targets]
                vals += [_cell(summary, task_name, g, m, f"r2_{t}") for t in targets]
                lines.append(f"| {model} | {how} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["Mean ± standard deviation over runs (50/50 splits grouped by object, seeds 0..runs-1).", ""]
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: Path, tasks: Sequence[Task]) -> None:
    """ECSV tables, markdown, JSON and PNG plots into ``out``, each file written atomically.

    Existing files of an earlier evaluation are replaced (the CLI asks for ``--overwrite``
    first); file names are made safe with :func:`omnispectra.fileio.safe_filename`.
    """
    from astropy.table import Table

    from ..fileio import atomic_write, safe_filename, write_text

    def write_ecsv(table: Table, name: str) -> None:
        with atomic_write(out / name) as tmp:
            table.write(tmp, format="ascii.ecsv")

    out.mkdir(parents=True, exist_ok=True)
    summary = result["summary"]
    write_ecsv(summary, "results.ecsv")
    if result["runs"]:
        names = ("task", "group", "method", "run", "metric", "value", "n_train", "n_test")
        runs_table = Table(rows=[[r[k] for k in names] for r in result["runs"]], names=names)
        write_ecsv(runs_table, "results_runs.ecsv")
    for task in tasks:
        sub = summary[summary["task"] == task.name] if len(summary) else summary
        if len(sub):
            write_ecsv(sub, f"{safe_filename(task.name)}.ecsv")
    write_text(out / "results.md", result["report"])
    write_text(out / "results.json", json.dumps({
        "n_spectra": result["n_spectra"], "seconds": round(result["seconds"], 1),
        "test_side": result.get("test_side", "any"),
        "encoder": {k: v for k, v in result["encoder"].items() if isinstance(v, (str, int, float))},
        "summary": [{c: r[c].item() if hasattr(r[c], "item") else r[c] for c in summary.colnames}
                    for r in summary],
    }, indent=1, default=str))
    _plots(result, out)


def _plot_name(kind: str, task: str, group: str, method: str) -> str:
    """``<kind>_<task>_<group>_<method>.png`` with each part safe in a file name (surveys may hold ``/``)."""
    from ..fileio import safe_filename

    return "_".join([kind, *(safe_filename(part) for part in (task, group, method))]) + ".png"


def _save_png(fig: Any, path: Path) -> None:
    from ..fileio import atomic_write

    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _plots_of(method: str) -> frozenset[str]:
    return METHODS[method].plots if method in METHODS else frozenset()


def _plots(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    for (task, group, method), cm in result["confusion"].items():
        if "confusion" not in _plots_of(method) or group != "all" and any(
                k[1] == "all" for k in result["confusion"] if k[0] == task):
            continue
        classes = TASKS[task].classes if task in TASKS else [str(k) for k in range(len(cm))]
        fig, ax = plt.subplots(figsize=(4, 3.6))
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{task} {group} {method} (all runs)")
        fig.tight_layout()
        _save_png(fig, out / _plot_name("confusion", task, group, method))
        plt.close(fig)
    for (task, group, method), (yt, yp) in result["predictions"].items():
        if "pred_vs_true" not in _plots_of(method) or group != "all" and any(
                k[1] == "all" for k in result["predictions"] if k[0] == task):
            continue
        names = TASKS[task].targets if task in TASKS else [str(k) for k in range(yt.shape[1])]
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.3), squeeze=False)
        for k, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
            ok = np.isfinite(yt[:, k]) & np.isfinite(yp[:, k])
            ax.scatter(yt[ok, k], yp[ok, k], s=6, alpha=0.6)
            if ok.any():
                lo, hi = np.nanmin(yt[ok, k]), np.nanmax(yt[ok, k])
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            log = TASKS.get(task) is not None and TASKS[task].transforms.get(name) == "log10"
            label = ("log10 " if log else "") + name
            ax.set_xlabel(f"true {label}")
            ax.set_ylabel(f"predicted {label}")
        fig.suptitle(f"{task} {group} {method} (test, all runs)")
        fig.tight_layout()
        _save_png(fig, out / _plot_name("pred_vs_true", task, group, method))
        plt.close(fig)
