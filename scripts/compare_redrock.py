#!/usr/bin/env python
"""Redrock and omnispectra's RedshiftFitter side by side on the same real spectra.

Needs Redrock (``pip install redrock==0.21.0``, part of the ``eval`` extra; never a core
dependency, never run in CI). Redrock ships no templates and its template glob misses
the ``.fits.gz`` files of ``<data>/templates/redrock``, so this script writes a template
list file into a temporary directory; the 2016 galaxy basis (``rrtemplate-galaxy``)
lacks the ``RRIGM`` header keyword Redrock 0.21 requires, so a *temporary copy* of it
is patched (``RRIGM = 'Calura12'``, Redrock's own choice for its pre-2024 galaxy
templates; the IGM does not matter below z = 1.7). The shared data are never written.

The spectra are those of ``scripts/eval_redshift.py``: every GALAXY/QSO spectrum of the
data folders with a pipeline ``z`` (6dFGS only with QUALITY >= 3, its rest-frame files
shifted back). Redrock gets each spectrum as one camera with a Gaussian resolution
matrix of ``--resolution-sigma`` pixels (the readers keep no resolution data);
both fitters see the same wavelength, flux, inverse variance and bad-pixel mask, cut
to the range every Redrock template covers at every trial redshift
(:func:`common_range`).

Usage::

    OMP_NUM_THREADS=1 python scripts/compare_redrock.py --data ../shared/data --out rr.ecsv
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from omnispectra.evaluation.stats import wilson_interval

#: Template files used (Redrock's DESI default set: GALAXY, QSO LOZ + HIZ, stars).
TEMPLATES = ("rrtemplate-galaxy.fits.gz", "rrtemplate-QSO-LOZ-v1.1.fits.gz",
             "rrtemplate-QSO-HIZ-v1.1.fits.gz",
             *(f"rrtemplate-STAR-{t}-v0.1.fits.gz" for t in ("A", "B", "CV", "F", "G", "K", "M", "WD")))
CATASTROPHIC = 0.0033


def frac(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / max(n, 1):.3f} [{lo:.3f}, {hi:.3f}]"


def template_list(source: Path, workdir: Path) -> Path:
    """Write ``templates.txt`` listing the templates; patch a copy of the galaxy file lacking RRIGM."""
    from astropy.io import fits

    lines = []
    for name in TEMPLATES:
        path = source / name
        if not path.is_file():
            raise FileNotFoundError(f"Redrock template {path} is missing")
        header = fits.getheader(path, "BASIS_VECTORS")
        if header.get("RRTYPE", "").strip().upper() == "GALAXY" and "RRIGM" not in header:
            copy = workdir / name.replace(".fits.gz", "-rrigm.fits")
            with fits.open(path) as hdul:
                hdul["BASIS_VECTORS"].header["RRIGM"] = ("Calura12", "added by compare_redrock.py")
                hdul.writeto(copy, overwrite=True)
            path = copy
        lines.append(str(path.resolve()))
    listing = workdir / "templates.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def gaussian_resolution(n: int, sigma: float):
    """A sparse ``(n, n)`` resolution matrix: a normalized Gaussian of ``sigma`` pixels (11 diagonals)."""
    import scipy.sparse

    offsets = np.arange(-5, 6)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    return scipy.sparse.dia_matrix((np.repeat(kernel[:, None], n, axis=1), offsets), shape=(n, n))


def common_range(templates: dict) -> tuple[float, float]:
    """Observed wavelengths every template covers at every redshift of its scan.

    Redrock rebins each template onto the spectrum's pixel edges at each trial redshift
    and refuses edges outside the template (``trapz_rebin``), so spectra are cut to this.
    """
    lo = max(float(t.wave.min()) * (1 + float(np.max(t.redshifts))) for t in templates.values())
    hi = min(float(t.wave.max()) * (1 + float(np.min(t.redshifts))) for t in templates.values())
    return lo, hi


def redrock_fit(wave, flux, ivar, bad, templates: dict, sigma: float) -> dict:
    """One spectrum through Redrock's ``zfind``: the best row (SPECTYPE, Z, ZERR, ZWARN, DELTACHI2).

    ``templates``: Redrock's ``load_templates(..., asdict=True)``, read once; they are
    rebinned onto each spectrum's wavelength grid here. Redrock's progress output is
    swallowed.
    """
    from redrock.targets import DistTargetsCopy, Spectrum, Target
    from redrock.templates import DistTemplate
    from redrock.zfind import zfind

    w = np.ascontiguousarray(wave, dtype=np.float64)
    iv = np.where(bad | ~np.isfinite(flux) | ~np.isfinite(ivar), 0.0, ivar).astype(np.float64)
    f = np.where(iv > 0, flux, 0.0).astype(np.float64)
    resolution = gaussian_resolution(w.size, sigma)
    with contextlib.redirect_stdout(io.StringIO()):
        targets = DistTargetsCopy([Target(0, [Spectrum(w, f, iv, resolution, band="all")])])
        dtemplates = [DistTemplate(t, targets.wavegrids(), mp_procs=1) for t in templates.values()]
        _, zfit = zfind(targets, dtemplates, mp_procs=1, nminima=3)
    best = zfit[zfit["znum"] == 0][0]
    return {"spectype": str(best["spectype"]).strip(), "z": float(best["z"]),
            "z_err": float(best["zerr"]), "zwarn": int(best["zwarn"]), "deltachi2": float(best["deltachi2"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--templates", default=None, help="RedshiftFitter templates (default <data>/templates)")
    ap.add_argument("--redrock-templates", default=None, help="default <data>/templates/redrock")
    ap.add_argument("--resolution-sigma", type=float, default=1.0, help="Gaussian LSF of Redrock, pixels")
    ap.add_argument("--max", type=int, default=None, help="at most this many spectra (quick runs)")
    ap.add_argument("--max-per-survey", type=int, default=None,
                    help="at most this many spectra per survey (Redrock takes seconds per spectrum)")
    ap.add_argument("--out", default=None, help="per-spectrum table (ECSV)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from eval_redshift import labelled_spectra  # noqa: PLC0415 - the sibling script, same spectra

    from omnispectra.redshift import RedshiftFitter, dz_over_1pz

    data = Path(args.data)
    fitter = RedshiftFitter(directory=args.templates or data / "templates")
    rows, per_survey = [], {}
    with tempfile.TemporaryDirectory(prefix="omnispectra-redrock-") as tmp:
        from redrock.templates import load_templates

        listing = template_list(Path(args.redrock_templates or data / "templates" / "redrock"), Path(tmp))
        with contextlib.redirect_stdout(io.StringIO()):
            rr_templates = load_templates(str(listing), asdict=True)
        lo, hi = common_range(rr_templates)
        print(f"spectra cut to {lo:.0f}-{hi:.0f} A (covered by every Redrock template at every redshift)")
        for item in labelled_spectra(data, max_stars=0):
            if item["cls"] == "STAR" or (args.max_per_survey is not None
                                         and per_survey.get(item["survey"], 0) >= args.max_per_survey):
                continue
            per_survey[item["survey"]] = per_survey.get(item["survey"], 0) + 1
            if args.max is not None and len(rows) >= args.max:
                break
            # both fitters get the same pixels, cut to what Redrock's templates cover
            # (edge pixels 1 % inside, against rounding in Redrock's edge computation)
            keep = (item["wave"] > lo * 1.01) & (item["wave"] < hi * 0.99)
            if keep.sum() < 100:
                continue
            pixels = [np.asarray(item[k])[keep] for k in ("wave", "flux", "ivar", "bad")]
            t0 = time.perf_counter()
            ours = fitter.fit(*pixels)
            t1 = time.perf_counter()
            try:
                rr = redrock_fit(*pixels, rr_templates, args.resolution_sigma)
            except ValueError as err:  # counted as a Redrock failure (catastrophic), with the reason
                rr = {"spectype": "", "z": float("nan"), "z_err": float("nan"), "zwarn": -1,
                      "deltachi2": float("nan")}
                print(f"Redrock failed on {item['id']}: {err}")
            t2 = time.perf_counter()
            rows.append({"id": item["id"], "survey": item["survey"], "cls": item["cls"],
                         "z_ref": item["z_ref"],
                         "os_spectype": ours.spectype, "os_z": ours.z, "os_z_err": ours.z_err,
                         "os_deltachi2": ours.deltachi2, "os_flag": int(ours.flag), "os_seconds": t1 - t0,
                         **{f"rr_{k}": v for k, v in rr.items()}, "rr_seconds": t2 - t1})
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(rows)
    print(f"\nGALAXY/QSO spectra with a pipeline z fitted by both: N = {n}")
    if not n:
        return
    z_ref = np.array([r["z_ref"] for r in rows])
    cls = np.array([r["cls"] for r in rows])
    surveys = np.array([r["survey"] for r in rows])
    for tag, name, ok_col, ok_val in (("os", "omnispectra RedshiftFitter", "os_flag", 0),
                                      ("rr", "Redrock 0.21.0", "rr_zwarn", 0)):
        z = np.array([r[f"{tag}_z"] for r in rows])
        err = np.where(np.isfinite(z), dz_over_1pz(z, z_ref), np.inf)
        bad = err > CATASTROPHIC
        good = np.array([r[ok_col] == ok_val for r in rows])
        spectype = np.array([r[f"{tag}_spectype"] for r in rows])
        sec = np.array([r[f"{tag}_seconds"] for r in rows])
        print(f"\n{name}:")
        print(f"  class agrees with the pipeline: {frac(int((spectype == cls).sum()), n)}")
        print(f"  catastrophic (|dz|/(1+z) > {CATASTROPHIC}): all {frac(int(bad.sum()), n)}; "
              f"among {ok_col} == 0 {frac(int((bad & good).sum()), int(good.sum()))}; "
              f"{ok_col} == 0 for {frac(int(good.sum()), n)}")
        for s in sorted(set(surveys)):
            m = surveys == s
            print(f"    [{s}] catastrophic {frac(int(bad[m].sum()), int(m.sum()))}; "
                  f"median |dz|/(1+z) {np.median(err[m]):.2e}")
        print(f"  seconds per spectrum: median {np.median(sec):.2f}, max {sec.max():.2f}")
    if args.out:
        from astropy.table import Table

        Table(rows=[list(r.values()) for r in rows], names=list(rows[0])).write(args.out, overwrite=True)


if __name__ == "__main__":
    main()
