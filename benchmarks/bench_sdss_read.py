"""SDSS ``spec`` file reading speed: the omnispectra reader against its predecessor and specutils.

Reads the same SDSS/BOSS ``spec-*.fits`` files (the first ``--n`` in sorted order under
``<data>/sdss``) with each reader, side by side in one run, ``--repeats`` rounds
alternating readers file by file, and reports files/s (per file the best round) on one core:

* ``omnispectra.io.read``: what every command uses (probe + identify + read);
* ``read_sdss (fast)``: the reader alone (:mod:`omnispectra.io.fastfits` path);
* ``read_sdss (astropy)``: the same reader through astropy's table machinery;
* ``baseline aca2e84``: the reader before the lazy rewrite (from git, when available);
* ``baseline aca2e84 + probe``: that reader after the astropy header probe it used (what
  ``omnispectra.io.read`` cost before);
* ``specutils SDSS-III/IV spec``: ``Spectrum.read(f, format='SDSS-III/IV spec')``.

With ``--embed`` it also times ``omnispectra.embed`` (bundled model, float32, one thread)
on the same files end to end against embedding the already-read spectra (model only).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_sdss_read.py [--data-dir DIR] [--n 64] [--repeats 3] [--embed]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's omnispectra
from _common import data_dir  # noqa: E402

import omnispectra.io as oio  # noqa: E402
from omnispectra.io import registry  # noqa: E402
from omnispectra.io._common import Spectrum  # noqa: E402
from omnispectra.io.sdss import read_sdss  # noqa: E402

BASELINE_COMMIT = "aca2e84"


def baseline_reader():
    """``read_sdss`` as it was at :data:`BASELINE_COMMIT` (None when git cannot show it)."""
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:omnispectra/io/sdss.py"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    src = src.replace('@register_reader("sdss"', '# @register_reader("sdss"')
    module = types.ModuleType("omnispectra.io._sdss_baseline")
    module.__package__ = "omnispectra.io"
    exec(compile(src, "sdss_baseline.py", "exec"), module.__dict__)
    return module.read_sdss


def with_astropy_probe(read):
    """``read`` after identifying the file with the astropy header probe (the old path)."""
    def run(path):
        with mock.patch.object(registry, "_probe_fits_fast", return_value=False):
            registry.identify_format(path)
        return read(path)
    return run


def specutils_reader(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Spectrum.read(str(path), format="SDSS-III/IV spec")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embed", action="store_true", help="also time files -> embeddings")
    args = parser.parse_args(argv)
    root = Path(args.data_dir) if args.data_dir else data_dir()
    files = sorted((root / "sdss").rglob("spec-*.fits"))
    files = [f for f in files if f.name != "spec-0269-51581-0003.fits"][: args.n]  # a dead fibre
    readers = {"omnispectra.io.read": oio.read, "read_sdss (fast)": read_sdss,
               "read_sdss (astropy)": lambda p: read_sdss(p, fast=False)}
    base = baseline_reader()
    if base is not None:
        readers[f"baseline {BASELINE_COMMIT}"] = base
        readers[f"baseline {BASELINE_COMMIT} + probe"] = with_astropy_probe(base)
    readers["specutils SDSS-III/IV spec"] = specutils_reader
    for read in readers.values():  # warm-up: imports, caches
        read(files[0])
    # Readers alternate file by file, so a busy machine slows them alike; per file the
    # best of the rounds counts.
    best = {name: [float("inf")] * len(files) for name in readers}
    for _ in range(args.repeats):
        for i, f in enumerate(files):
            for name, read in readers.items():
                t0 = time.perf_counter()
                read(f)
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
    print(f"{len(files)} SDSS spec files under {root / 'sdss'}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; best of {args.repeats} rounds")
    for name, per_file in best.items():
        wall = sum(per_file)
        print(f"  {name:30s} {len(files) / wall:7.1f} files/s  ({wall / len(files) * 1e3:6.1f} ms/file)")
    if args.embed:
        embed_end_to_end(files, args.repeats)


def embed_end_to_end(files, repeats: int) -> None:
    """files -> embeddings against model-only on the already-read spectra, alternating."""
    import torch

    from omnispectra import api
    from omnispectra.pretrained import load_model

    torch.set_num_threads(1)
    spectra = [oio.read(f)[0] for f in files]
    model = load_model("default")
    api.embed(spectra[:4], model=model, dtype="float32")
    runs = {"model only (read spectra)": spectra, "files -> embeddings": [str(f) for f in files]}
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, inputs in runs.items():
            t0 = time.perf_counter()
            api.embed(inputs, model=model, dtype="float32")
            best[name] = min(best[name], time.perf_counter() - t0)
    for name, wall in best.items():
        print(f"  embed: {name:26s} {len(files) / wall:7.1f} spectra/s")


if __name__ == "__main__":
    main()
