"""Ablations of the paper's Table 7, several seeds, paired against the full model.

Trains one preset (``tiny`` by default) once per variant and seed, with the same data,
the same object-hash split (``--split-seed``, the project's 0, ``--val-fraction``), the
same step budget and the same optimizer: the full model; without the local positional
embedding, the wavelength encoding or the validity mask; and with scattered-token
instead of contiguous-chunk masking (``TrainConfig.masking="random"``; it masks as many
tokens as the chunk rule would).

Every run is scored afterwards from its last checkpoint by :func:`real_validation_mse`:
the plain masked MSE (no Huber) on the **real** validation spectra (surveys named
``engine_*`` are left out), float32, with one fixed set of chunk masks (seeded by
``--mask-seed``, the same for every variant and seed), pooled over the masked elements
of all those spectra (headline, as the training loss averages) and per survey. Seed
``s`` of a variant is paired with seed ``s`` of the full model (same split, validation
masks, data order, training masks and initialization seed), and the table gives the
mean paired difference, its standard error over seeds and whether it exceeds two
standard errors. Lightning's own validation is cut to one batch (:class:`OneValidationBatch`).

With a data-engine corpus among the inputs, ``--engine-share`` sets the fraction of
training draws from ``engine_*`` surveys (default 0.5).

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

import lightning as L
import numpy as np
import torch

from omnispectra.collate import Collator
from omnispectra.dataset import SpectrumDataset, split_by_object
from omnispectra.splits import DEFAULT_SEED, DEFAULT_VALIDATION_FRACTION
from omnispectra.training.train import TrainConfig, load_checkpoint_model, train

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
#: surveys the data engine writes (``engine_<donor survey>``): not real spectra
ENGINE_PREFIX = "engine_"


class OneValidationBatch(L.Callback):
    """Cut Lightning's own validation to one batch.

    Its pooled number covers the engine spectra of the validation side too (thousands
    of them, most of a short run's wall time); :func:`real_validation_mse` replaces it.
    One batch keeps the ``val_loss``-monitoring checkpoint callback working.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        trainer.limit_val_batches = 1


def real_validation_mse(
    model: torch.nn.Module,
    corpus: Sequence[str],
    val_fraction: float = DEFAULT_VALIDATION_FRACTION,
    split_seed: int = DEFAULT_SEED,
    mask_seed: int = DEFAULT_SEED,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Masked-reconstruction MSE of ``model`` on the real spectra of the validation split.

    The validation side is the project's object-hash split of the whole ``corpus``;
    spectra of surveys named ``engine_*`` are dropped, and the rest are masked with the
    paper's chunk masks drawn from ``(mask_seed, 0, k)`` for the ``k``-th real validation
    spectrum, so two models scored on one corpus see the same targets. The error of a
    spectrum is the plain squared error over the valid elements of its masked, valid tokens (as
    :func:`omnispectra.model.masked_reconstruction_loss` with ``huber_delta=None``).

    Returns
    -------
    dict
        ``mse`` (pooled over the elements of all real validation spectra, as the training
        loss averages), ``mse_mean_of_spectra``, ``mse_mean_of_surveys``, ``n`` (spectra
        with a target) and ``per_survey`` (``{survey: {"mse", "mse_mean_of_spectra", "n"}}``).
    """
    dataset = SpectrumDataset(list(corpus), patch_size=model.config.patch_size, stride=model.config.stride)
    _, val_idx = split_by_object(dataset.object_ids, dataset.surveys, val_fraction, seed=split_seed)
    surveys = dataset.surveys[val_idx]
    real = val_idx[~np.char.startswith(surveys.astype(str), ENGINE_PREFIX)]
    val = dataset.subset(real)
    collator = Collator(mask=True, mask_ratio=model.config.mask_ratio, seed=mask_seed)
    rows: list[tuple[str, float, float]] = []  # survey, squared-error sum, element count
    model = model.float().eval()
    with torch.inference_mode():
        for start in range(0, len(val), batch_size):
            items = [val[k] for k in range(start, min(start + batch_size, len(val)))]
            batch = collator(items)
            pred = model.reconstruct(batch.tokens, batch.wavelength, batch.valid)
            weight = batch.loss_mask[..., None].expand_as(batch.target).float().clone()
            weight[..., 2:] *= batch.pixel_valid.float()
            err = ((pred.float() - batch.target.float()) ** 2 * weight).sum((1, 2)).double()
            count = weight.sum((1, 2)).double()
            rows += [(sample.tokens.meta["survey"], e, c)
                     for (_, sample), e, c in zip(items, err.tolist(), count.tolist(), strict=True) if c > 0]

    def pooled(subset: list[tuple[str, float, float]]) -> dict[str, Any]:
        return {"mse": sum(e for _, e, _ in subset) / sum(c for _, _, c in subset),
                "mse_mean_of_spectra": float(np.mean([e / c for _, e, c in subset])), "n": len(subset)}

    out = pooled(rows)
    names = sorted({r[0] for r in rows})
    out["per_survey"] = {name: pooled([r for r in rows if r[0] == name]) for name in names}
    out["mse_mean_of_surveys"] = float(np.mean([v["mse"] for v in out["per_survey"].values()]))
    return out


def survey_weights(corpus: Sequence[str], miles_weight: float, engine_share: float | None) -> dict | None:
    """Sampling weights: MILES down-weighted, and engine surveys weighted to ``engine_share`` of the draws.

    The share is set on the whole corpus's counts (the training side holds ~80% of each).
    """
    surveys, counts = np.unique(SpectrumDataset(list(corpus)).surveys.astype(str), return_counts=True)
    weights = {"miles": miles_weight} if miles_weight != 1 and "miles" in surveys else {}
    engine = np.char.startswith(surveys, ENGINE_PREFIX)
    if engine_share is not None and engine.any():
        if not 0 < engine_share < 1:
            raise ValueError(f"engine share must lie in (0, 1), got {engine_share}")
        real = zip(surveys[~engine], counts[~engine], strict=True)
        real_mass = sum(weights.get(s, 1.0) * n for s, n in real)
        w_engine = engine_share * real_mass / ((1 - engine_share) * counts[engine].sum())
        weights.update({str(s): float(w_engine) for s in surveys[engine]})
    return weights or None


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
            diff = values - base
            se = float(diff.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else float("nan")
            row.update(diff=diff.tolist(), diff_mean=float(diff.mean()), diff_se=se,
                       beyond_2se=bool(abs(diff.mean()) > 2 * se) if len(seeds) > 1 else None)
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
    weights = survey_weights(args.corpus, args.miles_weight, args.engine_share)
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
                **train_switches,
            )
            outcome = train(config, overwrite=True, callbacks=[OneValidationBatch()])
            score = real_validation_mse(load_checkpoint_model(outcome["last_checkpoint"]), args.corpus,
                                        args.val_fraction, args.split_seed, args.mask_seed)
            scores.setdefault(name, {})[seed] = score["mse"]
            runs[f"{name} | seed {seed}"] = {
                "real_val_mse": score["mse"], "real_val_mse_mean_of_spectra": score["mse_mean_of_spectra"],
                "real_val_mse_mean_of_surveys": score["mse_mean_of_surveys"], "n_val_real": score["n"],
                "per_survey": score["per_survey"],
                "steps": outcome["steps"],
                "wall_s": outcome["wall_time_s"]}
            print(f"{name:<36} seed {seed}: real val MSE {score['mse']:.4f} (n={score['n']}; "
                  f"{outcome['wall_time_s']:.0f} s)", flush=True)

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
