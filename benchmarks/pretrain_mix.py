"""Choose the engine/real mixture (and preset) of pretraining on real validation spectra.

For each candidate (an engine fraction, optionally a preset) this trains one short run
on the same corpora, split, seed and wall-time budget, then scores the final encoder on
the **real** spectra of the shared object-hash split (validation side; engine spectra
are never validation spectra):

- masked-reconstruction MSE per survey with fixed masks
  (:func:`omnispectra.training.validation.reconstruction_mse_by_survey`);
- downstream probes on frozen embeddings, trained on the training side and scored on
  the validation side: source class (logistic regression, class-balanced: macro recall)
  and MILES stellar parameters (ridge on standardized embeddings: MAE of Teff, logg,
  [Fe/H]).

Run::

    python benchmarks/pretrain_mix.py --real corpus/*.h5 --engine engine/*.h5 \\
        --fractions 0 0.5 0.8 --presets small --steps 150 -o runs/mix

Writes ``<output>/mix.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def downstream(model, corpus: list[str], batch_size: int = 32) -> dict[str, float]:
    """Class macro recall and MILES stellar MAE of simple probes, train side -> validation side."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import recall_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from omnispectra import splits
    from omnispectra.evaluation.harness import TASKS, compute_embeddings, load_labeled

    data = load_labeled(corpus, [TASKS["source_class"], TASKS["stellar_params"]])
    emb = compute_embeddings(data, model, batch_size=batch_size)
    val = splits.is_validation(data.meta["object_id"].tolist())
    out: dict[str, float] = {}
    cls = data.meta["source_class"].astype(str)
    has = cls != ""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1, class_weight="balanced"))
    clf.fit(emb[has & ~val], cls[has & ~val])
    pred = clf.predict(emb[has & val])
    out["class_macro_recall"] = float(recall_score(cls[has & val], pred, average="macro"))
    out["class_n_val"] = int((has & val).sum())
    miles = data.meta["survey"] == "miles"
    for name in ("teff", "logg", "fe_h"):
        y = np.asarray(data.meta[name], dtype=float)
        y = np.log10(y) if name == "teff" else y
        ok = miles & np.isfinite(y)
        reg = make_pipeline(StandardScaler(), Ridge(alpha=30.0)).fit(emb[ok & ~val], y[ok & ~val])
        p = reg.predict(emb[ok & val])
        err = np.abs(10 ** p - 10 ** y[ok & val]) if name == "teff" else np.abs(p - y[ok & val])
        out[f"{name}_mae"] = float(np.mean(err))
    out["stellar_n_val"] = int((miles & val).sum())
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", nargs="+", required=True, help="real corpus files")
    parser.add_argument("--engine", nargs="*", default=[], help="engine corpus files")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    parser.add_argument("--presets", nargs="+", default=["small"])
    parser.add_argument("--steps", type=int, default=150,
                        help="optimizer steps per run (one cosine cycle); equal steps, not equal wall time, "
                             "so that a loaded machine does not favour one candidate")
    parser.add_argument("--minutes", type=float, default=None, help="optional wall-time cap per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--init", default=None, help="weights file every candidate starts from")
    parser.add_argument("--miles-weight", type=float, default=0.3)
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/mix"))
    args = parser.parse_args(argv)

    from omnispectra.training import SpectraDataModule
    from omnispectra.training.train import TrainConfig, load_checkpoint_model, train
    from omnispectra.training.validation import reconstruction_mse_by_survey

    results = []
    if args.init:  # the starting point, scored the same way
        from omnispectra.pretrained import load_weights

        start = load_weights(args.init)
        data = SpectraDataModule(list(args.real), batch_size=32, num_workers=0, val_fraction=0.2, seed=0)
        mse = reconstruction_mse_by_survey(start, data)
        results.append({"name": "init", "preset": "", "engine_fraction": None, "steps": 0, "seconds": 0.0,
                        "val_mse": mse, **downstream(start, list(args.real))})
        print(json.dumps({k: v for k, v in results[-1].items() if k != "val_mse"}), flush=True)
    for preset in args.presets:
        for fraction in args.fractions:
            name = f"{preset}-engine{fraction:g}"
            corpus = list(args.real) + (list(args.engine) if fraction > 0 else [])
            config = TrainConfig.from_preset(
                preset, corpus=corpus, output=str(args.output / name), batch_size=args.batch_size,
                lr=args.lr, seed=0, val_fraction=0.2, max_steps=args.steps, max_time_minutes=args.minutes,
                val_every=100_000, checkpoint_every=args.steps, precision="bf16-mixed", progress=False,
                survey_weights={"miles": args.miles_weight},
                engine_fraction=fraction if fraction > 0 else None, init_weights=args.init)
            t0 = time.time()
            run = train(config, overwrite=True)
            model = load_checkpoint_model(args.output / name / "checkpoints" / "last.ckpt")
            # identical real validation spectra and masks for every candidate
            data = SpectraDataModule(list(args.real), batch_size=32, num_workers=0, val_fraction=0.2, seed=0)
            mse = reconstruction_mse_by_survey(model, data)
            row = {"name": name, "preset": preset, "engine_fraction": fraction, "steps": run["steps"],
                   "seconds": round(time.time() - t0, 1), "val_mse": mse,
                   **downstream(model, list(args.real))}
            print(json.dumps({k: v for k, v in row.items() if k != "val_mse"}
                             | {"val_mse_all": mse["all"]["mse"]}), flush=True)
            results.append(row)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "mix.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| run | steps | real val MSE | mean of surveys | class macro recall | Teff MAE | logg MAE "
          "| [Fe/H] MAE |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['steps']} | {r['val_mse']['all']['mse']:.4f} | "
              f"{r['val_mse']['mean_of_surveys']['mse']:.4f} | {r['class_macro_recall']:.3f} | "
              f"{r['teff_mae']:.0f} | {r['logg_mae']:.3f} | {r['fe_h_mae']:.3f} |")
    return {"runs": results}


if __name__ == "__main__":
    main()
