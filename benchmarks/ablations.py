"""Ablations of the paper's Table 7, several seeds, paired against the full model.

Trains one preset (``tiny`` by default) once per variant and seed, with the same data,
the same object-hash split (``--split-seed``, the project's 0, ``--val-fraction``), the
same step budget and the same optimizer: the full model; without the local positional
embedding, the wavelength encoding or the validity mask; and with scattered-token
instead of contiguous-chunk masking (``TrainConfig.masking="random"``; it masks as many
tokens as the chunk rule would).

Every run is scored afterwards from its last checkpoint by
:func:`omnispectra.training.validation.reconstruction_mse_by_survey`: the plain masked
MSE (no Huber) on the **real** validation spectra (engine spectra are always training
spectra), with one fixed set of chunk masks (seeded by ``--mask-seed``, the same for
every variant and seed), pooled over the masked elements of all those spectra
(headline, as the training loss averages) and per survey. Seed ``s`` of a variant is
paired with seed ``s`` of the full model (same split, validation masks, data order,
training masks and initialization seed), and the table gives the mean paired
difference, its standard error over seeds and whether it exceeds two standard errors.

With a data-engine corpus among the inputs, ``--engine-share`` sets the fraction of
training draws from ``engine_*`` surveys (``TrainConfig.engine_fraction``, default 0.5).

Run from the checkout root (the committed result: 15 runs in 22 minutes on one thread)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/ablations.py REAL/*.h5 ENGINE/*.h5 \\
        -o runs/ablations --max-steps 80 --lr 1.5e-3 --seeds 42 43 44 \\
        --json benchmarks/results/ablations-tiny-3seeds.json \\
        --markdown benchmarks/results/ablations-tiny-3seeds.md

The paper reports (its 5.5M-spectrum corpus, D=768): full 0.505 < w/o validity mask
0.525 < w/o local PE 0.531 < w/o wavelength 0.903 (no masking row).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnispectra.engine.stream import is_engine_survey
from omnispectra.evaluation.stats import paired_difference
from omnispectra.splits import DEFAULT_SEED, DEFAULT_VALIDATION_FRACTION
from omnispectra.training import SpectraDataModule
from omnispectra.training.train import TrainConfig, load_checkpoint_model, train
from omnispectra.training.validation import reconstruction_mse_by_survey

FULL = "OmniSpectra (full)"
#: variant -> (model overrides, training overrides)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    FULL: ({}, {}),
    "w/o local positional embedding": ({"local_pe": False}, {}),
    "w/o wavelength encoding": ({"wavelength_encoding": False}, {}),
    "w/o validity attention mask": ({"validity_mask": False}, {}),
    "random token masking (not chunks)": ({}, {"masking": "random"}),
}
PAPER = {FULL: 0.505, "w/o local positional embedding": 0.531,
         "w/o wavelength encoding": 0.903, "w/o validity attention mask": 0.525}
def paired_summary(results: dict[str, dict[int, float]], seeds: Sequence[int]) -> dict[str, dict]:
    """Mean +- std over seeds per variant, and the paired difference against :data:`FULL`.

    ``diff_se`` is the standard error of the mean paired difference (sample std over
    seeds / sqrt(n seeds)); ``beyond_2se`` says whether ``|diff_mean| > 2 diff_se``.
    """
    base = np.array([results[FULL][s] for s in seeds])
    out = {}
    for name, by_seed in results.items():
        values = np.array([by_seed[s] for s in seeds])
        row = {"val_mse": values.tolist(), "mean": float(values.mean()),
               "std": float(values.std(ddof=1)) if len(seeds) > 1 else 0.0}
        if name != FULL:
            paired = paired_difference(base, values)
            row.update(diff=(values - base).tolist(), diff_mean=paired["diff"], diff_se=paired["se"],
                       beyond_2se=paired["beyond_2se"] if len(seeds) > 1 else None)
        out[name] = row
    return out


def markdown(summary: dict[str, dict], n_seeds: int) -> str:
    lines = [f"| variant | real val. MSE, mean ± std ({n_seeds} seeds) | paired diff. vs full ± SE "
             "| \\|diff\\| > 2 SE | paper |", "|---|---|---|---|---|"]
    for name, row in summary.items():
        paper = f"{PAPER[name]:.3f}" if name in PAPER else "-"
        if name == FULL:
            lines.append(f"| {name} | {row['mean']:.4f} ± {row['std']:.4f} | - | - | {paper} |")
        else:
            flag = {True: "yes", False: "no", None: "-"}[row["beyond_2se"]]
            lines.append(f"| {name} | {row['mean']:.4f} ± {row['std']:.4f} "
                         f"| {row['diff_mean']:+.4f} ± {row['diff_se']:.4f} | {flag} | {paper} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="+")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION)
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--mask-seed", type=int, default=DEFAULT_SEED,
                        help="seed of the fixed validation masks of the real-spectra score")
    parser.add_argument("--miles-weight", type=float, default=0.3)
    parser.add_argument("--engine-share", type=float, default=0.5,
                        help="fraction of training draws from engine_* surveys (when the corpus has any)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="default: OUTPUT/ablations.json")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    if FULL not in args.variants:
        parser.error(f"the variants must include {FULL!r} (the paired baseline)")

    started = time.perf_counter()
    weights = {"miles": args.miles_weight} if args.miles_weight != 1 else None
    has_engine = any(is_engine_survey(Path(c).stem) for c in args.corpus)  # corpus files are named by survey
    # the real validation spectra and their fixed masks, identical for every variant and seed
    scoring = SpectraDataModule(list(args.corpus), batch_size=32, num_workers=0,
                                val_fraction=args.val_fraction, seed=args.mask_seed,
                                split_seed=args.split_seed)
    scores: dict[str, dict[int, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:  # seed-major: a partial run still has complete pairs
        for name in args.variants:
            model_switches, train_switches = VARIANTS[name]
            slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
            config = TrainConfig.from_preset(
                args.preset, corpus=list(args.corpus), output=str(args.output / f"{slug}-seed{seed}"),
                model=model_switches, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                seed=seed, split_seed=args.split_seed, val_fraction=args.val_fraction,
                precision=args.precision, val_every=args.max_steps, checkpoint_every=args.max_steps,
                progress=False, survey_weights=weights,
                engine_fraction=args.engine_share if has_engine else None, **train_switches,
            )
            outcome = train(config, overwrite=True)
            score = reconstruction_mse_by_survey(load_checkpoint_model(outcome["last_checkpoint"]), scoring)
            scores.setdefault(name, {})[seed] = score["all"]["mse"]
            runs[f"{name} | seed {seed}"] = {
                "real_val_mse": score["all"]["mse"],
                "real_val_mse_mean_of_surveys": score["mean_of_surveys"]["mse"],
                "n_val_real": score["all"]["n_spectra"], "per_survey": score,
                "steps": outcome["steps"], "wall_s": outcome["wall_time_s"]}
            print(f"{name:<36} seed {seed}: real val MSE {score['all']['mse']:.4f} "
                  f"(n={score['all']['n_spectra']}; {outcome['wall_time_s']:.0f} s)", flush=True)

    summary = paired_summary(scores, args.seeds)
    table = markdown(summary, len(args.seeds))
    order = sorted(summary, key=lambda k: summary[k]["mean"])
    print("\n" + table + "\n\nordering here: " + " < ".join(order))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    command = "python benchmarks/ablations.py " + " ".join(argv or sys.argv[1:])
    report = {"settings": settings, "survey_weights": weights, "command": command,
              "summary": summary, "ordering": order, "runs": runs, "paper": PAPER,
              "total_wall_s": time.perf_counter() - started}
    path = args.json or args.output / "ablations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n\nOrdering here: " + " < ".join(order) + "\n")
    return report


if __name__ == "__main__":
    main()
