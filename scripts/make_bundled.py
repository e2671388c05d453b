"""Export a finished pretraining run as the bundled default model.

Writes ``omnispectra-default.safetensors`` (config + encoder tensors, no optimizer) and
``omnispectra-default.json`` (the model card: config, sha256, training corpus summary,
final validation MSE, throughput, the command that reproduces it) into ``--output``.

Usage::

    python scripts/make_bundled.py runs/bundled corpus/*.h5 -o omnispectra/data/
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from omnispectra import __version__
from omnispectra.corpus import corpus_info
from omnispectra.training import SpectraDataModule
from omnispectra.training.train import TrainConfig, export_checkpoint


def _metrics(run: Path) -> tuple[list[dict], list[dict]]:
    rows = []
    for path in sorted((run / "logs").glob("version_*/metrics.csv")):
        with open(path) as fh:
            rows += list(csv.DictReader(fh))
    train = [r for r in rows if r.get("train_loss")]
    val = [r for r in rows if r.get("val_loss")]
    return train, val


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory of `omnispectra train`")
    parser.add_argument("corpus", nargs="+", help="the corpus files the run trained on")
    parser.add_argument("-o", "--output", type=Path, default=Path("omnispectra/data"))
    parser.add_argument("--checkpoint", default="last.ckpt", help="checkpoint file in <run>/checkpoints")
    args = parser.parse_args(argv)

    config = TrainConfig.from_yaml(args.run / "config.yaml")
    result = json.loads((args.run / "result.json").read_text())
    train_rows, val_rows = _metrics(args.run)
    data = SpectraDataModule(args.corpus, batch_size=config.batch_size, num_workers=0,
                             val_fraction=config.val_fraction, seed=config.seed)
    split = data.describe()
    info = corpus_info(args.corpus)
    surveys = {name: {"spectra": s.get("n_spectra", s.get("count")), **split["surveys"].get(name, {})}
               for name, s in info.get("surveys", {}).items()}
    speed = [float(r["spectra_per_s"]) for r in train_rows[10:] if r.get("spectra_per_s")]
    card = {
        "name": "omnispectra-default",
        "omnispectra_version": __version__,
        "preset": config.preset,
        "training": {
            "command": "omnispectra corpus build ../shared/data -o corpus/ && "
                       "omnispectra train corpus/*.h5 --config configs/bundled.yaml -o runs/bundled",
            "settings": config.to_dict() | {"corpus": [Path(p).name for p in config.corpus]},
            "steps": result["steps"],
            "wall_time_s": round(result["wall_time_s"], 1),
            "train_spectra_per_s_median": round(float(np.median(speed)), 2) if speed else None,
            "validation_mse_curve": [[int(r["step"]), round(float(r["val_loss"]), 4)] for r in val_rows],
            "final_validation_mse": round(float(val_rows[-1]["val_loss"]), 4) if val_rows else None,
            "first_train_loss": round(float(train_rows[0]["train_loss"]), 4) if train_rows else None,
            "hardware": "2-core CPU (no GPU), bf16 autocast",
        },
        "corpus": {"n_train": split["n_train"], "n_val": split["n_val"], "n_dropped": split["n_dropped"],
                   "surveys": surveys,
                   "source": "the real spectra of the project's shared data folder (SDSS/BOSS/eBOSS, "
                             "MILES, APOGEE, DESI EDR, LAMOST, MaNGA, X-shooter, LEGA-C); see SOURCES.md"},
        "licence": "BSD-3-Clause (weights); training data are public survey products",
    }
    args.output.mkdir(parents=True, exist_ok=True)
    weights = args.output / "omnispectra-default.safetensors"
    card["sha256"] = export_checkpoint(args.run / "checkpoints" / args.checkpoint, weights,
                                       info={"card": "omnispectra-default.json"})
    card["size_bytes"] = weights.stat().st_size
    (args.output / "omnispectra-default.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("sha256", "size_bytes")} | {
        "final_validation_mse": card["training"]["final_validation_mse"], "steps": result["steps"]},
        indent=2))
    return card


if __name__ == "__main__":
    main()
