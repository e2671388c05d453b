"""Operator launches per batch as the batch grows (issue #26: launches must not grow with it).

Counts the torch operator calls (``torch.profiler``, CPU activity; on a GPU each is at least one
kernel launch) of the model's forward pass and of the batched template fit
(``omnispectra.redshift_batch.fit_many``) on the same real SDSS spectra at several batch sizes.
A part whose calls per batch stay flat as the batch grows is batched; one whose calls grow with
the batch still loops over spectra in Python. The fit is counted twice: as it runs on CPU (each
batch cut for the caches) and in the layout it runs on CUDA (``chunked=False``: whole batches).

Usage::

    OMNISPECTRA_DATA_DIR=DIR OMP_NUM_THREADS=1 python benchmarks/launch_counts.py --batches 4 16 32 64 \\
        -o benchmarks/results/launch-counts.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's omnispectra
from _common import data_dir, emit  # noqa: E402

#: Operators that only make views or read metadata (no kernel on a GPU), left out of the
#: counts: slicing, reshaping and indexing by an integer grow with loops that a GPU never sees.
VIEW_OPS = frozenset(f"aten::{name}" for name in (
    "as_strided", "select", "view", "reshape", "_reshape_alias", "_unsafe_view", "slice", "narrow",
    "unsqueeze", "squeeze", "expand", "expand_as", "permute", "transpose", "t", "mT", "movedim",
    "flatten", "unflatten", "unbind", "split", "chunk", "diagonal", "alias", "detach", "lift_fresh",
    "resolve_conj", "resolve_neg", "conj", "_conj", "view_as_real", "view_as_complex", "empty",
    "empty_strided", "result_type", "size", "stride", "item", "_local_scalar_dense", "is_nonzero", "to"))


def op_calls(run) -> int:
    """Torch operator calls made by ``run()`` (the profiler's top-level events) that launch work:
    those in :data:`VIEW_OPS` are not counted."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key not in VIEW_OPS)


def measure(paths: list[str], batch: int) -> dict[str, float]:
    """Operator calls per batch of the forward pass and of the template fit, ``batch`` spectra each."""
    import torch

    import omnispectra
    from omnispectra.collate import collate
    from omnispectra.io import iter_spectra
    from omnispectra.redshift import fitter_for
    from omnispectra.redshift_batch import fit_many
    from omnispectra.spectrum import spectrum_data
    from omnispectra.tokenizer import tokenize_data

    net = omnispectra.load_model("default", "cpu").eval()
    data = [spectrum_data(s) for s in itertools.islice(iter_spectra(paths, on_error="skip"), batch)]
    tokens = collate([tokenize_data(d, patch_size=net.config.patch_size, stride=net.config.stride)
                      for d in data])
    with torch.inference_mode():
        forward = op_calls(lambda: net.embed(tokens.tokens, tokens.wavelength, tokens.valid))
    fitter = fitter_for(None)
    fit = op_calls(lambda: fit_many(fitter, data, batch_size=batch))
    whole = op_calls(lambda: fit_many(fitter, data, batch_size=batch, chunked=False))
    return {"batch": batch, "forward": forward, "fit": fit, "whole": whole}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 32, 64])
    parser.add_argument("-o", "--out", type=Path, default=None, help="markdown table (default: print only)")
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        print("no real data folder (set OMNISPECTRA_DATA_DIR); nothing measured")
        return 0
    paths = sorted(str(p) for p in (root / "sdss").rglob("spec-*.fits"))
    rows = [measure(paths, b) for b in args.batches]
    lines = ["| batch | forward: launching calls per batch | per spectrum "
             "| template fit (CPU layout): calls per batch | per spectrum | template fit (CUDA layout) "
             "| per spectrum |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['forward']} | {r['forward'] / r['batch']:.1f} | {r['fit']} | "
                     f"{r['fit'] / r['batch']:.1f} | {r['whole']} | {r['whole'] / r['batch']:.1f} |")
    text = "\n".join(["# Torch operator calls per batch", "",
                      "Command: `python benchmarks/launch_counts.py --batches "
                      + " ".join(map(str, args.batches)) + "`", "", *lines]) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
