#!/usr/bin/env python
"""Redrock and omnispectra's RedshiftFitter side by side on the same real spectra, two setups.

Needs Redrock (``pip install redrock==0.21.0``, part of the ``eval`` extra; never a core
dependency, never run in CI). Redrock ships no templates and its template glob misses
the ``.fits.gz`` files of ``<data>/templates/redrock``, so this script writes a template
list file into a temporary directory; the 2016 galaxy basis (``rrtemplate-galaxy``)
lacks the ``RRIGM`` header keyword Redrock 0.21 requires, so a *temporary copy* of it
is patched (``RRIGM = 'Calura12'``, Redrock's own choice for its pre-2024 galaxy
templates; the IGM does not matter below z = 1.7). The shared data are never written.

The spectra are those of ``scripts/eval_redshift.py``: every GALAXY/QSO spectrum of the
data folders with a pipeline ``z`` (6dFGS only with QUALITY >= 3, its rest-frame files
shifted back), cut to the range every Redrock template covers at every trial redshift
(:func:`common_range`). Both fitters see the same wavelength, flux, inverse variance and
bad-pixel mask. Redrock runs in two setups:

``default``
    What the first version of this script gave Redrock: one camera with a Gaussian
    resolution matrix of ``--resolution-sigma`` pixels, the plain template bases, no
    pixel clipping. Our fitter has six Legendre terms and the negative-pixel clip, so this
    setup is *not* a fair comparison; it is kept to show how much the setup matters.
``fair``
    What a competent user would give it. (1) The file's own line-spread function where
    it carries one: the SDSS/BOSS/eBOSS ``wdisp`` column (Gaussian sigma in pixels),
    turned into a resolution matrix exactly as Redrock's own BOSS reader does
    (:func:`wdisp_resolution`); spectra without it keep the Gaussian. (2) Legendre
    nuisance terms for flux-calibration tilts, as many as our fitter uses
    (``ScanConfig.n_poly``). Redrock 0.21 adds Legendre polynomials only in its archetype
    mode (``--archetypes``, fitted per camera in the final ``fitz`` step; no archetype
    files are available here) and has no option for its plain PCA templates, so they are
    emulated: every template gets ``n_poly`` extra basis rows, the Legendre polynomials
    of the *rest-frame* wavelength (:func:`with_legendre`). The rest wavelength is the
    observed one divided by ``1 + z``, so at every trial redshift these rows span exactly
    the polynomials of degree < ``n_poly`` in observed wavelength, which is what our
    fitter adds; they go through Redrock's own rebinning, resolution matrix and (for
    quasar bases) IGM transmission like any basis row, and are kept out of Redrock's
    negative-[OII] penalty. (3) The same pixel mask as ours: pixels more than
    ``ScanConfig.negative_clip_sigma`` sigma below zero get zero weight
    (:func:`negative_pixel_mask`).

Each method is also thresholded on its own confidence (:func:`purity_completeness`):
Redrock on ``DELTACHI2`` among ``ZWARN == 0``, our fitter on ``deltachi2`` among
``flag == 0`` and, with ``--network``, ``omnispectra.classify(full=True)`` on the
probability of its class among ``flag == 0``. A redshift is correct when
``|dz|/(1+z) <= 0.0033``; completeness is correct-and-kept over all spectra, purity
correct-and-kept over kept.

Usage::

    OMP_NUM_THREADS=1 python scripts/compare_redrock.py --data ../shared/data \\
        --max-per-survey 15 --network --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
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
#: Redrock setups (column prefixes) and what they give Redrock.
SETUPS = {"rrdefault": "Gaussian LSF, plain templates, no clip",
          "rrfair": "file LSF (wdisp), + Legendre terms, negative-pixel clip"}


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


def wdisp_resolution(wdisp: np.ndarray):
    """The resolution matrix of a spectrum whose Gaussian LSF sigma (pixels) is ``wdisp`` per pixel.

    Built as Redrock's own BOSS reader does (``redrock.external.boss.read_spectra``):
    ``sigma < 1e-5`` (pixels without a measurement) becomes 2, ``4 ceil(max sigma) + 1``
    diagonals, entry ``(i, j)`` proportional to ``exp(-(i - j)^2 / (2 sigma_j^2))`` and every
    column normalized to a sum of 1 (the flux of pixel ``j`` is spread, not created).

    Parameters
    ----------
    wdisp : numpy.ndarray
        Per-pixel Gaussian sigma in pixels, shape ``(n,)``.

    Returns
    -------
    scipy.sparse.dia_matrix
        Shape ``(n, n)``.
    """
    import scipy.sparse

    wd = np.array(wdisp, dtype=np.float64)
    if wd.ndim != 1 or wd.size == 0 or not np.all(np.isfinite(wd)):
        raise ValueError("wdisp must be a non-empty 1-D array of finite values")
    wd[wd < 1e-5] = 2.0
    n = wd.size
    ndiag = int(4 * np.ceil(wd.max()) + 1)
    offsets = ndiag // 2 - np.arange(ndiag)
    cols = np.arange(n)
    rows = cols[None, :] - offsets[:, None]  # dia storage: data[k, j] is entry (j - offset_k, j)
    data = np.exp(-0.5 * (offsets[:, None] / wd[None, :]) ** 2) * ((rows >= 0) & (rows < n))
    data /= data.sum(axis=0)
    return scipy.sparse.dia_matrix((data, offsets), shape=(n, n))


def file_wdisp(path: Path, row: int, wave: np.ndarray) -> np.ndarray | None:
    """The file's LSF sigma at ``wave``, in pixels of ``wave``; None when the file has no ``wdisp``.

    Reads the first table HDU with ``loglam`` and ``wdisp`` columns (SDSS/BOSS/eBOSS
    ``spec`` files: one table row per pixel; or one row per spectrum with array columns,
    then row ``row``). ``wdisp`` is in pixels of the file's ``loglam`` grid; it is carried
    to the pixels of ``wave`` through the log-wavelength step.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul[1:]:
            if not isinstance(hdu, fits.BinTableHDU) or hdu.data is None:
                continue
            names = {c.lower(): c for c in hdu.columns.names}
            if "loglam" not in names or "wdisp" not in names:
                continue
            loglam = np.asarray(hdu.data[names["loglam"]], dtype=np.float64)
            wdisp = np.asarray(hdu.data[names["wdisp"]], dtype=np.float64)
            if loglam.ndim == 2:
                loglam, wdisp = loglam[row], wdisp[row]
            good = np.isfinite(loglam) & np.isfinite(wdisp)
            if good.sum() < 2:
                return None
            step_file = np.median(np.diff(loglam[good]))
            sigma_dex = np.interp(np.log10(wave), loglam[good], wdisp[good]) * step_file
            return sigma_dex / np.gradient(np.log10(wave))
    return None


def negative_pixel_mask(flux: np.ndarray, ivar: np.ndarray, clip_sigma: float) -> np.ndarray:
    """Pixels more than ``clip_sigma`` sigma below zero (``flux sqrt(ivar) < -clip_sigma``).

    The mask :class:`omnispectra.redshift.RedshiftFitter` applies itself
    (``ScanConfig.negative_clip_sigma``); ``clip_sigma <= 0`` masks nothing. Pixels with a
    non-finite value or ``ivar <= 0`` are not part of it (they carry no weight anyway).
    """
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.shape != ivar.shape:
        raise ValueError(f"flux {flux.shape} and ivar {ivar.shape} differ in shape")
    if clip_sigma <= 0:
        return np.zeros(flux.shape, dtype=bool)
    ok = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    snr = np.where(ok, flux * np.sqrt(np.where(ok, ivar, 0.0)), 0.0)
    return ok & (snr < -clip_sigma)


def legendre_rows(wave: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """Legendre polynomials ``P_0 .. P_{n-1}`` of ``wave`` mapped from ``[lo, hi]`` to ``[-1, 1]``.

    Returns an array of shape ``(n, len(wave))``.
    """
    if n < 0 or not hi > lo:
        raise ValueError(f"need n >= 0 and hi > lo, got n={n}, lo={lo}, hi={hi}")
    x = 2.0 * (np.asarray(wave, dtype=np.float64) - lo) / (hi - lo) - 1.0
    return np.polynomial.legendre.legvander(x, max(n - 1, 0)).T[:n]


def with_legendre(templates: dict, n_poly: int, obs_lo: float, obs_hi: float) -> dict:
    """Redrock templates with ``n_poly`` rest-frame Legendre rows appended to every basis.

    The polynomials are scaled to the rest wavelengths the observed range
    ``[obs_lo, obs_hi]`` reaches over the template's redshifts (good conditioning);
    Redrock's negative-[OII] penalty sees the physical rows only.
    """
    from redrock.templates import Template

    out = {}
    for key, t in templates.items():
        zs = np.asarray(t.redshifts, dtype=np.float64)
        lo = max(float(t.wave.min()), obs_lo / (1 + float(zs.max())))
        hi = min(float(t.wave.max()), obs_hi / (1 + float(zs.min())))
        flux = np.vstack([t.flux, legendre_rows(t.wave, n_poly, lo, hi)])
        with contextlib.redirect_stdout(io.StringIO()):
            new = Template(spectype=t.template_type, redshifts=t.redshifts, wave=t.wave, flux=flux,
                           subtype=t.sub_type, method=t.method, igm_model=t.igm_model,
                           version=t.version)
        if hasattr(new, "OIItemplate"):
            new.OIItemplate[t.nbasis:] = 0.0
        out[key] = new
    return out


def common_range(templates: dict) -> tuple[float, float]:
    """Observed wavelengths every template covers at every redshift of its scan.

    Redrock rebins each template onto the spectrum's pixel edges at each trial redshift
    and refuses edges outside the template (``trapz_rebin``), so spectra are cut to this.
    """
    lo = max(float(t.wave.min()) * (1 + float(np.max(t.redshifts))) for t in templates.values())
    hi = min(float(t.wave.max()) * (1 + float(np.min(t.redshifts))) for t in templates.values())
    return lo, hi


def redrock_fit(wave, flux, ivar, bad, templates: dict, resolution) -> dict:
    """One spectrum through Redrock's ``zfind``: the best row (SPECTYPE, Z, ZERR, ZWARN, DELTACHI2).

    ``templates``: Redrock ``Template`` objects by name, read once; they are rebinned onto
    each spectrum's wavelength grid here. ``resolution``: the sparse resolution matrix.
    Redrock's progress output is swallowed.
    """
    from redrock.targets import DistTargetsCopy, Spectrum, Target
    from redrock.templates import DistTemplate
    from redrock.zfind import zfind

    w = np.ascontiguousarray(wave, dtype=np.float64)
    iv = np.where(bad | ~np.isfinite(flux) | ~np.isfinite(ivar), 0.0, ivar).astype(np.float64)
    f = np.where(iv > 0, flux, 0.0).astype(np.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        targets = DistTargetsCopy([Target(0, [Spectrum(w, f, iv, resolution, band="all")])])
        dtemplates = [DistTemplate(t, targets.wavegrids(), mp_procs=1) for t in templates.values()]
        _, zfit = zfind(targets, dtemplates, mp_procs=1, nminima=3)
    best = zfit[zfit["znum"] == 0][0]
    return {"spectype": str(best["spectype"]).strip(), "z": float(best["z"]),
            "z_err": float(best["zerr"]), "zwarn": int(best["zwarn"]), "deltachi2": float(best["deltachi2"])}


def guarded_redrock(item_id: str, pixels: list, templates: dict, resolution) -> dict:
    """:func:`redrock_fit`, a ValueError counted as a failed (catastrophic) row with the reason printed."""
    t0 = time.perf_counter()
    try:
        rr = redrock_fit(*pixels, templates, resolution)
    except ValueError as err:
        rr = {"spectype": "", "z": float("nan"), "z_err": float("nan"), "zwarn": -1,
              "deltachi2": float("nan")}
        print(f"Redrock failed on {item_id}: {err}")
    rr["seconds"] = time.perf_counter() - t0
    return rr


def fit_item(item: dict, keep: np.ndarray, fitter, rr_sets: dict, args) -> dict:
    """One spectrum through our fitter and both Redrock setups: its result row."""
    from omnispectra.redshift import ScanConfig

    pixels = [np.asarray(item[k])[keep] for k in ("wave", "flux", "ivar", "bad")]
    t0 = time.perf_counter()
    ours = fitter.fit(*pixels)
    t1 = time.perf_counter()
    n = int(keep.sum())
    row = {"id": item["id"], "survey": item["survey"], "cls": item["cls"], "z_ref": item["z_ref"],
           "os_spectype": ours.spectype, "os_z": ours.z, "os_z_err": ours.z_err,
           "os_deltachi2": ours.deltachi2, "os_flag": int(ours.flag), "os_seconds": t1 - t0}
    gauss = gaussian_resolution(n, args.resolution_sigma)
    rr = guarded_redrock(item["id"], pixels, rr_sets["rrdefault"], gauss)
    row.update({f"rrdefault_{k}": v for k, v in rr.items()})
    # fair setup: the file's LSF where it has one, the same negative-pixel mask as ours
    wdisp = file_wdisp(item["path"], item["row"], pixels[0])
    resolution = wdisp_resolution(wdisp) if wdisp is not None else gauss
    ivar = np.where(pixels[3], 0.0, pixels[2])
    clip = negative_pixel_mask(pixels[1], ivar, ScanConfig().negative_clip_sigma)
    fair = [pixels[0], pixels[1], pixels[2], pixels[3] | clip]
    rr = guarded_redrock(item["id"], fair, rr_sets["rrfair"], resolution)
    row.update({f"rrfair_{k}": v for k, v in rr.items()})
    row["rrfair_lsf"] = "wdisp" if wdisp is not None else f"gauss{args.resolution_sigma:g}px"
    row["rrfair_n_clipped"] = int(clip.sum())
    return row


def network_rows(items: list, fitter) -> list[dict]:
    """``omnispectra.classify(full=True)`` on the same pixels: class, its probability, z, deltachi2, flag."""
    import omnispectra

    arrays = [(w, f, np.where(b, 0.0, iv)) for w, f, iv, b in items]
    t0 = time.perf_counter()
    table = omnispectra.classify(arrays, templates=fitter, full=True, progress=False)
    dt = (time.perf_counter() - t0) / max(len(items), 1)
    return [{"net_spectype": str(r["class"]), "net_prob": float(r[f"prob_{str(r['class'])}"]),
             "net_z": float(r["z"]), "net_deltachi2": float(r["deltachi2"]), "net_flag": int(r["flag"]),
             "net_seconds": dt} for r in table]


def purity_completeness(correct: np.ndarray, confidence: np.ndarray, accepted: np.ndarray) -> dict:
    """Purity and completeness when rows are kept above each threshold of their own confidence.

    Parameters
    ----------
    correct : numpy.ndarray of bool
        The row's answer is right.
    confidence : numpy.ndarray of float
        The method's own confidence (higher = surer); NaN counts as the lowest.
    accepted : numpy.ndarray of bool
        Rows the method would ever hand out (``flag == 0`` / ``ZWARN == 0``).

    Returns
    -------
    dict
        ``threshold`` (the distinct confidences of accepted rows, decreasing), ``n_kept``,
        ``n_correct`` (kept and correct), ``completeness`` (``n_correct / n``) and ``purity``
        (``n_correct / n_kept``); at each threshold ``t`` a row is kept when accepted and
        ``confidence >= t``.
    """
    correct = np.asarray(correct, dtype=bool)
    accepted = np.asarray(accepted, dtype=bool)
    conf = np.nan_to_num(np.asarray(confidence, dtype=np.float64), nan=-np.inf)
    if not correct.shape == conf.shape == accepted.shape:
        raise ValueError("correct, confidence and accepted must have one shape")
    thresholds = np.unique(conf[accepted])[::-1]
    kept = accepted[None, :] & (conf[None, :] >= thresholds[:, None])
    n_kept = kept.sum(axis=1)
    n_correct = (kept & correct[None, :]).sum(axis=1)
    return {"threshold": thresholds, "n_kept": n_kept, "n_correct": n_correct,
            "completeness": n_correct / max(correct.size, 1),
            "purity": n_correct / np.maximum(n_kept, 1)}


def methods(rows: list[dict]) -> list[tuple[str, str, str, str, str, int]]:
    """``(label, prefix, flag column, confidence column, confidence name, ok value)`` per method present."""
    out = [("omnispectra RedshiftFitter", "os", "os_flag", "os_deltachi2", "deltachi2", 0),
           ("Redrock 0.21.0, default setup", "rrdefault", "rrdefault_zwarn", "rrdefault_deltachi2",
            "DELTACHI2", 0),
           ("Redrock 0.21.0, fair setup", "rrfair", "rrfair_zwarn", "rrfair_deltachi2", "DELTACHI2", 0)]
    if rows and "net_z" in rows[0]:
        out.insert(1, ("omnispectra classify --full", "net", "net_flag", "net_prob", "class probability", 0))
    return out


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows])


def summarize(rows: list[dict]) -> None:
    """Print class agreement, catastrophic rates (all, flag/ZWARN 0, per survey) and time per method."""
    from omnispectra.redshift import dz_over_1pz

    n = len(rows)
    z_ref, cls, surveys = column(rows, "z_ref"), column(rows, "cls"), column(rows, "survey")
    for name, tag, flag_col, _, _, ok_val in methods(rows):
        z = column(rows, f"{tag}_z")
        err = np.where(np.isfinite(z), dz_over_1pz(z, z_ref), np.inf)
        bad = err > CATASTROPHIC
        good = column(rows, flag_col) == ok_val
        spectype = column(rows, f"{tag}_spectype")
        sec = column(rows, f"{tag}_seconds")
        print(f"\n{name}:")
        print(f"  class agrees with the pipeline: {frac(int((spectype == cls).sum()), n)}")
        print(f"  catastrophic (|dz|/(1+z) > {CATASTROPHIC}): all {frac(int(bad.sum()), n)}; "
              f"among {flag_col} == 0 {frac(int((bad & good).sum()), int(good.sum()))}; "
              f"{flag_col} == 0 for {frac(int(good.sum()), n)}")
        for s in sorted(set(surveys)):
            m = surveys == s
            print(f"    [{s}] catastrophic {frac(int(bad[m].sum()), int(m.sum()))}; "
                  f"median |dz|/(1+z) {np.median(err[m]):.2e}")
        print(f"  seconds per spectrum: median {np.median(sec):.2f}, max {sec.max():.2f}")


def curves_table(rows: list[dict], command: str):
    """The purity-completeness curves of every method, one row per (method, threshold), as a Table."""
    from astropy.table import Table, vstack

    from omnispectra.redshift import dz_over_1pz

    z_ref = column(rows, "z_ref")
    parts = []
    for name, tag, flag_col, conf_col, conf_name, ok_val in methods(rows):
        z = column(rows, f"{tag}_z")
        correct = np.where(np.isfinite(z), dz_over_1pz(z, z_ref), np.inf) <= CATASTROPHIC
        curve = purity_completeness(correct, column(rows, conf_col), column(rows, flag_col) == ok_val)
        part = Table(curve)
        part.add_column([name] * len(part), name="method", index=0)
        part.add_column([conf_name] * len(part), name="confidence", index=1)
        parts.append(part)
    table = vstack(parts)
    table.meta.update({"command": command, "n_spectra": len(rows), "correct": f"|dz|/(1+z) <= {CATASTROPHIC}",
                       "kept": "flag/ZWARN == 0 and confidence >= threshold"})
    return table


def plot_curves(table, path: Path) -> None:
    """Purity against completeness, one line per method, the flag/ZWARN == 0 point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from omnispectra.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name in dict.fromkeys(table["method"]):
        part = table[table["method"] == name]
        line, = ax.step(part["completeness"], part["purity"], where="post",
                        label=f"{name} ({part['confidence'][0]})")
        ax.plot(part["completeness"][-1], part["purity"][-1], "o", color=line.get_color())
    ax.set_xlabel("completeness (correct and kept / all)")
    ax.set_ylabel("purity (correct / kept)")
    ax.set_title(f"|dz|/(1+z) <= {CATASTROPHIC}, N = {table.meta['n_spectra']}; dot: flag/ZWARN == 0")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_outputs(rows: list[dict], out_dir: Path, command: str) -> None:
    """Per-spectrum ECSV, purity-completeness ECSV and PNG under ``out_dir`` (atomic writes)."""
    from astropy.table import Table

    from omnispectra.fileio import atomic_write

    per = Table(rows=[list(r.values()) for r in rows], names=list(rows[0]))
    per.meta.update({"command": command, "setups": SETUPS})
    table = curves_table(rows, command)
    with atomic_write(out_dir / "compare_redrock.ecsv") as tmp:
        per.write(tmp, format="ascii.ecsv")
    with atomic_write(out_dir / "compare_redrock_curves.ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv")
    plot_curves(table, out_dir / "compare_redrock_curves.png")
    print(f"\nwrote {out_dir}/compare_redrock.ecsv, compare_redrock_curves.ecsv, compare_redrock_curves.png")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--templates", default=None, help="RedshiftFitter templates (default <data>/templates)")
    ap.add_argument("--redrock-templates", default=None, help="default <data>/templates/redrock")
    ap.add_argument("--resolution-sigma", type=float, default=1.0,
                    help="Gaussian LSF of Redrock in pixels (default setup; fair setup without wdisp)")
    ap.add_argument("--max", type=int, default=None, help="at most this many spectra (quick runs)")
    ap.add_argument("--max-per-survey", type=int, default=None,
                    help="at most this many spectra per survey (Redrock takes seconds per spectrum)")
    ap.add_argument("--network", action="store_true",
                    help="also score omnispectra.classify(full=True) (bundled model, class probability)")
    ap.add_argument("--out-dir", default=None,
                    help="write compare_redrock.ecsv, compare_redrock_curves.ecsv and .png here")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    import sys

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from eval_redshift import labelled_spectra  # noqa: PLC0415 - the sibling script, same spectra
    from redrock.templates import load_templates

    from omnispectra.redshift import RedshiftFitter, ScanConfig

    data = Path(args.data)
    fitter = RedshiftFitter(directory=args.templates or data / "templates")
    rows, per_survey, kept_pixels = [], {}, []
    with tempfile.TemporaryDirectory(prefix="omnispectra-redrock-") as tmp:
        listing = template_list(Path(args.redrock_templates or data / "templates" / "redrock"), Path(tmp))
        with contextlib.redirect_stdout(io.StringIO()):
            plain = load_templates(str(listing), asdict=True)
        lo, hi = common_range(plain)
        rr_sets = {"rrdefault": plain, "rrfair": with_legendre(plain, ScanConfig().n_poly, lo, hi)}
        print(f"spectra cut to {lo:.0f}-{hi:.0f} A (covered by every Redrock template at every redshift)")
        for item in labelled_spectra(data, max_stars=0):
            if item["cls"] == "STAR" or (args.max_per_survey is not None
                                         and per_survey.get(item["survey"], 0) >= args.max_per_survey):
                continue
            per_survey[item["survey"]] = per_survey.get(item["survey"], 0) + 1
            if args.max is not None and len(rows) >= args.max:
                break
            # edge pixels 1 % inside, against rounding in Redrock's edge computation
            keep = (item["wave"] > lo * 1.01) & (item["wave"] < hi * 0.99)
            if keep.sum() < 100:
                continue
            rows.append(fit_item(item, keep, fitter, rr_sets, args))
            kept_pixels.append([np.asarray(item[k])[keep] for k in ("wave", "flux", "ivar", "bad")])
    if args.network and rows:
        for row, net in zip(rows, network_rows(kept_pixels, fitter), strict=True):
            row.update(net)
    print(f"\nGALAXY/QSO spectra with a pipeline z fitted by all: N = {len(rows)}")
    if not rows:
        return
    summarize(rows)
    if args.out_dir:
        write_outputs(rows, Path(args.out_dir), " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
