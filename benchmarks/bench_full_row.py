"""The full catalogue row at scale: spectra/s against the embedding, memory per spectrum, corpus scaling.

Part 1 (``--files``): the same real SDSS/BOSS/eBOSS ``spec-*.fits`` files (first ``--files`` in sorted
order under ``<data>/sdss``) through ``omnispectra.embed`` and ``omnispectra.classify`` (``fast=True``:
the probe alone; the default; ``full=True``: the whole row) with the bundled model, probes and
templates, float32, side by side in one run, each in a fresh subprocess (its own peak RSS):
spectra/s, the ratios (the default's cost over the probe alone's is the issue's gate) and the
peak-RSS growth per spectrum of a batch. With ``--baseline-src DIR`` the same timings also run
with the omnispectra of another source tree (e.g. ``git archive`` of an earlier commit), for a
before/after in the same run. Redrock (``--redrock-processes``, default 2) then fits the same
files as production runs a plate (:func:`redrock_speed`); the full row's spectra/s over
Redrock's is the issue's other ratio.

Part 2 (``--sizes``): engine corpora (``omnispectra simulate``, made once in ``--work``) through
``omnispectra.training.catalogue.catalogue_corpus`` (``--verb``), one fresh subprocess per size: peak
RSS and spectra/s. Peak memory should stay flat with the corpus size (shards and batches bound it).

Every timing is reported with the 1-minute load average before and after it: the machine is shared.
``--interleave REPS`` (with ``--baseline-src``) also alternates the two trees' full row and probe
alone, so that both see the same drift of the load.
On a GPU: ``--device cuda --dtype auto --files 64 --sizes --redrock-processes 0`` (the fit and the
model on the GPU, bf16 autocast; the JSON keeps the device).

Usage::

    OMNISPECTRA_DATA_DIR=DIR OMP_NUM_THREADS=1 python benchmarks/bench_full_row.py --files 30 \\
        --sizes 1000 5000 [--with-20k] [--baseline-src /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's omnispectra
from _common import REPO, data_dir  # noqa: E402

from omnispectra.fileio import atomic_write  # noqa: E402

ROW_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    from pathlib import Path
    import omnispectra
    paths = json.loads(sys.argv[1]); what = sys.argv[2]; batch = int(sys.argv[3])
    kw = dict(dtype=sys.argv[5], device=sys.argv[4], batch_size=batch, progress=False, on_error="skip")
    verbs = {"embed": lambda p: omnispectra.embed(p, **kw),
             "fast": lambda p: omnispectra.classify(p, fast=True, **kw),       # the probe alone
             "default": lambda p: omnispectra.classify(p, **kw),               # probe + template evidence
             "full": lambda p: omnispectra.classify(p, full=True, **kw)}
    run = verbs[what]
    run(paths[:2])                                    # warm-up: weights, probes, templates, caches
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load0 = os.getloadavg()[0]; t0 = time.perf_counter()
    out = run(paths)
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = len(out)
    meta = getattr(out, "meta", {})
    print(json.dumps({"what": what, "omnispectra": str(Path(omnispectra.__file__).parent),
                      "device": sys.argv[4], "dtype": str(meta.get("DTYPE", sys.argv[5])),
                      "n_spectra": n, "seconds": dt, "spectra_per_s": n / dt,
                      "load_before": load0, "load_after": os.getloadavg()[0],
                      "peak_rss_mb": rss1 / 1024,
                      "rss_growth_mb_per_spectrum": (rss1 - rss0) / 1024 / min(n, batch)}))
""")

REDROCK_CHILD = textwrap.dedent("""
    import contextlib, io, json, os, sys, tempfile, time
    from pathlib import Path
    import numpy as np
    paths, procs = json.loads(sys.argv[1]), int(sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from compare_redrock import common_range, gaussian_resolution, template_list
    from redrock.targets import DistTargetsCopy, Spectrum, Target
    from redrock.templates import DistTemplate, load_templates
    from redrock.zfind import zfind
    import omnispectra
    from omnispectra.spectrum import spectrum_data
    quiet = contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory() as tmp, quiet:
        templates = load_templates(str(template_list(Path(sys.argv[4]), Path(tmp))), asdict=True)
    lo, hi = common_range(templates)
    # one grid for all, as a plate's fibres share one: SDSS/BOSS/eBOSS pixels lie on the global
    # log10 grid of step 1e-4, so every spectrum goes onto the pixels all of them cover
    spectra = []
    for path in paths:
        try:
            d = spectrum_data(omnispectra.read(path)[0])
        except Exception:
            continue
        j = np.rint(np.log10(d.wavelength) / 1e-4).astype(int)
        ivar = np.where(d.mask | ~np.isfinite(d.flux) | ~np.isfinite(d.ivar), 0.0, d.ivar)
        spectra.append((j, np.where(ivar > 0, d.flux, 0.0), ivar))
    j_lo = max([int(np.ceil(np.log10(lo * 1.01) / 1e-4))] + [j[0] for j, _, _ in spectra])
    j_hi = min([int(np.floor(np.log10(hi * 0.99) / 1e-4))] + [j[-1] for j, _, _ in spectra])
    grid = np.arange(j_lo, j_hi + 1)
    wave = 10.0 ** (grid * 1e-4)
    targets = []
    for i, (j, flux, ivar) in enumerate(spectra):
        f, iv = np.zeros(grid.size), np.zeros(grid.size)
        at = np.searchsorted(grid, j)
        ok = (at < grid.size) & (grid[np.minimum(at, grid.size - 1)] == j)
        f[at[ok]], iv[at[ok]] = flux[ok], ivar[ok]
        targets.append(Target(i, [Spectrum(wave, f, iv, gaussian_resolution(grid.size, 1.0), band="all")]))
    load0 = os.getloadavg()[0]; t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        dist = DistTargetsCopy(targets)
        dtemplates = [DistTemplate(t, dist.wavegrids(), mp_procs=procs) for t in templates.values()]
        zfind(dist, dtemplates, mp_procs=procs, nminima=3)
    dt = time.perf_counter() - t0
    print(json.dumps({"what": "redrock", "processes": procs, "n_spectra": len(targets),
                      "pixels": int(grid.size), "seconds": dt,
                      "spectra_per_s": len(targets) / dt, "load_before": load0,
                      "load_after": os.getloadavg()[0]}))
""")

CORPUS_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    from omnispectra.training.catalogue import catalogue_corpus, read_catalogue_shards
    corpus, out, verb, shard = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    load0 = os.getloadavg()[0]; t0 = time.perf_counter()
    result = catalogue_corpus(corpus, out, verb=verb, shard_size=shard, batch_size=32, overwrite=True)
    dt = time.perf_counter() - t0
    n = len(read_catalogue_shards(out))
    print(json.dumps({"verb": verb, "n_spectra": result["n_spectra"], "n_rows": n, "seconds": dt,
                      "spectra_per_s": result["n_spectra"] / dt, "load_before": load0,
                      "load_after": os.getloadavg()[0],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def _child(code: str, args: list[str], src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    # run in ``src``: ``python -c`` puts the working directory first on sys.path, so from
    # another checkout the child would import that checkout's omnispectra, not ``src``'s
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          check=False, cwd=str(src))
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sdss_files(root: Path, n_files: int) -> list[str]:
    """The first ``n_files`` SDSS/BOSS/eBOSS ``spec-*.fits`` files of the shared data, in name order."""
    return [str(p) for p in sorted((root / "sdss").rglob("spec-*.fits"))[:n_files]]


def _row_run(paths: list[str], what: str, batch: int, src: Path, device: str, dtype: str) -> dict:
    """One verb of :data:`ROW_CHILD` on ``paths`` with the omnispectra of ``src``."""
    return _child(ROW_CHILD, [json.dumps(paths), what, str(batch), device, dtype], src)


def full_row_vs_embedding(root: Path, n_files: int, batch: int, src: Path, device: str = "cpu",
                          dtype: str = "float32") -> dict:
    """Part 1 with the omnispectra of ``src``."""
    paths = sdss_files(root, n_files)
    runs = {what: _row_run(paths, what, batch, src, device, dtype)
            for what in ("embed", "fast", "default", "full")}
    return {"source": str(src), "n_files": len(paths), "embed": runs["embed"], "full_row": runs["full"],
            "classify_fast": runs["fast"], "classify_default": runs["default"],
            "full_over_embed": runs["full"]["spectra_per_s"] / runs["embed"]["spectra_per_s"],
            # the gate: default classify costs at most 2x the probe-alone path
            "default_cost_over_fast": runs["fast"]["spectra_per_s"] / runs["default"]["spectra_per_s"]}


def interleaved(root: Path, n_files: int, batch: int, base: Path, reps: int, device: str = "cpu",
                dtype: str = "float32") -> list[dict]:
    """The full row and the probe alone of this tree and ``base``, alternated ``reps`` times (on
    a shared machine the load drifts between the runs of :func:`full_row_vs_embedding`; the
    probe alone, unchanged between two trees, shows how much)."""
    paths = sdss_files(root, n_files)
    runs = []
    for rep in range(reps):
        for src in (REPO, base):
            for what in ("full", "fast"):
                runs.append({"rep": rep, **_row_run(paths, what, batch, src, device, dtype)})
                print(json.dumps(runs[-1]), flush=True)
    return runs


def redrock_speed(root: Path, n_files: int, processes: int) -> dict:
    """Redrock on the files of part 1 as production runs it on a plate: every target on one
    wavelength grid (the pixels all files and every template cover) in one ``zfind`` call, so
    each template is rebinned once per redshift for all of them, the scan spread over
    ``processes``; Redrock's own templates and a 1-pixel Gaussian resolution
    (``scripts/compare_redrock.py``'s default setup)."""
    return _child(REDROCK_CHILD, [json.dumps(sdss_files(root, n_files)), str(processes),
                                  str(REPO / "scripts"), str(root / "templates" / "redrock")], REPO)


def engine_corpus(work: Path, n: int, root: Path) -> list[str]:
    """The engine corpus of ``n`` spectra in ``work`` (made once, by ``omnispectra simulate``)."""
    target = work / f"engine-{n}.h5"
    made = sorted(work.glob(f"engine-{n}-*.h5")) or sorted(work.glob(f"engine-{n}.h5"))
    if not made:
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "omnispectra.cli", "simulate", str(target), "-n", str(n),
                        "--templates", str(root / "templates"), "--donors", str(root / "sdss")],
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
        made = sorted(work.glob(f"engine-{n}-*.h5")) or [target]
    return [str(p) for p in made]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30, help="SDSS files of part 1 (0: skip part 1).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="Device of part 1 (cuda: model and fit on a GPU).")
    parser.add_argument("--dtype", default="float32", help="dtype of part 1 (auto: bf16 on a GPU).")
    parser.add_argument("--baseline-src", default=None, help="Another source tree timed the same way.")
    parser.add_argument("--interleave", type=int, default=0, metavar="REPS",
                        help="With --baseline-src: also alternate the full row and the probe alone of "
                             "both trees REPS times.")
    parser.add_argument("--redrock-processes", type=int, default=2,
                        help="Redrock on the files of part 1 with this many processes (0: skip).")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--with-20k", action="store_true", help="Add the 20k engine corpus (slow on a CPU).")
    parser.add_argument("--verb", default="classify", help="Verb of part 2 (classify is the full row).")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "omnispectra-bench-full-row"),
                        help="Where engine corpora and shards go (kept: corpora are made once).")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "full-row-cpu.json"))
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        raise SystemExit("no shared data folder (set OMNISPECTRA_DATA_DIR)")
    out: dict = {"threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
                 "command": " ".join(["python", *sys.argv]), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.files:
        on = {"device": args.device, "dtype": args.dtype}
        out["sdss"] = [full_row_vs_embedding(root, args.files, args.batch_size, REPO, **on)]
        if args.baseline_src:
            base = Path(args.baseline_src)
            out["sdss"].append(full_row_vs_embedding(root, args.files, args.batch_size, base, **on))
            if args.interleave:
                out["interleaved"] = interleaved(root, args.files, args.batch_size, base, args.interleave,
                                                 **on)
        if args.redrock_processes:
            out["redrock"] = redrock_speed(root, args.files, args.redrock_processes)
            full = out["sdss"][0]["full_row"]["spectra_per_s"]
            out["full_row_over_redrock"] = full / out["redrock"]["spectra_per_s"]
    sizes = args.sizes + ([20_000] if args.with_20k else [])
    work = Path(args.work)
    out["corpora"] = []
    for n in sizes:
        corpus = engine_corpus(work, n, root)
        res = _child(CORPUS_CHILD, [json.dumps(corpus), str(work / f"shards-{n}"), args.verb,
                                    str(args.shard_size)], REPO)
        out["corpora"].append(res)
        print(json.dumps(res), flush=True)
    if len(out["corpora"]) > 1:
        peaks = [c["peak_rss_mb"] for c in out["corpora"]]
        out["peak_rss_spread"] = (max(peaks) - min(peaks)) / min(peaks)
    print(json.dumps(out, indent=1))
    with atomic_write(args.out) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
