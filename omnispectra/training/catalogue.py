"""The full catalogue row over whole corpora, through Lightning's predict loop in resumable shards.

:func:`catalogue_corpus` runs one of the predictor verbs of :mod:`omnispectra.inference.predictors`
(``classify`` with ``full=True``, ``predict_redshift`` or ``predict_stellar_parameters``) over
HDF5 corpora (:mod:`omnispectra.corpus`) with the shard machinery of
:mod:`omnispectra.training.predict` (``embed-corpus``): each predict step hands a batch of one
shard's spectra to the verb itself, so a catalogue row is computed by the one code path the
everyday verbs use. Layout of the output folder:

- ``manifest.json``: corpus, spectra count, shard size, verb, model, probe and template hashes.
  A resumed run must match it.
- ``shard-00000.h5``, ...: the rows of the spectra ``k * shard_size`` to ``(k + 1) * shard_size - 1``
  (corpus order) that the verb kept, sorted by ``row`` (the spectrum's row in the concatenated
  corpus files), with the verb's provenance ``meta`` plus ``SHARD``, ``INPUTSHA`` (sha256 of the
  shard's corpus ids) and ``NSKIPPED``. Written atomically when its last spectrum is done.

On resume a shard counts as done only if its content checks out (readable, its ``SHARD`` and
``INPUTSHA`` those of the corpus rows it should hold); any other is run again. Memory is bounded
by one pending shard per rank and the batch; the final catalogue (:func:`write_catalogue`) is
the shards stacked, rows sorted by ``row``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only

from ..dataset import SpectrumDataset
from ..exceptions import ConfigError
from ..results import write_table
from ..runtime import release_free_heap
from .predict import (
    MANIFEST,
    ShardBatchSampler,
    completed_shards,
    open_sharded_run,
    prepare_shard_folder,
    shard_name,
)

__all__ = ["VERBS", "CatalogueModule", "CatalogueWriter", "catalogue_corpus", "read_catalogue_shards",
           "write_catalogue", "shard_input_sha"]

logger = logging.getLogger(__name__)

#: Corpus verbs -> the predictor keyword arguments that select them.
VERBS = ("classify", "predict-redshift", "predict-stellar")
MANIFEST_FORMAT = "omnispectra-catalogue-shards"


def shard_input_sha(ids: Sequence[str]) -> str:
    """sha256 of a shard's corpus ids (in corpus order): what a shard file must say it holds."""
    digest = hashlib.sha256()
    for sid in ids:
        digest.update(str(sid).encode() + b"\0")
    return digest.hexdigest()


class _Spectra(torch.utils.data.Dataset):
    """Dataset positions -> ``(position, spectrum)``; the spectrum's id is its position (mapped back
    to the corpus id by the writer, whatever ids the corpus files repeat)."""

    def __init__(self, dataset: SpectrumDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        spectrum = self.dataset.spectrum(int(i))
        spectrum.meta["id"] = str(int(i))
        return int(i), spectrum


def _collate_spectra(items: Sequence[tuple[int, Any]]) -> tuple[torch.Tensor, list[Any]]:
    return torch.as_tensor([i for i, _ in items], dtype=torch.int64), [s for _, s in items]


class CatalogueModule(L.LightningModule):
    """Predict-only wrapper of a predictor verb: ``(positions, spectra)`` -> ``(positions, table)``."""

    def __init__(self, model: torch.nn.Module, verb: str, options: dict[str, Any]) -> None:
        super().__init__()
        if verb not in VERBS:
            raise ConfigError(f"verb must be one of {VERBS}, got {verb!r}")
        self.model, self.verb, self.options = model, verb, dict(options)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # spectra stay host objects: the verb moves its own tensors
        return batch

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, Any]:
        from ..inference import predictors

        positions, spectra = batch
        common = {"model": self.model, "on_error": "skip", "progress": False, "batch_size": len(spectra),
                  **self.options}
        if self.verb == "classify":
            table = predictors.classify(spectra, full=True, **common)
        elif self.verb == "predict-redshift":
            table = predictors.predict_redshift(spectra, **common)
        else:
            table = predictors.predict_stellar_parameters(spectra, **common)
        release_free_heap()   # else freed batch arrays pile up as resident memory (runtime docs)
        return positions, table


class CatalogueWriter(BasePredictionWriter):
    """Collects a rank's rows and writes each shard atomically once all its spectra are done."""

    def __init__(self, output: Path, dataset: SpectrumDataset, shard_size: int) -> None:
        super().__init__(write_interval="batch")
        self.output, self.dataset, self.shard_size = Path(output), dataset, int(shard_size)
        self._tables: dict[int, list[Any]] = {}
        self._seen: dict[int, int] = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        positions, table = prediction
        positions = positions.cpu().numpy()
        k = int(positions[0]) // self.shard_size   # batches never cross a shard (ShardBatchSampler)
        self._tables.setdefault(k, []).append(table)
        self._seen[k] = self._seen.get(k, 0) + positions.size
        expected = min((k + 1) * self.shard_size, len(self.dataset)) - k * self.shard_size
        if self._seen[k] == expected:
            self._write(k, self._tables.pop(k), self._seen.pop(k))

    def _write(self, k: int, tables: list[Any], n_seen: int) -> None:
        from astropy.table import vstack

        ds = self.dataset
        table = vstack(tables, metadata_conflicts="silent")
        rows = np.asarray(table["id"], dtype=np.int64)
        table["id"] = np.asarray(ds.column("id")[rows], dtype=str)
        table["source_file"] = np.asarray(ds.column("source_file")[rows], dtype=str)
        table["row"] = ds.rows[rows]
        table["row"].description = "row of the spectrum in the concatenated corpus files"
        table.sort("row")
        positions = np.arange(k * self.shard_size, min((k + 1) * self.shard_size, len(ds)))
        table.meta.pop("skipped", None)   # positions, not ids; NSKIPPED counts them
        for key in ("n_inputs", "n_read", "n_skipped"):
            table.meta.pop(key, None)
        table.meta.update({"SHARD": int(k), "INPUTSHA": shard_input_sha(ds.column("id")[positions]),
                           "NSKIPPED": int(n_seen - len(table))})
        write_table(table, self.output / shard_name(k), overwrite=True)
        logger.info("wrote %s (%d rows)", shard_name(k), len(table))


class _CatalogueData(L.LightningDataModule):
    def __init__(self, dataset: SpectrumDataset, shard_size: int, batch_size: int, shards: Sequence[int],
                 num_workers: int) -> None:
        super().__init__()
        self.dataset, self.shard_size, self.batch_size = dataset, shard_size, batch_size
        self.shards, self.num_workers = list(shards), num_workers

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        trainer = self.trainer
        sampler = ShardBatchSampler(self.dataset.token_lengths, self.shard_size, self.batch_size, self.shards,
                                    num_replicas=int(trainer.world_size), rank=int(trainer.global_rank))
        return torch.utils.data.DataLoader(_Spectra(self.dataset), batch_sampler=sampler,
                                           collate_fn=_collate_spectra, num_workers=self.num_workers)


def _shard_ok(output: Path, k: int, dataset: SpectrumDataset, shard_size: int) -> bool:
    """Whether shard ``k``'s file holds what it should (readable, its SHARD and INPUTSHA)."""
    from astropy.table import Table

    positions = np.arange(k * shard_size, min((k + 1) * shard_size, len(dataset)))
    try:
        meta = Table.read(output / shard_name(k)).meta
    except Exception as err:  # noqa: BLE001 (any unreadable file is simply run again)
        logger.warning("%s is unreadable (%s): run again", shard_name(k), err)
        return False
    good = meta.get("SHARD") == k and meta.get("INPUTSHA") == shard_input_sha(dataset.column("id")[positions])
    if not good:
        logger.warning("%s does not hold the corpus rows it should: run again", shard_name(k))
    return good


def _manifest(dataset: SpectrumDataset, net: Any, verb: str, shard_size: int,
              options: dict[str, Any]) -> dict[str, Any]:
    from ..pretrained import templates_meta
    from ..probes import probe_meta
    from ..results import provenance_meta

    meta = provenance_meta(net, dtype=options.get("dtype"), device="cpu")
    probes = {name: probe_meta(value, "")["PROBSHA"]
              for name, value in options.items() if name.endswith("probe") and hasattr(value, "info")}
    fitter = options.get("templates")
    return {"format": MANIFEST_FORMAT, "verb": verb,
            "corpus": [{"file": p.name, "size": p.stat().st_size} for p in dataset.paths],
            "n_spectra": len(dataset), "shard_size": int(shard_size),
            "n_shards": -(-len(dataset) // shard_size), "model": meta["MODEL"],
            "encoder_sha256": meta["ENCSHA"], "precision": str(options.get("dtype")),
            "probes": probes, "templates": templates_meta(fitter) if fitter is not None else {},
            "omnispectra_version": meta["OMNIVERS"]}


def _resolved(net: Any, verb: str, options: dict[str, Any]) -> dict[str, Any]:
    """Probes and templates resolved once (not per batch); the verb checks them again, cheaply."""
    from ..inference.predictors import survey_probe_for
    from ..probes import checked_probe
    from ..redshift import fitter_for

    out = dict(options)
    library = "probe" if verb == "predict-stellar" else "stellar_probe"
    if verb != "predict-redshift":   # paired as the verb would, before the library probe is resolved
        survey = survey_probe_for(out.get(library), out.get("stellar_survey_probe"), net)
        out["stellar_survey_probe"] = False if survey is None else survey
    tasks = {"probe": "stellar_params" if verb == "predict-stellar" else "source_class",
             "stellar_probe": "stellar_params", "class_probe": "source_class"}
    wanted = {"classify": ("probe", "stellar_probe", "templates"), "predict-redshift": ("probe", "templates"),
              "predict-stellar": ("probe", "class_probe")}[verb]
    for name in wanted:
        out[name] = (fitter_for(out.get(name)) if name == "templates"
                     else checked_probe(out.get(name), tasks[name], net))
    return out


def catalogue_corpus(corpus: Any, output: str | os.PathLike, verb: str = "classify", model: Any = "default",
                     shard_size: int = 10_000, batch_size: int = 32, accelerator: str = "cpu",
                     devices: Any = 1, strategy: str = "auto", num_workers: int = 0, resume: bool = False,
                     overwrite: bool = False, catalogue: str | os.PathLike | None = None,
                     callbacks: list | None = None, **options: Any) -> dict[str, Any]:
    """Run a predictor verb over every spectrum of a corpus into a folder of shards (module docs).

    Parameters
    ----------
    corpus, output
        The corpus files and the shard folder, as for
        :func:`~omnispectra.training.predict.embed_corpus`.
    verb : {"classify", "predict-redshift", "predict-stellar"}
        ``classify`` gives the full catalogue row (``classify(..., full=True)``).
    model : str, path-like or OmniSpectra
    shard_size, batch_size : int
        Spectra per shard (the unit of resumption) and per call of the verb.
    accelerator, devices, strategy : Lightning Trainer settings
        E.g. ``devices=2, strategy="ddp"`` for two processes (gloo on CPU).
    num_workers : int
        DataLoader workers reading the corpus.
    resume, overwrite : bool
        As for :func:`omnispectra.training.predict.embed_corpus`; shards are checked by content.
    catalogue : path-like, optional
        Also write the final catalogue there (FITS, HDF5 or ECSV by suffix; rank 0).
    callbacks : list of lightning Callback, optional
        Extra callbacks (run after the shard writer).
    **options
        The verb's ``probe``, ``stellar_probe``, ``class_probe``, ``templates`` and ``dtype``
        (default ``"float32"``: the same rows on any machine).

    Returns
    -------
    dict
        ``output``, ``n_spectra``, ``n_shards``, ``skipped`` (shards found done) and ``written``.

    Raises
    ------
    ConfigError
        Bad settings, or a resumed run that does not match its manifest.
    OutputExistsError
        ``output`` holds a previous run and neither ``resume`` nor ``overwrite`` is set.
    """
    if verb not in VERBS:
        raise ConfigError(f"verb must be one of {VERBS}, got {verb!r}")
    output = Path(output)
    options.setdefault("dtype", "float32")
    net, dataset = open_sharded_run(corpus, model, shard_size, batch_size)
    options = _resolved(net, verb, options)
    manifest = _manifest(dataset, net, verb, shard_size, options)
    keys = ("format", "verb", "corpus", "n_spectra", "shard_size", "encoder_sha256", "precision", "probes",
            "templates")
    if rank_zero_only.rank == 0:
        pending = prepare_shard_folder(output, manifest, resume, overwrite, keys=keys)
    else:   # a DDP child re-running the script: rank 0 prepared the folder before launching it
        pending = sorted(set(range(manifest["n_shards"])) - set(completed_shards(output)))
    pending = sorted(set(pending) | {k for k in completed_shards(output)
                                     if not _shard_ok(output, k, dataset, shard_size)})
    result = {"output": str(output), "n_spectra": len(dataset), "n_shards": manifest["n_shards"],
              "skipped": manifest["n_shards"] - len(pending), "written": len(pending)}
    if pending:
        trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, precision="32-true",
                            callbacks=[CatalogueWriter(output, dataset, shard_size), *(callbacks or [])],
                            logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            use_distributed_sampler=False)
        data = _CatalogueData(dataset, shard_size, batch_size, pending, num_workers)
        trainer.predict(CatalogueModule(net, verb, options), datamodule=data, return_predictions=False)
        trainer.strategy.barrier()
        if trainer.global_rank != 0:
            return result
    if catalogue is not None:
        write_catalogue(output, catalogue, overwrite=True)
    return result


def read_catalogue_shards(output: str | os.PathLike):
    """All shards of a :func:`catalogue_corpus` run as one Table, rows sorted by ``row``.

    Raises
    ------
    ConfigError
        No manifest, or missing shards (resume the run).
    """
    import json

    from astropy.table import Table, vstack

    output = Path(output)
    try:
        manifest = json.loads((output / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{output} holds no readable {MANIFEST}: {err}") from err
    missing = sorted(set(range(manifest["n_shards"])) - set(completed_shards(output)))
    if missing:
        raise ConfigError(f"{output} is incomplete: shards {missing[:10]} are missing; resume the run")
    tables = [Table.read(output / shard_name(k)) for k in range(manifest["n_shards"])]
    skipped = sum(int(t.meta.get("NSKIPPED", 0)) for t in tables)
    table = vstack(tables, metadata_conflicts="silent")
    table.sort("row")
    table.meta.pop("SHARD", None)
    table.meta.pop("INPUTSHA", None)
    table.meta.update({"NSKIPPED": skipped, "n_inputs": manifest["n_spectra"], "VERB": manifest["verb"]})
    return table


def write_catalogue(output: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the catalogue of a finished run (:func:`read_catalogue_shards`) to ``path``
    (FITS, HDF5 or ECSV by suffix, atomically, provenance in ``meta``; a FITS header leaves out
    NaN values such as ``ANOMP99`` of a model without an anomaly threshold)."""
    from ..results import table_format

    table = read_catalogue_shards(output)
    if table_format(path) == "fits":
        table.meta = {key: value for key, value in table.meta.items()
                      if not (isinstance(value, float) and not np.isfinite(value))}
        table.meta["NINPUTS"] = table.meta.pop("n_inputs")
    return write_table(table, path, overwrite=overwrite)
