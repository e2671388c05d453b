#!/usr/bin/env python
"""Pretrain a small encoder with the old and the new normalization and compare them (issue 14).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/compare_normalization.py CORPUS... -o OUT \\
        [--steps 300] [--batch-size 16] [--variants old new]

Variants (same seed, data order, masks, model and optimizer; only the normalization and loss
differ):

- ``old``: the tokenizer's normalization only (``restandardize=False``), plain masked MSE;
- ``new``: the collator re-standardizes each masked spectrum over its visible pixels,
  Huber loss (``delta`` = :data:`omnispectra.model.HUBER_DELTA`);
- ``new-mse``: re-standardization with the plain MSE (separates the two changes).

Each model is judged by downstream probes on frozen embeddings
(:func:`omnispectra.evaluation.harness.evaluate`: source class and stellar parameters,
object-grouped 50/50 splits with seeds ``0 .. runs-1``, identical for every model;
embeddings of unmasked spectra are the same under both normalizations). The masked
reconstruction MSE on a held-out 10% of objects is also reported under *both*
normalizations, next to the model-free ``zero`` and ``leak`` predictors of
``scripts/measure_leak.py`` (MSEs are only comparable within one normalization).
Writes ``OUT/results.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from omnispectra.collate import Collator, LengthBucketSampler
from omnispectra.dataset import SpectrumDataset, split_by_object
from omnispectra.evaluation.harness import evaluate
from omnispectra.masking import masked_mean_from_visible
from omnispectra.model import HUBER_DELTA, OmniSpectra, OmniSpectraConfig

VARIANTS = {"old": (False, None), "new": (True, HUBER_DELTA), "new-mse": (True, None)}


def pretrain(dataset, rows, restandardize, huber_delta, steps, batch_size, lr, seed):
    torch.manual_seed(seed)
    model = OmniSpectra(OmniSpectraConfig.from_preset("tiny"))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 20), pct_start=0.1)
    sampler = LengthBucketSampler(dataset.token_lengths[rows], batch_size, seed=seed, with_epoch=True)
    collator = Collator(mask=True, seed=seed, restandardize=restandardize)
    step, epoch, losses = 0, 0, []
    model.train()
    while step < steps:
        sampler.set_epoch(epoch)
        for keys in sampler:
            batch = collator([((e, int(rows[i])), dataset[int(rows[i])][1]) for e, i in keys])
            loss = model.loss(batch, huber_delta=huber_delta)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step >= steps:
                break
        epoch += 1
    model.eval()
    return model, losses


@torch.no_grad()
def masked_mse(model, dataset, rows, restandardize, batch_size=16, seed=123):
    """Element MSE over masked valid elements of the model and of the zero/leak predictors."""
    collator = Collator(mask=True, seed=seed, restandardize=restandardize)
    sums = {"model": 0.0, "zero": 0.0, "leak": 0.0}
    count = 0
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        batch = collator([(int(i), dataset[int(i)][1]) for i in part])
        weight = batch.loss_mask[..., None] & batch.pixel_valid               # flux elements
        target = batch.target[..., 2:].double()
        pred = model.reconstruct(batch.tokens, batch.wavelength, batch.valid)[..., 2:].double()
        leak = torch.tensor([masked_mean_from_visible(target[b].numpy(), batch.pixel_valid[b].numpy(),
                                                      batch.valid[b].numpy(), batch.loss_mask[b].numpy(),
                                                      dataset.stride)
                             for b in range(len(part))], dtype=torch.float64)[:, None, None]
        sums["model"] += ((pred - target) ** 2)[weight].sum().item()
        sums["zero"] += (target ** 2)[weight].sum().item()
        sums["leak"] += ((target - leak) ** 2)[weight].sum().item()
        count += int(weight.sum())
    return {k: v / max(count, 1) for k, v in sums.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["old", "new"], choices=sorted(VARIANTS))
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    dataset = SpectrumDataset(args.corpus)
    train, val = split_by_object(dataset.column("object_id"), dataset.surveys, fraction=0.1, seed=args.seed)
    print(f"{len(dataset)} spectra: {train.size} pretraining, {val.size} held out")
    results = {"args": vars(args), "variants": {}}
    for name in args.variants:
        restandardize, huber = VARIANTS[name]
        t0 = time.perf_counter()
        model, losses = pretrain(dataset, train, restandardize, huber, args.steps, args.batch_size,
                                 args.lr, args.seed)
        seconds = time.perf_counter() - t0
        torch.save(model.state_dict(), out / f"{name}.pt")
        recon = {norm: masked_mse(model, dataset, val, flag)
                 for norm, flag in (("old", False), ("new", True))}
        probes = evaluate(args.corpus, model=model, tasks=("source_class", "stellar_params"),
                          methods=["trivial", "few-shot", "mlp32"], runs=args.runs, min_labeled=20)
        summary = probes["summary"]
        rows = [dict(zip(summary.colnames, (v.item() if hasattr(v, "item") else v for v in row), strict=True))
                for row in summary]
        results["variants"][name] = {"train_seconds": seconds, "final_loss": float(np.mean(losses[-20:])),
                                     "reconstruction": recon, "probes": rows}
        print(f"== {name}: {seconds:.0f} s, final train loss {np.mean(losses[-20:]):.3f}")
        for norm, r in recon.items():
            print(f"   masked MSE under {norm} normalization: model {r['model']:.3f}  zero {r['zero']:.3f}"
                  f"  leak {r['leak']:.3f}")
        for row in rows:
            if row["metric"] in ("f1_macro", "accuracy", "mse_norm") or row["metric"].startswith("mae_"):
                print(f"   {row['task']:>14} {row['group']:>8} {row['method']:>9} {row['metric']:>10}: "
                      f"{row['mean']:.3f} +- {row['std']:.3f}  (n_test {row['n_test']:.0f})")
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
