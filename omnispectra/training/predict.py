"""Corpus-scale embedding through Lightning's predict loop, in resumable shards.

The everyday :func:`omnispectra.embed` is plain PyTorch; this module embeds a whole
corpus (HDF5 files of :mod:`omnispectra.corpus`, read by
:class:`~omnispectra.dataset.SpectrumDataset`) on any number of devices::

    from omnispectra.training.predict import embed_corpus, read_embedding_shards

    embed_corpus(["corpus-sdss.h5", "corpus-miles.h5"], "embeddings/", model="default",
                 shard_size=50_000, devices=8)
    table = read_embedding_shards("embeddings/")  # one Table, corpus order

Layout of the output folder:

- ``manifest.json``: the corpus files, spectra count, shard size, model and settings
  (a resumed run must match them), and under ``shards`` each written shard's row count
  and sha256 (recorded right after the shard is written).
- ``shard-00000.h5``, ...: shard ``k`` holds the usable spectra ``k * shard_size`` to
  ``(k + 1) * shard_size - 1`` (corpus order), as an embeddings Table
  (:func:`omnispectra.results.embeddings_table`: ``id``, ``source_file``, ``survey``,
  ``embedding``, plus ``row``, the spectrum's row in the concatenated corpus files) with
  provenance ``meta``. Each shard is written atomically when its last spectrum is done,
  so a shard file is always complete.

With several devices each rank embeds whole shards (shard ``k`` goes to rank
``k mod world_size``). A killed run restarted with ``resume=True`` keeps the shards that
exist only once each is checked: its sha256 must be the one the manifest recorded, its
rows the expected count and its ``id`` and ``row`` columns those of the corpus spectra
it covers; a shard that fails is embedded again, and a shard file numbered beyond the
run's shards is refused (it is no part of this run). Within a shard, batches hold
spectra of similar length, so the result does not depend on how many devices ran or
where a run was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ..collate import Collator
from ..dataset import SpectrumDataset
from ..exceptions import ConfigError, OutputExistsError
from ..fileio import write_text
from ..pretrained import sha256sum
from ..results import embeddings_table, provenance_meta, write_table

__all__ = ["EmbeddingModule", "ShardBatchSampler", "ShardWriter", "embed_corpus", "read_embedding_shards",
           "shard_name", "MANIFEST", "PRECISION_DTYPES", "prepare_shard_folder", "completed_shards",
           "open_sharded_run"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "omnispectra-embedding-shards"
_SHARD = re.compile(r"^shard-(\d{5,})\.h5$")

#: Lightning precision -> the dtype recorded in ``meta["DTYPE"]``.
PRECISION_DTYPES = {"32-true": "float32", "32": "float32", "bf16-mixed": "bfloat16", "16-mixed": "float16"}


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return f"shard-{k:05d}.h5"


class EmbeddingModule(L.LightningModule):
    """Predict-only wrapper: a batch ``(positions, Batch)`` -> ``(positions, embeddings)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions, data = batch
        vectors = self.model.embed(data.tokens, data.wavelength, data.valid)  # (B, D)
        return positions, vectors.float()


class _PositionCollator:
    """``[(position, Sample), ...]`` -> ``(positions, Batch)`` (picklable for workers)."""

    def __init__(self) -> None:
        self.collate = Collator(mask=False)

    def __call__(self, items: Sequence[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        positions = torch.as_tensor([int(key) for key, _ in items], dtype=torch.int64)
        return positions, self.collate(items)


class ShardBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset positions, shard by shard, never crossing a shard boundary.

    Parameters
    ----------
    lengths : array of int
        Token count of every dataset item.
    shard_size, batch_size : int
    shards : sequence of int
        The shards to run (e.g. the ones not written yet), in order.
    num_replicas, rank : int
        This rank runs shards ``shards[rank::num_replicas]``.
    """

    def __init__(self, lengths: Any, shard_size: int, batch_size: int, shards: Sequence[int],
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.shard_size = int(shard_size)
        self.batch_size = int(batch_size)
        self.shards = list(shards)[rank::num_replicas]

    def shard_positions(self, k: int) -> np.ndarray:
        return np.arange(k * self.shard_size, min((k + 1) * self.shard_size, self.lengths.size))

    def __iter__(self):
        for k in self.shards:
            positions = self.shard_positions(k)
            order = positions[np.argsort(-self.lengths[positions], kind="stable")]  # longest first
            for start in range(0, order.size, self.batch_size):
                yield order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return sum(-(-self.shard_positions(k).size // self.batch_size) for k in self.shards)


class ShardWriter(BasePredictionWriter):
    """Collects a rank's embeddings and writes each shard atomically once it is complete."""

    def __init__(self, output: Path, dataset: SpectrumDataset, shard_size: int, dtype: str) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.dataset = dataset
        self.shard_size = int(shard_size)
        self.dtype = dtype
        self._pending: dict[int, dict[int, np.ndarray]] = {}
        self._columns: dict[str, np.ndarray] | None = None
        self._provenance: dict[str, Any] | None = None

    def _meta_columns(self) -> dict[str, np.ndarray]:
        if self._columns is None:
            ds = self.dataset
            self._columns = {"id": ds.column("id"), "source_file": ds.column("source_file"),
                             "survey": ds.surveys, "row": ds.rows}
        return self._columns

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        positions, vectors = prediction
        vectors = vectors.detach().cpu().numpy()
        for pos, vec in zip(positions.tolist(), vectors, strict=True):
            k = pos // self.shard_size
            self._pending.setdefault(k, {})[pos] = vec
            expected = min((k + 1) * self.shard_size, len(self.dataset)) - k * self.shard_size
            if len(self._pending[k]) == expected:
                self._write(k, self._pending.pop(k), pl_module)

    def _write(self, k: int, rows: dict[int, np.ndarray], pl_module) -> None:
        positions = np.array(sorted(rows), dtype=np.int64)
        cols = self._meta_columns()
        if self._provenance is None:  # the weights are fixed while predicting: hash them once
            self._provenance = provenance_meta(pl_module.model, dtype=self.dtype, device=pl_module.device,
                                               kind="embeddings")
        meta = {**self._provenance, "SHARD": int(k)}
        table = embeddings_table(cols["id"][positions], np.stack([rows[p] for p in positions]),
                                 source_files=cols["source_file"][positions],
                                 surveys=cols["survey"][positions], meta=meta)
        table["row"] = cols["row"][positions]
        table["row"].description = "row of the spectrum in the concatenated corpus files"
        write_table(table, self.output / shard_name(k))
        _record_shard(self.output, k, positions.size)
        logger.info("wrote %s (%d spectra)", shard_name(k), positions.size)


class _ShardData(L.LightningDataModule):
    def __init__(self, dataset: SpectrumDataset, shard_size: int, batch_size: int, shards: Sequence[int],
                 num_workers: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.shards = list(shards)
        self.num_workers = num_workers

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        trainer = self.trainer
        sampler = ShardBatchSampler(self.dataset.token_lengths, self.shard_size, self.batch_size, self.shards,
                                    num_replicas=int(trainer.world_size), rank=int(trainer.global_rank))
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler,
                                           collate_fn=_PositionCollator(), num_workers=self.num_workers)


def _manifest(dataset: SpectrumDataset, model: Any, shard_size: int, precision: str) -> dict[str, Any]:
    meta = provenance_meta(model, dtype=PRECISION_DTYPES[precision], device="cpu")
    return {
        "format": MANIFEST_FORMAT,
        "corpus": [{"file": p.name, "size": p.stat().st_size} for p in dataset.paths],
        "n_spectra": len(dataset),
        "n_dropped": int(dataset.n_dropped),
        "shard_size": int(shard_size),
        "n_shards": -(-len(dataset) // shard_size),
        "model": meta["MODEL"],
        "model_sha256": meta["MODELSHA"],
        "encoder_sha256": meta["ENCSHA"],
        "precision": precision,
        "omnispectra_version": meta["OMNIVERS"],
    }


def completed_shards(output: Path) -> list[int]:
    """The shards (numbers) whose files exist in ``output``."""
    return sorted(int(m.group(1)) for p in output.iterdir() if (m := _SHARD.match(p.name)))


@contextlib.contextmanager
def _folder_lock(output: Path) -> Iterator[None]:
    """Exclusive lock on the output folder itself (ranks record their shards one at a time;
    no lock file is left behind). Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _record_shard(output: Path, k: int, n_rows: int) -> None:
    """Add shard ``k``'s row count and sha256 to the manifest (read, update, atomic write)."""
    record = {"n": int(n_rows), "sha256": sha256sum(output / shard_name(k))}
    with _folder_lock(output):
        manifest = json.loads((output / MANIFEST).read_text())
        manifest.setdefault("shards", {})[str(k)] = record
        write_text(output / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _shard_positions(manifest: dict[str, Any], k: int) -> np.ndarray:
    size = int(manifest["shard_size"])
    return np.arange(k * size, min((k + 1) * size, int(manifest["n_spectra"])))


def _shard_problem(output: Path, k: int, manifest: dict[str, Any],
                   corpus: dict[str, np.ndarray] | None) -> str | None:
    """Why shard ``k`` cannot be trusted, or None. ``corpus``: the ``id`` and ``row`` of every
    spectrum of the run (None: checksum and row count only)."""
    from astropy.table import Table

    path = output / shard_name(k)
    record = (manifest.get("shards") or {}).get(str(k))
    if not isinstance(record, dict) or "sha256" not in record:
        return "the manifest records no checksum for it (its run was killed before recording it)"
    digest = sha256sum(path)
    if digest != record["sha256"]:
        return f"its sha256 {digest[:12]}... is not the {str(record['sha256'])[:12]}... the manifest recorded"
    positions = _shard_positions(manifest, k)
    if int(record.get("n", -1)) != positions.size:
        return f"the manifest records {record.get('n')} rows for it, the run expects {positions.size}"
    if corpus is None:
        return None
    try:
        table = Table.read(path)
    except Exception as err:  # any unreadable file is embedded again
        return f"it cannot be read ({type(err).__name__}: {err})"
    if len(table) != positions.size:
        return f"it holds {len(table)} rows, the run expects {positions.size}"
    if "row" not in table.colnames or not np.array_equal(np.asarray(table["row"]), corpus["row"][positions]):
        return "its row column is not the corpus rows it covers"
    if [str(v) for v in table["id"]] != [str(v) for v in corpus["id"][positions]]:
        return "its ids are not those of the corpus spectra it covers"
    return None


def _extra_shards(output: Path, n_shards: int) -> list[str]:
    return [shard_name(k) for k in completed_shards(output) if k >= n_shards]


def _trusted_shards(output: Path, old: dict[str, Any], n_shards: int,
                    corpus: dict[str, np.ndarray]) -> dict[str, Any]:
    """The records of the previous run's shards that pass :func:`_shard_problem`; the others
    are deleted (and so embedded again). A shard numbered beyond the run is refused."""
    extra = _extra_shards(output, n_shards)
    if extra:
        raise ConfigError(f"cannot resume the run in {output}: {', '.join(extra[:5])} lie beyond its "
                          f"{n_shards} shards (files of another run?); move them away and resume again")
    trusted = {}
    for k in completed_shards(output):
        problem = _shard_problem(output, k, old, corpus)
        if problem is None:
            trusted[str(k)] = old["shards"][str(k)]
        else:
            logger.warning("%s is embedded again: %s", shard_name(k), problem)
            (output / shard_name(k)).unlink()
    return trusted


def prepare_shard_folder(output: Path, manifest: dict[str, Any], resume: bool, overwrite: bool,
                         keys: Sequence[str] = ("corpus", "n_spectra", "shard_size", "encoder_sha256",
                                                "precision"),
                         corpus: dict[str, np.ndarray] | None = None) -> list[int]:
    """Check or reset the output folder of a sharded run; return the shards still to run.

    A resumed run must agree with the folder's ``manifest.json`` on ``keys``. With ``corpus``
    (the ``id`` and ``row`` of every spectrum; embedding runs) each kept shard is checked
    against the checksum and row count the manifest recorded and the corpus it covers
    (:func:`_shard_problem`); without, the run's own module checks its shards' content.
    """
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"the output {output} is a file; a sharded run writes a folder of shards")
    found = output / MANIFEST
    if found.exists() and not resume:
        if not overwrite:
            raise OutputExistsError(
                f"{output} already holds a sharded run; resume the run (resume=True) or start "
                "again with overwrite=True")
        for k in completed_shards(output):
            (output / shard_name(k)).unlink()
        found.unlink()
    manifest = {**manifest, "shards": {}}
    if resume and found.exists():
        try:
            old = json.loads(found.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot resume: {found} is unreadable ({err})") from err
        changed = [k for k in keys if old.get(k) != manifest.get(k)]
        if changed:
            raise ConfigError(f"cannot resume the run in {output}: {', '.join(changed)} differ from that "
                              "run's (use the same corpus, model and settings, or a new folder)")
        manifest["shards"] = (_trusted_shards(output, old, manifest["n_shards"], corpus) if corpus is not None
                              else dict(old.get("shards") or {}))
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(".shard-*.tmp*"):  # a write cut short by a kill
        stale.unlink()
    write_text(found, json.dumps(manifest, indent=1) + "\n")
    done = set(completed_shards(output))
    return [k for k in range(manifest["n_shards"]) if k not in done]


def open_sharded_run(corpus: Any, model: Any, shard_size: Any,
                     batch_size: Any) -> tuple[Any, SpectrumDataset]:
    """``(model in eval mode on CPU, dataset tokenized for it)`` of a sharded run, its sizes checked.

    Raises
    ------
    ConfigError
        ``shard_size`` or ``batch_size`` not a positive integer.
    """
    from ..model import OmniSpectra
    from ..pretrained import load_model

    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    net = (model if isinstance(model, OmniSpectra) else load_model(model, device="cpu")).eval()
    return net, SpectrumDataset(corpus, patch_size=net.config.patch_size, stride=net.config.stride)


def embed_corpus(
    corpus: Any,
    output: str | os.PathLike,
    model: Any = "default",
    shard_size: int = 10_000,
    batch_size: int = 64,
    precision: str = "32-true",
    accelerator: str = "auto",
    devices: Any = "auto",
    strategy: str = "auto",
    num_workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Embed every usable spectrum of a corpus into a folder of shards (see the module docs).

    Parameters
    ----------
    corpus : path, folder, glob or sequence of them
        Corpus HDF5 files (as :class:`~omnispectra.dataset.SpectrumDataset` takes them).
    output : path-like
        Folder for ``manifest.json`` and the shards.
    model : str, path-like or OmniSpectra
        As for :func:`omnispectra.embed`.
    shard_size : int
        Spectra per shard (the unit of resumption).
    batch_size : int
        Spectra per forward pass per device.
    precision : str
        Lightning precision: ``"32-true"`` (default, float32: results identical across
        machines), ``"bf16-mixed"`` or ``"16-mixed"``; recorded in every shard's meta.
    accelerator, devices, strategy : Lightning Trainer settings
        E.g. ``devices=8`` for eight GPUs (DDP); each rank writes its own shards.
    num_workers : int
        DataLoader workers per device.
    resume : bool
        Continue a run in ``output`` (the corpus, model and settings must match its
        manifest): a shard that exists is kept when its sha256, row count, ids and rows
        are those the run expects, else embedded again (logged).
    overwrite : bool
        Delete a previous run's shards in ``output`` and start again.
    progress : bool
        Show Lightning's progress bar.
    callbacks : list of lightning Callback, optional
        Extra callbacks (run after the shard writer).

    Returns
    -------
    dict
        ``output``, ``n_spectra``, ``n_shards``, ``skipped`` (shards that existed) and
        ``written`` (shards this call wrote).

    Raises
    ------
    OutputExistsError
        ``output`` holds a previous run and neither ``resume`` nor ``overwrite`` is set.
    ConfigError
        Bad settings, a resumed run that does not match its manifest, or a shard file
        numbered beyond the run's shards.
    CorpusError, CheckpointError
        Unreadable corpus or model.
    """
    if precision not in PRECISION_DTYPES:
        raise ConfigError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    output = Path(output)
    net, dataset = open_sharded_run(corpus, model, shard_size, batch_size)
    manifest = _manifest(dataset, net, shard_size, precision)
    pending = prepare_shard_folder(output, manifest, resume, overwrite,
                                   corpus={"id": dataset.column("id"), "row": dataset.rows})
    skipped = manifest["n_shards"] - len(pending)
    result = {"output": str(output), "n_spectra": len(dataset), "n_shards": manifest["n_shards"],
              "skipped": skipped, "written": 0}
    if not pending:
        return result
    writer = ShardWriter(output, dataset, shard_size, PRECISION_DTYPES[precision])
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                        callbacks=[writer, *(callbacks or [])], logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False,
                        use_distributed_sampler=False)
    data = _ShardData(dataset, shard_size, batch_size, pending, num_workers)
    trainer.predict(EmbeddingModule(net), datamodule=data, return_predictions=False)
    result["written"] = len(pending)
    return result


def read_embedding_shards(output: str | os.PathLike, allow_incomplete: bool = False):
    """All shards of an :func:`embed_corpus` run as one Table, in corpus order.

    Raises
    ------
    ConfigError
        No manifest, missing shards (unless ``allow_incomplete``), a shard file numbered
        beyond the run's shards, or a shard whose sha256 or row count is not the one the
        manifest recorded.
    """
    from astropy.table import Table, vstack

    output = Path(output)
    try:
        manifest = json.loads((output / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{output} holds no readable {MANIFEST}: {err}") from err
    done = completed_shards(output)
    extra = _extra_shards(output, manifest["n_shards"])
    if extra:
        raise ConfigError(f"{output} holds {', '.join(extra[:5])} beyond its {manifest['n_shards']} shards "
                          "(files of another run?); move them away")
    for k in done:
        problem = _shard_problem(output, k, manifest, None)
        if problem is not None:
            raise ConfigError(f"{output / shard_name(k)} cannot be trusted: {problem}; resume the run "
                              "(resume=True) to embed it again")
    missing = sorted(set(range(manifest["n_shards"])) - set(done))
    if missing and not allow_incomplete:
        raise ConfigError(f"{output} is incomplete: shards {missing[:10]} are missing; resume the run")
    tables = [Table.read(output / shard_name(k)) for k in done]
    if not tables:
        return embeddings_table([], np.zeros((0, 0), np.float32))
    table = vstack(tables, metadata_conflicts="silent")
    table.meta.pop("SHARD", None)
    return table
