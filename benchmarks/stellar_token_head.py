"""A stellar head on the encoder's token states (issue #24: recipes that use the native-resolution
tokens), against the shipped probe on the pooled embedding, on held-out MILES stars.

The pooled embedding averages a star's ~430 token states into one vector; a head that learns
where to look (line cores, bands) might keep what the mean loses. This trains, in the folds of
``benchmarks/stellar_margin.py`` (grouped by star, seed 0; three folds train, one calibration,
one evaluation), a head that reads the bundled encoder's last-layer token states (layer-normed,
neighbouring tokens averaged in pairs: they share half their pixels): a linear map to ``width``
features, ``queries`` learned attention poolings over the valid tokens, the pooled embedding
beside them, and an MLP to log10 Teff, logg and [Fe/H] (L1 loss on standardized targets). The
token states are frozen (no encoder fine-tuning). Reports the MAE per parameter on the
evaluation folds next to the pooled-embedding probe's of ``stellar-margin.json``.

Usage (about 15 min on one core)::

    OMNISPECTRA_DATA_DIR=../shared/data python benchmarks/stellar_token_head.py \\
        -o benchmarks/results/stellar-token-head
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's omnispectra
from _common import data_dir, emit  # noqa: E402
from stellar_margin import mae, star_rounds  # noqa: E402  (the same folds and score)


def token_states(stars, model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer-normed last-layer token states averaged in neighbouring pairs ``(N, T, D)``, their
    validity ``(N, T)`` and the pooled embeddings ``(N, D)`` (as :func:`omnispectra.embed`)."""
    import torch

    from omnispectra.collate import collate
    from omnispectra.spectrum import spectrum_data
    from omnispectra.tokenizer import tokenize_data

    hidden, valid, pooled = [], [], []
    for start in range(0, len(stars), 16):
        tokens = [tokenize_data(spectrum_data(s.wave, s.flux, np.ones_like(s.flux)))
                  for s in stars[start:start + 16]]
        batch = collate(tokens)
        with torch.inference_mode():
            h = model.encode(batch.tokens, batch.wavelength, batch.valid)
        v = batch.valid.bool()
        pooled.append(model.pool(h, v).numpy())
        h = torch.nn.functional.layer_norm(h, (h.shape[-1],)) * v[..., None]
        n = h.shape[1] // 2 * 2
        w = v[:, :n].reshape(len(v), -1, 2).float()
        pairs = (h[:, :n].reshape(len(h), -1, 2, h.shape[-1]) * w[..., None]).sum(2)
        hidden += list((pairs / w.sum(2).clamp(min=1)[..., None]).numpy())
        valid += list((w.sum(2) > 0).numpy())
    width = max(len(v) for v in valid)
    pad = [width - len(v) for v in valid]
    return (np.stack([np.pad(h, ((0, p), (0, 0))) for h, p in zip(hidden, pad, strict=True)]),
            np.stack([np.pad(v, (0, p)) for v, p in zip(valid, pad, strict=True)]), np.concatenate(pooled))


def make_head(dim: int, width: int, queries: int):
    import torch
    from torch import nn

    class TokenHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Sequential(nn.Linear(dim, width), nn.GELU())
            self.score = nn.Linear(width, queries)
            self.mlp = nn.Sequential(nn.Dropout(0.2), nn.Linear(queries * width + dim, 256), nn.GELU(),
                                     nn.Dropout(0.2), nn.Linear(256, 3))

        def forward(self, h, v, emb):
            u = self.proj(h)
            attention = self.score(u).masked_fill(~v[..., None], float("-inf")).softmax(1)
            return self.mlp(torch.cat([torch.einsum("btq,btw->bqw", attention, u).flatten(1), emb], 1))

    return TokenHead()


def train_round(h, v, emb, target, train: np.ndarray, args, seed: int):
    """One head trained on the rows ``train`` of the standardized ``target`` (NaN: no label)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = make_head(h.shape[-1], args.width, args.queries)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    for _ in range(args.steps):
        b = torch.from_numpy(rng.choice(train, args.batch_size))
        t = target[b]
        known = torch.isfinite(t)
        loss = (head(h[b], v[b], emb[b]) - torch.nan_to_num(t)).abs()[known].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("-o", "--out", type=Path, help="OUT.md and OUT.json")
    args = parser.parse_args(argv)
    import torch

    import omnispectra
    from omnispectra.engine.labelled import miles_stars
    from omnispectra.evaluation.harness import TASKS
    from omnispectra.fileio import write_text
    from omnispectra.training.predictors.crossval import fitted_targets

    torch.set_num_threads(1)
    root = data_dir()
    if root is None:
        raise SystemExit("no shared data folder (set OMNISPECTRA_DATA_DIR)")
    stars = miles_stars(root)
    y = np.array([[s.labels["teff"], s.labels["logg"], s.labels["fe_h"]] for s in stars])
    t0 = time.perf_counter()
    hidden, valid, pooled = token_states(stars, omnispectra.load_model("default"))
    yt = fitted_targets(TASKS["stellar_params"], y)
    h, v, emb = torch.from_numpy(hidden), torch.from_numpy(valid), torch.from_numpy(pooled)
    rows, preds = [], []
    for r, idx in enumerate(star_rounds(np.array([s.id for s in stars]))):
        mu, sd = np.nanmean(yt[idx["train"]], 0), np.nanstd(yt[idx["train"]], 0)
        head = train_round(h, v, emb, torch.from_numpy((yt - mu) / sd).float(), idx["train"], args, r)
        at = torch.from_numpy(idx["evaluation"])
        with torch.no_grad():
            preds.append(head(h[at], v[at], emb[at]).numpy() * sd + mu)
        rows.append(idx["evaluation"])
    rows_all, pred = np.concatenate(rows), np.concatenate(preds)
    scores = mae(pred, y[rows_all]).tolist()
    margin = Path(__file__).parent / "results" / "stellar-margin.json"
    probe = json.loads(margin.read_text())["mae"]["probe"] if margin.exists() else None
    command = (f"python benchmarks/stellar_token_head.py --steps {args.steps} --width {args.width} "
               f"--queries {args.queries}")
    report = {"n_stars": len(stars), "mae": scores, "probe_mae": probe, "seconds": time.perf_counter() - t0,
              "command": command,
              **{k: getattr(args, k) for k in ("steps", "batch_size", "lr", "width", "queries")}}
    fmt = "| {} | {:.0f} | {:.3f} | {:.3f} |"
    lines = [f"# A stellar head on token states, held-out MILES ({len(stars)} stars, grouped 5-fold)", "",
             f"`{command}`", "", "| method | MAE Teff (K) | logg | [Fe/H] |", "|---|---|---|---|",
             fmt.format(f"token head ({args.queries} attention poolings of {args.width} features, "
                        f"one member, {args.steps} steps)", *scores)]
    if probe:
        lines.append(fmt.format("shipped recipe on the pooled embedding (stellar-margin.json)", *probe))
    if args.out:
        write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    emit("\n".join(lines) + "\n", args.out.with_suffix(".md") if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
