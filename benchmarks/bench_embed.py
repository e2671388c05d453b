"""Embedding throughput of the model presets on real SDSS spectra, fp32 vs bf16 autocast.

Run: ``python benchmarks/bench_embed.py [--presets tiny small] [--n 64] [--batch-size 32]``.
Every figure of one run is measured side by side on the same machine; the bf16 column is
also given as a ratio to fp32 and with the cosine similarity of its embeddings to fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, sdss_spectra  # noqa: E402

from omnispectra.collate import collate, length_sorted_batches  # noqa: E402
from omnispectra.model import OmniSpectra, OmniSpectraConfig  # noqa: E402
from omnispectra.tokenizer import tokenize  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--n", type=int, default=64, help="number of spectra")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    spectra = sdss_spectra(args.n)
    tokenize_s = best_time(lambda: [tokenize(*s) for s in spectra])
    tokens = [tokenize(*s) for s in spectra]
    batches = [collate([tokens[i] for i in b])
               for b in length_sorted_batches([t.n_tokens for t in tokens], args.batch_size)]
    n_tok = sum(t.n_tokens for t in tokens)
    results = {"n_spectra": len(tokens), "mean_tokens": n_tok / len(tokens),
               "threads": torch.get_num_threads(), "tokenize_spectra_per_s": len(tokens) / tokenize_s,
               "presets": {}}
    print(f"{len(tokens)} real SDSS spectra, mean {n_tok / len(tokens):.0f} tokens, "
          f"{torch.get_num_threads()} threads; tokenize: {len(tokens) / tokenize_s:,.0f} spectra/s")
    print(f"{'preset':<8} {'params':>10} {'fp32 sp/s':>10} {'bf16 sp/s':>10} {'bf16/fp32':>9} {'cos(bf16,fp32)':>15}")
    for preset in args.presets:
        torch.manual_seed(0)
        model = OmniSpectra(OmniSpectraConfig.from_preset(preset)).eval()

        def run(bf16: bool):
            out = []
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for b in batches:
                    out.append(model.embed(b.tokens, b.wavelength, b.valid).float())
            return torch.cat(out)

        t32 = best_time(lambda: run(False), repeat=2)
        t16 = best_time(lambda: run(True), repeat=2)
        cos = torch.nn.functional.cosine_similarity(run(False), run(True), dim=1)
        row = {"params": model.get_num_params(), "fp32_spectra_per_s": len(tokens) / t32,
               "bf16_spectra_per_s": len(tokens) / t16, "bf16_speedup": t32 / t16,
               "cosine_min": cos.min().item(), "cosine_mean": cos.mean().item()}
        results["presets"][preset] = row
        print(f"{preset:<8} {row['params']:>10,} {row['fp32_spectra_per_s']:>10.1f} "
              f"{row['bf16_spectra_per_s']:>10.1f} {row['bf16_speedup']:>9.2f} "
              f"{row['cosine_mean']:>8.5f} (min {row['cosine_min']:.5f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
