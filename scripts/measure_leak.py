#!/usr/bin/env python
"""Measure the normalization leak on the bundled example spectra (issue 14, part 1).

Usage::

    python scripts/measure_leak.py [--masks 8] [--seed 0] [--json out.json]

Each example is tokenized and masked ``--masks`` times with the pretraining chunk mask
(:func:`omnispectra.masking.mask_rng` ``(seed, k, 0)``). Two model-free predictors of
the masked pixels are scored by their mean squared error over the masked valid flux
elements (the flux part of the reconstruction loss), averaged over the masks:

- ``zero``: predict 0 (the normalized mean of the whole spectrum);
- ``leak``: predict the masked pixels' mean recovered from the visible tokens,
  :func:`omnispectra.masking.masked_mean_from_visible` (uses only that the spectrum was
  standardized over all its valid pixels).

``leak`` beating ``zero`` means the visible tokens give away the masked chunks' level.
Both are computed with the old normalization (tokenizer only, ``restandardize=False``)
and with the collator's re-standardization over the visible pixels (the fix).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from omnispectra.collate import Sample, collate
from omnispectra.examples import EXAMPLES, example_path
from omnispectra.io import read
from omnispectra.masking import MASK_RATIO, chunk_mask, mask_rng, masked_mean_from_visible
from omnispectra.tokenizer import tokenize


def masked_errors(tokens, n_masks: int, seed: int, restandardize: bool) -> dict[str, float]:
    """Mean (over masks) squared error of the ``zero`` and ``leak`` predictors."""
    zero, leak = [], []
    for k in range(n_masks):
        chunk = chunk_mask(tokens.n_tokens, mask_rng(seed, k, 0), tokens.patch_size, MASK_RATIO)
        batch = collate([Sample(tokens, chunk)], restandardize=restandardize)
        flux = batch.target[0, :, 2:].double().numpy()
        pixel_valid = batch.pixel_valid[0].numpy()
        valid = batch.valid[0].numpy()
        target = flux[batch.loss_mask[0].numpy()[:, None] & pixel_valid]
        if target.size == 0:
            continue
        estimate = masked_mean_from_visible(flux, pixel_valid, valid, chunk, tokens.stride)
        zero.append(np.mean(target ** 2))
        leak.append(np.mean((target - estimate) ** 2))
    return {"zero": float(np.mean(zero)), "leak": float(np.mean(leak))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = {}
    print(f"{'example':8s} {'normalization':16s} {'MSE zero':>9s} {'MSE leak':>9s} {'leak/zero':>9s}")
    for name in EXAMPLES:
        spectrum = read(example_path(name))[0]
        tokens = tokenize(spectrum)
        for label, restandardize in (("old (tokenizer)", False), ("new (visible)", True)):
            err = masked_errors(tokens, args.masks, args.seed, restandardize)
            results[f"{name}/{'new' if restandardize else 'old'}"] = err
            print(f"{name:8s} {label:16s} {err['zero']:9.3f} {err['leak']:9.3f} "
                  f"{err['leak'] / err['zero']:9.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
