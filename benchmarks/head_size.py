"""Head size 32 vs 64 at equal parameter count: CPU embedding and training-step speed.

The number of heads does not change the parameter count (the q/k/v/o projections are
``D x D`` whatever the split), only the head size ``D / H`` that the attention kernel
works on. This benchmark compares, side by side in one process, each model width with
head size 32 and head size 64:

- ``D=256, 4 layers``: 8 heads x 32 vs 4 heads x 64 (the ``small`` preset's shape);
- ``D=128, 4 layers``: 4 heads x 32 vs 2 heads x 64 (the ``tiny`` preset's shape).

Measured on real SDSS spectra (``../shared/data/sdss`` or ``$OMNISPECTRA_DATA_DIR``;
the bundled example stands in without it), batches of ``--batch-size`` spectra of
~3,850 pixels (~384 tokens):

- embedding throughput (spectra/s) in float32 and under bf16 autocast;
- one pretraining step (masked reconstruction loss, backward, AdamW), float32.

Each setting runs with 1 and 2 torch threads (``torch.set_num_threads``). The variants
of one width are interleaved within each repeat (warm-up first, then ``--repeat``
rounds), and the best time of the rounds is kept, so slow-downs from other work on a
shared machine hit both variants alike. Run::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/head_size.py --json benchmarks/results/head_size-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sdss_spectra  # noqa: E402

from omnispectra.collate import Collator, collate  # noqa: E402
from omnispectra.model import OmniSpectra, OmniSpectraConfig  # noqa: E402
from omnispectra.tokenizer import tokenize  # noqa: E402

#: (label, preset, n_heads): pairs of equal width, head size 32 then 64
VARIANTS = [
    ("D=256 8x32", "small", 8), ("D=256 4x64", "small", 4),
    ("D=128 4x32", "tiny", 4), ("D=128 2x64", "tiny", 2),
]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(batch_size: int, repeat: int, threads: list[int]) -> dict:
    spectra = sdss_spectra(limit=batch_size)
    tokens = [tokenize(w, f, i, m) for w, f, i, m in spectra]
    batch = collate(tokens)
    masked = Collator(mask=True, seed=0)(list(enumerate(tokens)))
    n_tok = [t.n_tokens for t in tokens]
    models = {}
    for label, preset, heads in VARIANTS:
        torch.manual_seed(0)
        models[label] = OmniSpectra(OmniSpectraConfig.from_preset(preset, n_heads=heads))
    params = {label: m.get_num_params() for label, m in models.items()}

    def embed(model, dtype):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=dtype == "bf16"):
                model.embed(batch.tokens, batch.wavelength, batch.valid)
        return run

    def train_step(model, optimizer):
        def run():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            model.loss(masked).backward()
            optimizer.step()
            model.eval()
        return run

    optimizers = {label: torch.optim.AdamW(m.parameters(), lr=1e-4) for label, m in models.items()}
    jobs = {}
    for label, model in models.items():
        model.eval()
        jobs[(label, "embed_fp32")] = embed(model, "fp32")
        jobs[(label, "embed_bf16")] = embed(model, "bf16")
        jobs[(label, "train_fp32")] = train_step(model, optimizers[label])

    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        times: dict = {key: [] for key in jobs}
        for fn in jobs.values():  # warm-up (kernels, allocator, AdamW state)
            fn()
        for _ in range(repeat):
            for key, fn in jobs.items():  # interleaved: every variant sees the same machine state
                times[key].append(_timed(fn))
        for (label, kind), ts in times.items():
            best = min(ts)
            rows.append({"threads": n_threads, "variant": label, "measure": kind,
                         "params": params[label], "best_s": best, "median_s": float(np.median(ts)),
                         "spectra_per_s": batch_size / best})
    return {"batch_size": batch_size, "tokens_per_spectrum_mean": float(np.mean(n_tok)),
            "pixels_per_spectrum_mean": float(np.mean([len(s[0]) for s in spectra])),
            "repeat": repeat, "params": params, "rows": rows}


def table(result: dict) -> str:
    lines = ["| threads | variant | params | embed fp32 (spectra/s) | embed bf16 (spectra/s) "
             "| train step fp32 (ms) |", "|---|---|---|---|---|---|"]
    by = {(r["threads"], r["variant"], r["measure"]): r for r in result["rows"]}
    for n_threads in sorted({r["threads"] for r in result["rows"]}):
        for label, _, _ in VARIANTS:
            fp32, bf16 = by[(n_threads, label, "embed_fp32")], by[(n_threads, label, "embed_bf16")]
            step = by[(n_threads, label, "train_fp32")]
            lines.append(f"| {n_threads} | {label} | {fp32['params']:,} | {fp32['spectra_per_s']:.1f} "
                         f"| {bf16['spectra_per_s']:.1f} | {1e3 * step['best_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="spectra per batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = measure(args.batch_size, args.repeat, args.threads)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                         "cpu_count": os.cpu_count(), "torch": torch.__version__,
                         "load_average_at_start": os.getloadavg()}
    result["wall_s"] = time.perf_counter() - start
    result["command"] = "python benchmarks/head_size.py " + " ".join(argv or sys.argv[1:])
    print(table(result))
    print(f"\n{result['wall_s']:.0f} s, batch {args.batch_size}, "
          f"{result['tokens_per_spectrum_mean']:.0f} tokens/spectrum")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
