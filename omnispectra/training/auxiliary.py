"""Auxiliary pretraining objectives on engine spectra: light label heads and an invariance term.

Opt-in (``TrainConfig.auxiliary``, default None: the paper's masked reconstruction alone,
bit for bit). With it, the pooled embedding :meth:`omnispectra.model.OmniSpectra.pool`
of every training batch also feeds

- **label heads** (:class:`AuxiliaryHeads`, LayerNorm then one linear layer each, so
  the information has to be linearly present in the embedding a user gets): the
  GALAXY/QSO/STAR class (cross-entropy), ``ln(1 + z)`` (Huber) and, where present,
  log10 Teff, logg and [Fe/H] (Huber on fixed standardizations, :data:`STELLAR_SCALES`).
  Their losses count **only on engine spectra** (surveys ``engine_*``): real spectra
  stay in the masked objective alone, so no real label is learned here and the
  evaluation's labelled spectra stay unseen;
- an **invariance term**: the two views of one engine object rendered through two
  donors (:meth:`omnispectra.engine.Engine.sample_pair`, corpora written with
  ``write_engine_corpus(..., pairs=True)``) are a positive pair of an InfoNCE loss
  over the batch's embeddings (cosine, temperature ``temperature``), so the
  embedding keeps the object and drops the donor's grid, noise and calibration.
  :class:`PairedBatchSampler` puts both views into one batch.

The heads live here, on the training side; :class:`~omnispectra.model.OmniSpectra`
stays a plain nn.Module and exported weights carry no head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.stream import is_engine_survey
from ..exceptions import ConfigError
from ..flags import CLASSES

__all__ = ["AUX_LABELS", "STELLAR_SCALES", "AuxiliaryConfig", "AuxiliaryHeads", "AuxiliaryCollator",
           "auxiliary_losses", "invariance_loss", "partner_index", "PairedBatchSampler"]

#: Corpus columns the data module loads as labels when the auxiliary objectives are on.
AUX_LABELS = ("class", "z", "teff", "logg", "fe_h", "survey", "object_id")
#: ``target -> (log10 first?, centre, scale)``: fixed standardizations of the stellar targets
#: (the span of FGKM dwarfs and giants), so no statistic of any data set is needed.
STELLAR_SCALES: dict[str, tuple[bool, float, float]] = {
    "teff": (True, 3.75, 0.15), "logg": (False, 3.5, 1.5), "fe_h": (False, -0.5, 0.7)}


@dataclass(frozen=True)
class AuxiliaryConfig:
    """Weights of the auxiliary terms (added to the reconstruction loss) and their settings."""

    class_weight: float = 0.1
    z_weight: float = 0.1
    stellar_weight: float = 0.1
    invariance_weight: float = 0.1
    temperature: float = 0.1

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AuxiliaryConfig:
        """From a mapping of field names (``TrainConfig.auxiliary``).

        Raises
        ------
        ConfigError
            Unknown names, or values that are not numbers >= 0 (temperature > 0).
        """
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        if set(values) - known:
            raise ConfigError(f"unknown auxiliary settings {sorted(set(values) - known)}; "
                              f"known: {sorted(known)}")
        for key, value in values.items():
            if type(value) not in (int, float) or not value >= 0 or (key == "temperature" and value == 0):
                raise ConfigError(f"auxiliary setting {key}={value!r} must be a number >= 0 "
                                  "(temperature > 0)")
        return cls(**{k: float(v) for k, v in values.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class AuxiliaryHeads(nn.Module):
    """LayerNorm then linear heads on the pooled embedding: class logits, ln(1+z), stellar."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.classes = nn.Linear(dim, len(CLASSES))
        self.redshift = nn.Linear(dim, 1)
        self.stellar = nn.Linear(dim, len(STELLAR_SCALES))

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(pooled)                                           # (B, D)
        return {"class": self.classes(h), "z": self.redshift(h)[:, 0], "stellar": self.stellar(h)}


def _category_lookup(categories: Sequence[str], table: Mapping[str, float]) -> np.ndarray:
    return np.array([table.get(c, math.nan) for c in categories], dtype=np.float64)


class AuxiliaryCollator:
    """Wraps a :class:`~omnispectra.collate.Collator`: turns the dataset's label columns into
    the targets of :func:`auxiliary_losses` (``aux_*`` entries of ``Batch.labels``).

    ``categories`` is :attr:`omnispectra.dataset.SpectrumDataset.label_categories` (string
    labels arrive as indices into it). Targets: ``aux_class`` (index into
    :data:`~omnispectra.flags.CLASSES`), ``aux_z`` (ln(1+z)), ``aux_teff``/``aux_logg``/
    ``aux_fe_h`` (standardized), ``aux_engine`` (1 for engine spectra) and ``aux_object``
    (an object code, NaN off the engine); NaN where unknown.
    """

    def __init__(self, collator: Any, categories: Mapping[str, Sequence[str]]) -> None:
        self.collator = collator
        self.class_code = _category_lookup(categories.get("class", []),
                                           {c: float(k) for k, c in enumerate(CLASSES)})
        self.engine = np.array([float(is_engine_survey(s)) for s in categories.get("survey", [])])

    def set_epoch(self, epoch: int) -> None:
        self.collator.set_epoch(epoch)

    def __call__(self, items: Sequence[Any]) -> Any:
        batch = self.collator(items)
        labels = {k: v.numpy() for k, v in batch.labels.items()}
        n = len(batch)

        def coded(name: str, table: np.ndarray) -> np.ndarray:
            idx = labels.get(name, np.full(n, np.nan))
            ok = np.isfinite(idx)
            out = np.full(n, np.nan)
            out[ok] = table[idx[ok].astype(np.int64)] if table.size else np.nan
            return out

        engine = np.nan_to_num(coded("survey", self.engine), nan=0.0)
        targets = {"aux_class": coded("class", self.class_code), "aux_engine": engine,
                   "aux_object": np.where(engine > 0, labels.get("object_id", np.full(n, np.nan)), np.nan)}
        with np.errstate(invalid="ignore", divide="ignore"):
            targets["aux_z"] = np.log1p(np.clip(labels.get("z", np.full(n, np.nan)), -0.01, None))
            for name, (log, centre, scale) in STELLAR_SCALES.items():
                value = labels.get(name, np.full(n, np.nan))
                if log:
                    value = np.where(value > 0, np.log10(np.where(value > 0, value, 1.0)), np.nan)
                targets[f"aux_{name}"] = (value - centre) / scale
        batch.labels = {**batch.labels,
                        **{k: torch.as_tensor(v, dtype=torch.float64) for k, v in targets.items()}}
        return batch


def invariance_loss(pooled: torch.Tensor, objects: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over a batch: each row's positive is another row of its object (NaN: none).

    ``pooled (B, D)``, ``objects (B,)``; cosine similarities over ``temperature``, the
    row itself left out. Rows without a partner are anchors of no term but still serve
    as negatives. Zero (with a gradient path) when no row has a partner.
    """
    obj = objects.to(pooled.device)
    same = (obj[:, None] == obj[None, :]) & torch.isfinite(obj)[:, None]
    eye = torch.eye(len(obj), dtype=torch.bool, device=pooled.device)
    positive = same & ~eye
    anchors = positive.any(1)
    if not bool(anchors.any()):
        return pooled.sum() * 0.0
    z = F.normalize(pooled.float(), dim=1)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_row = -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp_min(1))
    return per_row[anchors].mean()


def auxiliary_losses(heads: AuxiliaryHeads, pooled: torch.Tensor, labels: Mapping[str, torch.Tensor],
                     config: AuxiliaryConfig) -> dict[str, torch.Tensor]:
    """The auxiliary terms of one batch (weighted sum in ``aux_loss``); each term only on
    the engine rows that have its label (zero when none has).

    ``labels`` are those :class:`AuxiliaryCollator` makes.
    """
    out = heads(pooled)
    device = pooled.device
    engine = labels["aux_engine"].to(device) > 0
    zero = pooled.sum() * 0.0

    def rows(name: str) -> torch.Tensor:
        return engine & torch.isfinite(labels[name].to(device))

    terms: dict[str, torch.Tensor] = {}
    sel = rows("aux_class")
    terms["aux_class"] = (F.cross_entropy(out["class"][sel].float(),
                                          labels["aux_class"].to(device)[sel].long()) if sel.any() else zero)
    sel = rows("aux_z")
    terms["aux_z"] = (F.huber_loss(out["z"][sel].float(), labels["aux_z"].to(device)[sel].float())
                      if sel.any() else zero)
    stellar = torch.stack([labels[f"aux_{n}"].to(device) for n in STELLAR_SCALES], 1)   # (B, 3)
    have = engine[:, None] & torch.isfinite(stellar)
    terms["aux_stellar"] = (F.huber_loss(out["stellar"].float()[have], stellar[have].float())
                            if have.any() else zero)
    terms["aux_invariance"] = (invariance_loss(pooled, torch.where(engine, labels["aux_object"].to(device),
                                                                   torch.nan), config.temperature)
                               if config.invariance_weight > 0 else zero)
    terms["aux_loss"] = (config.class_weight * terms["aux_class"] + config.z_weight * terms["aux_z"]
                         + config.stellar_weight * terms["aux_stellar"]
                         + config.invariance_weight * terms["aux_invariance"])
    return terms


def partner_index(object_ids: Sequence[str], surveys: Sequence[str]) -> np.ndarray:
    """For each row, another engine row of the same object (the next one, cyclically); -1 for
    real spectra and engine objects seen once."""
    partner = np.full(len(object_ids), -1, dtype=np.int64)
    groups: dict[str, list[int]] = {}
    for i, (oid, survey) in enumerate(zip(object_ids, surveys, strict=True)):
        if is_engine_survey(survey) and oid:
            groups.setdefault(str(oid), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            partner[members] = np.roll(members, -1)
    return partner


class PairedBatchSampler(torch.utils.data.Sampler[list]):
    """A batch sampler that adds, to each batch, the partner of every engine view in it.

    Wraps a rank-aware length-bucketing batch sampler (keys ``(epoch, index)`` or
    indices) and delegates ``set_epoch``, ``skip_next``, ``epoch`` and ``len`` to it;
    batches grow by at most the number of their paired engine rows.
    """

    def __init__(self, inner: Any, partner: np.ndarray) -> None:
        self.inner = inner
        self.partner = np.asarray(partner, dtype=np.int64)

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def skip_next(self, n_batches: int, epoch: int | None = None) -> None:
        self.inner.skip_next(n_batches, epoch=epoch)

    def __iter__(self) -> Iterator[list]:
        for batch in self.inner:
            keys = list(batch)
            index = [int(k[1]) if isinstance(k, tuple) else int(k) for k in keys]
            present = set(index)
            for key, i in zip(list(keys), index, strict=True):
                j = int(self.partner[i])
                if j >= 0 and j not in present:
                    present.add(j)
                    keys.append((key[0], j) if isinstance(key, tuple) else j)
            yield keys

    def __len__(self) -> int:
        return len(self.inner)
