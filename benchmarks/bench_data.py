"""Data-pipeline throughput: corpus read -> tokenize -> collate, with and without length bucketing.

Builds a corpus from real spectra of several surveys (SDSS, MILES, APOGEE, DESI, LAMOST,
MaNGA, ... from the shared data folder) into a temporary directory, then measures, side
by side in one run:

* ``read``: reading pixel arrays from the corpus only;
* ``read+tokenize``: ``SpectrumDataset[i]`` (read + tokenize);
* ``pipeline/random``: DataLoader with random batches (``BatchSampler(RandomSampler)``)
  and the masking :class:`~omnispectra.collate.Collator`;
* ``pipeline/bucketed``: the same with :class:`~omnispectra.collate.LengthBucketSampler`;

and the padding fraction (token slots that are padding) of both batchings. Usage::

    python benchmarks/bench_data.py [--data-dir DIR] [--per-survey 120] [--batch-size 32]
                                    [--workers 0] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir  # noqa: E402

from omnispectra.collate import Collator, LengthBucketSampler, padding_fraction  # noqa: E402
from omnispectra.corpus import build_corpus, corpus_info  # noqa: E402
from omnispectra.dataset import SpectrumDataset  # noqa: E402

SURVEY_GLOBS = {  # survey folder -> file patterns (spectra only; catalogues and indexes excluded)
    "sdss": ["sdss/**/spec-*.fits", "sdss/gelato/1237*.fits", "sdss/ppxf/*.fits"],
    "miles": ["miles/MILES_res2.50_star_m*.fits"],
    "apogee": ["apogee/aspcapStar/*.fits", "apogee/apStar/*.fits"],
    "desi": ["desi/coadd-*.fits", "desi/specutils/coadd-*.fits"],
    "lamost": ["lamost/**/spec-*.fits*", "lamost/med-*.fits*"],
    "manga": ["manga/*.fits.gz"],
    "xshooter": ["xshooter/*.fits"],
    "legac": ["legac/*.fits"],
}


def select_files(root: Path, per_survey: int) -> list[Path]:
    files: list[Path] = []
    for patterns in SURVEY_GLOBS.values():
        found = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
        files += found[:per_survey]
    return files


def time_epoch(loader) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch)
    return time.perf_counter() - start, n


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument("--per-survey", type=int, default=120, help="max files per survey folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per configuration (best is reported)")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "none"])
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.data_dir is None or not args.data_dir.is_dir():
        where = args.data_dir or os.environ.get("OMNISPECTRA_DATA_DIR") or "../shared/data"
        sys.exit(f"no data folder {where} (set OMNISPECTRA_DATA_DIR or --data-dir)")
    torch.set_num_threads(1)

    files = select_files(args.data_dir, args.per_survey)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out_dir = Path(tmp) / "corpus"  # a directory: one <survey>.h5 per survey
        report = build_corpus(files, out_dir, progress=False,
                              compression=None if args.compression == "none" else args.compression)
        build_s = time.perf_counter() - t0
        info = corpus_info(out_dir)
        size = sum(p.stat().st_size for p in out_dir.glob("*.h5"))
        ds = SpectrumDataset(out_dir)
        n = len(ds)
        lengths = ds.token_lengths

        results: dict[str, dict] = {}
        # read only / read + tokenize (single process)
        order = np.random.default_rng(0).permutation(n)
        best = {"read": np.inf, "read+tokenize": np.inf}
        for _ in range(args.repeats):
            t = time.perf_counter()
            for i in order:
                ds.arrays(int(i))
            best["read"] = min(best["read"], time.perf_counter() - t)
            t = time.perf_counter()
            for i in order:
                ds[int(i)]
            best["read+tokenize"] = min(best["read+tokenize"], time.perf_counter() - t)
        for name, sec in best.items():
            results[name] = {"seconds": sec, "spectra_per_s": n / sec}

        def loader(bucketed: bool, epoch: int) -> tuple[DataLoader, list[list[int]]]:
            if bucketed:
                sampler = LengthBucketSampler(lengths, args.batch_size, seed=42)
                sampler.set_epoch(epoch)
            else:
                gen = torch.Generator().manual_seed(epoch)
                sampler = BatchSampler(RandomSampler(range(n), generator=gen), args.batch_size,
                                       drop_last=False)
            batches = [list(map(int, b)) for b in sampler]
            collator = Collator(seed=42)
            collator.set_epoch(epoch)
            dl = DataLoader(ds, batch_sampler=batches, collate_fn=collator, num_workers=args.workers)
            return dl, batches

        timing = {"pipeline/random": [], "pipeline/bucketed": []}
        padding = {"pipeline/random": [], "pipeline/bucketed": []}
        for epoch in range(args.repeats):  # interleaved, so both see the same machine load
            for name, bucketed in (("pipeline/random", False), ("pipeline/bucketed", True)):
                dl, batches = loader(bucketed, epoch)
                sec, count = time_epoch(dl)
                assert count == n
                timing[name].append(sec)
                padding[name].append(padding_fraction(lengths, batches))
        for name in timing:
            sec = min(timing[name])
            results[name] = {"seconds": sec, "spectra_per_s": n / sec,
                             "padding_fraction": float(np.mean(padding[name])),
                             "tokens_per_batch_padded": None}
        surveys = ds.surveys
        for name, bucketed in (("pipeline/random", False), ("pipeline/bucketed", True)):
            _, batches = loader(bucketed, 0)
            results[name]["tokens_per_batch_padded"] = float(np.mean([len(b) * lengths[b].max()
                                                                      for b in batches]))
            # buckets must not turn into one-survey batches: the paper mixes surveys in a batch
            results[name]["surveys_per_batch"] = float(np.mean([len(set(surveys[b].tolist()))
                                                                for b in batches]))

    out = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform(), "workers": args.workers,
                    "torch_threads": 1},
        "corpus": {"files_in": len(files), "files_failed": report.n_failed,
                   "failures": [str(f) for f in report.failed_files], "n_spectra": n,
                   "n_dropped_untokenizable": ds.n_dropped, "n_pixels": report.n_pixels,
                   "bytes_on_disk": size, "build_seconds": build_s, "compression": args.compression,
                   "surveys": {k: v["n_spectra"] for k, v in info["surveys"].items()},
                   "tokens": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                              "max": int(lengths.max())}},
        "batch_size": args.batch_size,
        "results": results,
        "speedup_bucketed_vs_random": (results["pipeline/random"]["seconds"]
                                       / results["pipeline/bucketed"]["seconds"]),
    }
    c = out["corpus"]
    print(f"corpus: {c['n_spectra']} spectra from {c['files_in']} files ({c['files_failed']} unreadable), "
          f"{c['n_pixels']} pixels, {c['bytes_on_disk'] / 1e6:.1f} MB on disk ({args.compression}), "
          f"built in {c['build_seconds']:.1f} s; {c['n_dropped_untokenizable']} untokenizable dropped")
    for failure in report.failed_files:
        print(f"  unreadable: {failure}")
    print("surveys: " + ", ".join(f"{k}={v}" for k, v in c["surveys"].items()))
    print(f"tokens per spectrum: min {c['tokens']['min']}, median {c['tokens']['median']:.0f}, "
          f"max {c['tokens']['max']}; batch size {args.batch_size}; workers {args.workers}")
    print(f"{'stage':<20s} {'spectra/s':>10s} {'padding':>8s} {'padded tokens/batch':>20s} "
          f"{'surveys/batch':>14s}")
    for name, r in results.items():
        pad = f"{r['padding_fraction']:.1%}" if "padding_fraction" in r else "-"
        tpb = f"{r['tokens_per_batch_padded']:.0f}" if r.get("tokens_per_batch_padded") else "-"
        mix = f"{r['surveys_per_batch']:.2f}" if "surveys_per_batch" in r else "-"
        print(f"{name:<20s} {r['spectra_per_s']:>10.0f} {pad:>8s} {tpb:>20s} {mix:>14s}")
    print(f"bucketed vs random pipeline: {out['speedup_bucketed_vs_random']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
