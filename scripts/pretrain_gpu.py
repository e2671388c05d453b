"""Pretrain the paper preset on one GPU within a fixed wall time (issue 27), everything under ``$OUT``.

Prepared for a lent device: one command, a wall-time cap (``--minutes``, default 5.5, so
start-up, the last checkpoint and the summary fit in 6 minutes), bf16 mixed precision,
the packed variable-length attention the model picks under bf16 on CUDA when a kernel is
installed (flash-attn or PyTorch's ``varlen_attn``; the summary says which), optional
``torch.compile``, data loading in worker processes. Writes into ``--output`` (default
``$OUT/pretrain``): the run folder of :func:`omnispectra.training.train.train`
(``config.yaml``, ``checkpoints/last.ckpt``, ``logs/version_0/metrics.csv``), the
encoder as ``encoder.safetensors`` and ``summary.json`` (steps, wall time, spectra and
tokens per second, device, attention path, final losses).

Run on the device::

    python scripts/pretrain_gpu.py --build-from shared/data --minutes 5.5
    python scripts/pretrain_gpu.py CORPUS.h5 ... --auxiliary '{"class_weight": 0.1}'
    python scripts/pretrain_gpu.py CORPUS.h5 ... --engine-donors shared/data/sdss shared/data/lamost \
        --engine-templates shared/data/templates --auxiliary '{"class_weight": 0.1, "invariance_weight": 0.1}'

With ``--engine-donors``, engine spectra are rendered during training in the DataLoader
workers on the device's CPUs (``TrainConfig.engine_stream``, half of the draws by default),
no engine corpus needed. The summary's ``engine_stream`` counts only what the main process
rendered (none with workers): whether rendering keeps up shows in spectra/s against a run
without ``--engine-donors``.

Check it on a CPU first (tiny preset, 3 steps, float32)::

    python scripts/pretrain_gpu.py CORPUS.h5 --dry-run --output /tmp/dry
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="*", help="corpus HDF5 files or folders")
    parser.add_argument("--build-from", nargs="+", default=[],
                        help="spectra folders to build a corpus from first (into OUTPUT/corpus)")
    parser.add_argument("--output", type=Path, default=None, help="run folder (default $OUT/pretrain)")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--minutes", type=float, default=5.5, help="wall-time cap of the training loop")
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument("--auxiliary", default=None,
                        help="JSON of omnispectra.training.auxiliary.AuxiliaryConfig settings")
    parser.add_argument("--engine-donors", nargs="+", default=[],
                        help="real spectra (files, folders) to render engine spectra through during training")
    parser.add_argument("--engine-templates", default=None,
                        help="template folder or compact .npz (default: the bundled compact templates)")
    parser.add_argument("--engine-objects", type=int, default=100_000, help="engine objects per epoch")
    parser.add_argument("--engine-fraction", type=float, default=0.5, help="share of engine draws")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU check: tiny preset, 3 steps, float32, no workers")
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace, corpus: list[str], output: Path) -> dict:
    """TrainConfig settings of the run (``--dry-run``: the tiny CPU check)."""
    steps = max(1, args.max_steps)
    values = dict(corpus=corpus, output=str(output), batch_size=args.batch_size, num_workers=args.workers,
                  max_steps=steps, max_time_minutes=args.minutes, checkpoint_every=min(2000, steps),
                  val_every=min(2000, steps), t0_steps=steps, lr=args.lr, precision="bf16-mixed",
                  accelerator="gpu", devices=1, strategy="auto", compile=args.compile, progress=False,
                  val_fraction=0.01)
    if args.auxiliary:
        values["auxiliary"] = json.loads(args.auxiliary)
    if args.engine_donors:
        from omnispectra.pretrained import bundled_templates_path

        values["engine_fraction"] = args.engine_fraction
        values["engine_stream"] = {"donors": list(args.engine_donors), "objects": args.engine_objects,
                                   "templates": args.engine_templates or str(bundled_templates_path())}
    if args.dry_run:
        values.update(batch_size=4, num_workers=0, max_steps=3, checkpoint_every=3, val_every=3, t0_steps=3,
                      precision="32-true", accelerator="cpu", compile=False, max_time_minutes=None,
                      val_fraction=0.2, model={"dim": 32, "n_layers": 1, "n_heads": 2})
        if args.engine_donors:
            values["engine_stream"]["objects"] = min(args.engine_objects, 16)
    return values


def _throughput(metrics_csv: str) -> dict:
    """Median spectra/s and tokens/s over the logged steps, and the last losses."""
    import numpy as np

    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))

    def column(name: str) -> list[float]:
        return [float(r[name]) for r in rows if r.get(name)]

    out = {name: float(np.median(column(name))) for name in ("spectra_per_s", "tokens_per_s") if column(name)}
    for name in ("train_loss", "val_loss", "train_aux_loss"):
        if column(name):
            out[f"last_{name}"] = column(name)[-1]
    return out


def main(argv: list[str] | None = None) -> dict:
    args = _options(argv)
    import torch

    from omnispectra.fileio import write_text
    from omnispectra.training.train import TrainConfig, export_checkpoint, train

    root = os.environ.get("OUT")
    output = args.output or (Path(root) / "pretrain" if root else None)
    if output is None:
        raise SystemExit("give --output or set $OUT")
    corpus = list(args.corpus)
    if args.build_from:
        from omnispectra.corpus import build_corpus

        report = build_corpus(args.build_from, output / "corpus", progress=False, overwrite=True)
        corpus += sorted(str(p) for p in report.outputs.values())
    if not corpus:
        raise SystemExit("no corpus: give corpus files or --build-from FOLDER")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or check the script with --dry-run")
    config = TrainConfig.from_preset("tiny" if args.dry_run else args.preset,
                                     **_settings(args, corpus, output))
    start = time.perf_counter()
    result = train(config, overwrite=True)
    wall = time.perf_counter() - start
    sha = export_checkpoint(result["last_checkpoint"], output / "encoder.safetensors", overwrite=True)
    model_config = config.model_config()
    from omnispectra.model import OmniSpectra, attention_backends

    summary = {"steps": result["steps"], "wall_s": round(wall, 1), "val_loss": result["val_loss"],
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "precision": config.precision, "attention_backends": attention_backends(),
               "parameters": OmniSpectra(model_config).get_num_params(), "encoder_sha256": sha,
               "torch": torch.__version__,
               "settings": {k: v for k, v in config.to_dict().items() if k != "corpus"},
               "n_corpus_files": len(corpus), "engine_stream": result.get("engine_stream"),
               **_throughput(result["metrics_csv"])}
    write_text(output / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=1, default=str))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
