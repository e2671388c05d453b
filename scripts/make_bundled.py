"""Export a finished pretraining run as the bundled default model.

Writes ``omnispectra-default.safetensors`` (config + encoder tensors, no optimizer) and
``omnispectra-default.json`` (the model card: config, sha256, training data per survey
and the engine's share per source and class, steps, wall time, hardware, validation MSE
on the *real* validation spectra per survey, the command that reproduces it) into
``--output``. The wavelength support (per survey and overall, valid pixels of the
training spectra) and the kinds of spectra trained on are stored in the weights file's
provenance *and* in the card, so readers and predictors can tell "outside what the
model learned".

Usage::

    python scripts/make_bundled.py runs/bundled -o omnispectra/data/ --hardware "2-core CPU"

The corpus files are those of the run's ``config.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from omnispectra import __version__
from omnispectra.engine.stream import is_engine_survey
from omnispectra.training import SpectraDataModule
from omnispectra.training.train import TrainConfig, export_checkpoint, load_checkpoint_model
from omnispectra.training.validation import reconstruction_mse_by_survey


def _metrics(run: Path) -> tuple[list[dict], list[dict]]:
    rows = []
    for path in sorted((run / "logs").glob("version_*/metrics.csv")):
        with open(path) as fh:
            rows += list(csv.DictReader(fh))
    train = [r for r in rows if r.get("train_loss")]
    val = [r for r in rows if r.get("val_loss")]
    return train, val


def training_data(data: SpectraDataModule) -> tuple[dict, dict]:
    """Wavelength support and kinds of the spectra on the training side of ``data``.

    Support: per survey the min/max of valid-pixel wavelengths (vacuum Angstrom) and
    the overall range. Kinds: per real survey the count per class label ("" when
    unlabelled); for engine surveys the count per template family and class.
    """
    train = data.train_dataset
    surveys = train.surveys
    classes = train.column("class").astype(str)
    sources = train.column("source_file").astype(str)
    real: dict[str, dict[str, int]] = {}
    engine_by_class: dict[str, int] = {}
    engine_by_source: dict[str, int] = {}
    for survey, cls, source in zip(surveys.tolist(), classes.tolist(), sources.tolist(), strict=True):
        if is_engine_survey(survey):
            engine_by_class[cls] = engine_by_class.get(cls, 0) + 1
            # "engine:redrock:STAR-K|donor:..." -> "redrock:STAR-K"; PyHammer composites as one source
            family = source.split("|")[0].removeprefix("engine:")
            family = "pyhammer" if family.startswith("pyhammer:") else family
            engine_by_source[family] = engine_by_source.get(family, 0) + 1
        else:
            real.setdefault(survey, {})
            real[survey][cls] = real[survey].get(cls, 0) + 1
    support = train.wavelength_ranges() | {
        "source": "scripts/make_bundled.py over the training side of the run's corpus"}
    kinds = {"real": real, "engine": {"by_class": engine_by_class, "by_source": engine_by_source}}
    return support, kinds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory of `omnispectra train`")
    parser.add_argument("-o", "--output", type=Path, default=Path("omnispectra/data"))
    parser.add_argument("--hardware", required=True, help="what the run trained on, in words")
    parser.add_argument("--command", required=True, help="the commands that reproduce the run")
    parser.add_argument("--checkpoint", default="last.ckpt", help="checkpoint file in <run>/checkpoints")
    args = parser.parse_args(argv)

    config = TrainConfig.from_yaml(args.run / "config.yaml")
    result = json.loads((args.run / "result.json").read_text())
    train_rows, val_rows = _metrics(args.run)
    data = SpectraDataModule(config.corpus, batch_size=32, num_workers=0, val_fraction=config.val_fraction,
                             seed=config.seed, survey_weights=config.survey_weights,
                             engine_fraction=config.engine_fraction)
    split = data.describe()
    support, kinds = training_data(data)
    checkpoint = args.run / "checkpoints" / args.checkpoint
    val_mse = reconstruction_mse_by_survey(load_checkpoint_model(checkpoint), data)
    speed = [float(r["spectra_per_s"]) for r in train_rows[10:] if r.get("spectra_per_s")]
    card = {
        "name": "omnispectra-default",
        "omnispectra_version": __version__,
        "preset": config.preset,
        "training": {
            "command": args.command,
            "settings": config.to_dict() | {"corpus": [Path(p).name for p in config.corpus]},
            "steps": result["steps"],
            "wall_time_s": round(result["wall_time_s"], 1),
            "train_spectra_per_s_median": round(float(np.median(speed)), 2) if speed else None,
            "validation_mse_curve": [[int(r["step"]), round(float(r["val_loss"]), 4)] for r in val_rows],
            "final_validation_mse": round(float(val_rows[-1]["val_loss"]), 4) if val_rows else None,
            "first_train_loss": round(float(train_rows[0]["train_loss"]), 4) if train_rows else None,
            "hardware": args.hardware,
            "real_validation_mse_by_survey": {k: {"mse": round(v["mse"], 4), "n_spectra": v["n_spectra"]}
                                              for k, v in val_mse.items()},
        },
        "corpus": {"n_train": split["n_train"], "n_val": split["n_val"], "n_dropped": split["n_dropped"],
                   "surveys": split["surveys"], "engine_fraction": config.engine_fraction,
                   "split": {"rule": "omnispectra.splits object hash", "fraction": config.val_fraction,
                             "seed": config.seed, "engine spectra": "always training side"},
                   "kinds": kinds,
                   "source": "real spectra of the project's shared data folder (see SOURCES.md) and "
                             "engine spectra (omnispectra simulate: Redrock and PyHammer templates "
                             "observed through training-side real donors)"},
        "wavelength_support": support,
        "licence": "BSD-3-Clause (weights); training data are public survey products",
    }
    args.output.mkdir(parents=True, exist_ok=True)
    weights = args.output / "omnispectra-default.safetensors"
    provenance = {"card": "omnispectra-default.json", "wavelength_support": support, "kinds": kinds}
    card["sha256"] = export_checkpoint(checkpoint, weights, overwrite=True, info=provenance)
    card["size_bytes"] = weights.stat().st_size
    (args.output / "omnispectra-default.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("sha256", "size_bytes")} | {
        "final_validation_mse": card["training"]["final_validation_mse"], "steps": result["steps"]},
        indent=2))
    return card


if __name__ == "__main__":
    main()
