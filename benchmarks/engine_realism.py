"""Realism of the data engine, measured on real spectra (issue 14, part 2).

(a) Sim-to-real transfer. For each of two folds of the object-hash split
    (:mod:`omnispectra.splits`, ``fraction=0.5``, seed 0), an engine whose noise donors
    and quasar-coefficient fits come only from one side generates ``--n-engine``
    spectra; a small 1-D CNN on a log-lambda copy (class + redshift bins) is trained on
    those engine spectra only and scored on the real labelled SDSS/BOSS/eBOSS/SEGUE,
    LAMOST LRS and 6dFGS spectra of the *other* side. Every labelled real spectrum is
    scored once, by a model that never saw it, its object, or any spectrum of its side.
    Reported: recall per class with N and Wilson 95% intervals, macro recall, accuracy
    on held-out engine spectra, and for galaxies/quasars the fraction within
    |dz|/(1+z) < 0.01, from the CNN alone and after a local chi-square refinement with
    the Redrock templates (+-0.03 in ln(1+z) around the CNN redshift).
(b) Per survey and class with >= 20 real spectra: a fixed logistic regression
    (standardized features, C=0.1) tells engine from real on the CNN input, with 5-fold
    grouped cross-validation (engine spectra grouped with their donor's object) and a
    bootstrap 95% interval on the ROC AUC.
(c) Figures: engine and real spectra side by side per survey and class
    (``docs/_static/engine_<survey>.png``).

Label policy: file labels as they are (SDSS pipeline CLASS; the plate-7102 BOSS spectra
use their visual-inspection class; 6dFGS are GALAXY, with redshifts used only at
QUALITY >= 3). Low-redshift broad-line AGN labelled QSO stay QSO; their recall is also
listed separately (z < 0.3).

For uncalibrated surveys (6dFGS) each fold's engine estimates the instrument response
from its own side's labelled galaxies (:meth:`omnispectra.engine.Engine.fit_responses`);
the refinement multiplies the templates by that same response. Half of the engine
galaxies on a survey's grids take redshifts of that survey's labelled galaxies of the
donor side (:meth:`omnispectra.engine.Engine.fit_redshift_priors`).

Run (about 15 minutes on one thread with ``--n-engine 20000 --epochs 8``)::

    OMP_NUM_THREADS=1 python benchmarks/engine_realism.py --data ../shared/data --threads 1 \
        --n-engine 20000 --epochs 8 --out benchmarks/results/engine_realism --figures docs/_static
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import pickle
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter

from omnispectra import splits
from omnispectra.engine import EngineDataset
from omnispectra.engine.donors import donor_from_spectrum
from omnispectra.engine.generator import Engine, EngineConfig
from omnispectra.evaluation.stats import wilson_interval
from omnispectra.templates.library import load_library
from omnispectra.templates.resample import rebin

log = logging.getLogger("engine_realism")

CLASSES = ("GALAXY", "QSO", "STAR")
TEST_SURVEYS = ("sdss", "boss", "eboss", "segue", "lamost_lrs", "6dfgs")
LOGLAM = np.arange(np.log10(3550.0), np.log10(10400.0), 8e-4)
GRID = 10 ** LOGLAM
U_MAX = np.log(5.1)
N_ZBINS = 400
U_EDGES = np.linspace(-0.005, U_MAX, N_ZBINS + 1)
U_CENTRES = 0.5 * (U_EDGES[1:] + U_EDGES[:-1])


# ----------------------------------------------------------------------------- data
def load_real(data: Path, cache: Path | None) -> list:
    """Donor objects for every readable optical spectrum, with labels per the policy."""
    if cache and cache.exists():
        return pickle.loads(cache.read_bytes())
    from omnispectra.io import iter_spectra

    six = {}
    with open(data / "6dfgs" / "index.csv") as fh:
        for row in csv.DictReader(fh):
            six[Path(row["file"]).name.split(".fits")[0]] = row
    vi = {}
    with open(data / "sdss" / "squeze" / "index.csv") as fh:
        for row in csv.DictReader(fh):
            vi[Path(row["file"]).name.split(".fits")[0]] = row["CLASS"]
    folders = ["sdss", "lamost", "6dfgs", "desi", "manga", "legac", "vimos", "miles", "xshooter"]
    it = iter_spectra([data / f for f in folders], on_error="skip")
    donors = []
    for s in it:
        src = str(s.meta.get("source_file", ""))
        survey = "6dfgs" if "/6dfgs/" in src else None
        d = donor_from_spectrum(s, survey=survey)
        if d.survey == "6dfgs":
            row = six.get(d.id)
            if row:
                d.labels = {"class": row["CLASS"]}
                if row["QUALITY"] and int(row["QUALITY"]) >= 3 and row["Z"]:
                    d.labels["z"] = float(row["Z"])
        if d.id in vi:
            d.labels["class"] = vi[d.id]
        if d.valid.sum() > 100:
            donors.append(d)
    failures = Counter(str(Path(f.path).parent.relative_to(data)) for f in it.failures)
    result = (donors, dict(failures))
    if cache:
        cache.write_bytes(pickle.dumps(result))
    return result


def to_grid(wave, flux, ivar, mask):
    """CNN input (2, n): robustly normalized flux and validity on the common log grid."""
    valid = ((ivar > 0) & ~mask & np.isfinite(flux)).astype(np.float64)
    f = np.where(valid > 0, flux, 0.0)
    num = rebin(wave, f, GRID)
    den = rebin(wave, valid, GRID)
    ok = np.isfinite(den) & (den > 0.5)
    x = np.zeros((2, GRID.size), np.float32)
    if ok.sum() < 10:
        return x
    g = num[ok] / den[ok]
    # continuum-normalized: divide by a running median (51 px = 0.04 dex), so the
    # flux calibration (absent in 6dFGS, which is in counts) cannot be a shortcut
    filled = np.interp(np.arange(GRID.size), np.flatnonzero(ok), g)
    cont = median_filter(filled, size=51, mode="nearest")
    scale = np.median(np.abs(g)) + 1e-12
    cont = np.where(np.abs(cont) > 0.05 * scale, cont, np.sign(cont + 1e-30) * 0.05 * scale)
    x[0, ok] = np.clip(g / cont[ok] - 1.0, -10, 10)
    x[1, ok] = 1.0
    return x


# ----------------------------------------------------------------------------- model
def make_cnn():
    import torch.nn as nn

    chans = [2, 16, 32, 48, 64]
    layers = []
    for i, k in enumerate((9, 7, 5, 5)):
        layers += [nn.Conv1d(chans[i], chans[i + 1], k, padding=k // 2), nn.GELU(), nn.MaxPool1d(2)]
    n_out = GRID.size
    for _ in range(4):
        n_out //= 2

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * n_out, 128), nn.GELU(),
                                       nn.Dropout(0.2))
            self.cls = nn.Linear(128, len(CLASSES))
            self.z = nn.Linear(128, N_ZBINS)

        def forward(self, x):
            h = self.trunk(self.features(x))
            return self.cls(h), self.z(h)

    return CNN()


def train_cnn(x, y, u, epochs, seed, log_every=1):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = make_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    n = len(x)
    steps = epochs * ((n + 255) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    zb = torch.from_numpy(np.clip(np.searchsorted(U_EDGES, u) - 1, 0, N_ZBINS - 1))
    has_z = torch.from_numpy(np.isfinite(u) & (y != CLASSES.index("STAR")))
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, 256):
            idx = perm[i:i + 256]
            xb = xt[idx].float()
            lc, lz = model(xb)
            loss = F.cross_entropy(lc, yt[idx])
            m = has_z[idx]
            if m.any():
                loss = loss + F.cross_entropy(lz[m], zb[idx][m])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        if (ep + 1) % log_every == 0:
            log.info("epoch %d loss %.3f", ep + 1, tot / n)
    return model


def predict(model, x):
    import torch

    model.eval()
    probs, zs = [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            lc, lz = model(torch.from_numpy(x[i:i + 256]).float())
            probs.append(torch.softmax(lc, 1).numpy())
            p = torch.softmax(lz, 1).numpy()
            for row in p:
                cands = []
                for _ in range(2):  # the best peak, then the best outside +-0.03 of it
                    kk = int(row.argmax())
                    lo, hi = max(kk - 2, 0), min(kk + 3, N_ZBINS)
                    weight = max(np.sum(row[lo:hi]), 1e-12)
                    cands.append(float(np.sum(row[lo:hi] * U_CENTRES[lo:hi]) / weight))
                    row = np.where(np.abs(U_CENTRES - cands[-1]) < 0.03, 0.0, row)
                zs.append(np.expm1(np.array(cands)))
    return np.concatenate(probs), np.array(zs)


# ----------------------------------------------------------------------------- z refinement
_BINNED: dict = {}


def _binned(t):
    """The template's basis bin-averaged to a uniform 1e-4 log10 grid (then interpolated)."""
    if t.name not in _BINNED:
        factor = max(int(round(1e-4 / t.dloglam)), 1)
        n = t.n_pix // factor * factor
        _BINNED[t.name] = (t.loglam[:n].reshape(-1, factor).mean(1),
                           t.basis[:, :n].reshape(t.basis.shape[0], -1, factor).mean(2))
    return _BINNED[t.name]


def _chi2(d, t, z, poly, response=None):
    ll, basis = _binned(t)
    rest = d.wave / (1 + z)
    r0, r1 = 10 ** ll[0], 10 ** ll[-1]
    blue_end = max(r0 * 1.01, 1216.0 * 1.02 if t.spectype == "QSO" else 0.0)
    use = d.valid & (rest > blue_end) & (rest < r1 / 1.01)
    if use.sum() < 200:
        return np.inf
    lr = np.log10(rest[use])
    m = np.stack([np.interp(lr, ll, b) for b in basis])
    if response is not None:  # uncalibrated survey: the templates seen through its response
        m = m * response[use]
    w = np.sqrt(d.ivar[use])
    a = np.vstack([m, poly[:, use]]).T * w[:, None]
    b = d.flux[use] * w
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    resid = a @ coef - b
    keep = np.abs(resid) < 5 * 1.4826 * np.median(np.abs(resid)) + 1e-12  # clip unmasked spikes once
    coef, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
    return float(np.sum((a[keep] @ coef - b[keep]) ** 2)) / keep.sum()


def refine_z(d, z_candidates, spectype, library, half_width=0.03, response=None):
    """Chi-square scan of the Redrock bases (+ a quadratic in log wavelength) around each
    CNN candidate: steps of 0.002 in ln(1+z) over +-half_width, then 0.0002 around the
    best; residuals beyond 5 robust sigma are clipped once. The lowest chi-square wins.
    ``response`` (on ``d.wave``): the training side's fitted instrument response of an
    uncalibrated survey, multiplied into the templates."""
    x = np.log(d.wave)
    x = (x - x.mean()) / np.ptp(x)
    poly = np.stack([np.ones_like(x), x, x ** 2])
    best = (np.inf, z_candidates[0])
    for z0 in z_candidates:
        best = min(best, _refine_one(d, z0, spectype, library, half_width, poly, response))
    return best[1]


def _refine_one(d, z0, spectype, library, half_width, poly, response=None):
    if spectype == "GALAXY":
        names = ["redrock:GALAXY"]
    else:
        names = (["redrock:QSO-LOZ"] if z0 < 1.7 else []) + (["redrock:QSO-HIZ"] if z0 > 1.3 else [])
    u0 = np.log1p(max(z0, 0.0))
    best = (np.inf, z0)
    for name in names:
        t = library.get(name)
        centre = u0  # the coarse scan is centred on the candidate, the fine one on the coarse best
        for step, hw in ((0.002, half_width), (0.0002, 0.002)):
            us = np.arange(centre - hw, centre + hw + step / 2, step)
            chis = np.array([_chi2(d, t, np.expm1(u), poly, response) if np.expm1(u) > -0.005 else np.inf
                             for u in us])
            k = int(np.argmin(chis))
            zb = float(np.expm1(us[k]))
            centre = np.log1p(zb)
            if not np.isfinite(chis[k]):
                break
        else:
            if chis[k] < best[0]:
                best = (float(chis[k]), zb)
    return best


# ----------------------------------------------------------------------------- statistics
def discriminator_auc(x_real, g_real, x_eng, g_eng, seed=0, n_boot=1000):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([x_real, x_eng])
    y = np.concatenate([np.zeros(len(x_real)), np.ones(len(x_eng))])
    groups = np.concatenate([g_real, g_eng])
    score = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(x[tr], y[tr])
        score[te] = clf.predict_proba(x[te])[:, 1]
    auc = roc_auc_score(y, score)
    rng = np.random.default_rng(seed)
    boots = []
    ug = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in ug}
    for _ in range(n_boot):  # resample groups (objects), not spectra
        idx = np.concatenate([members[g] for g in rng.choice(ug, ug.size)])
        if len(np.unique(y[idx])) == 2:
            boots.append(roc_auc_score(y[idx], score[idx]))
    return float(auc), (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))


# ----------------------------------------------------------------------------- figures
def survey_figure(survey, real, engine_samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c for c in CLASSES if any(s.labels["class"] == c for s in engine_samples)]
    fig, axes = plt.subplots(len(classes), 2, figsize=(9, 1.9 * len(classes)), squeeze=False, sharex=True)
    for r, c in enumerate(classes):
        reals = [d for d in real if d.labels.get("class") == c]
        engs = [s for s in engine_samples if s.labels["class"] == c]
        pair = ((reals[0] if reals else None, "real"), (engs[0] if engs else None, "engine"))
        for col, (item, kind) in enumerate(pair):
            ax = axes[r, col]
            if item is None:
                ax.text(0.5, 0.5, f"no real {c} in {survey}", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            wave, flux = item.wave, item.flux
            ok = ~item.mask
            lo, hi = np.percentile(flux[ok], [1, 99]) if ok.any() else (0, 1)
            ax.plot(wave, np.where(ok, flux, np.nan), lw=0.4, color="k" if kind == "real" else "C0")
            ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo))
            z = item.labels.get("z")
            sub = item.labels.get("subclass") or ""
            title = f"{kind}: {c} {sub} z={z:.3f}" if z is not None else f"{kind}: {c} {sub}"
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("wavelength [A]", fontsize=8)
    fig.suptitle(f"{survey}: real (left) and engine (right) spectra", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def render_rst(results: dict, command: str) -> str:
    """The docs include (``docs/engine_results.inc``) from the results JSON."""
    L = ["Measured with::", "", f"    {command}", ""]
    L += [f"{results['n_real_readable']} real spectra were readable; unreadable files per folder: "
          f"``{results['unreadable_files']}``.", ""]
    L += ["**(a) Sim-to-real transfer.** A 1-D CNN trained on engine spectra only (two folds of the "
          "object-hash split at 0.5: donors and quasar fits from one side, scored on the other), on "
          "the real labelled SDSS/BOSS/eBOSS/SEGUE, LAMOST LRS and 6dFGS spectra:", ""]
    L += [".. list-table::", "   :header-rows: 1", "", "   * - class", "     - N", "     - correct",
          "     - recall", "     - Wilson 95%"]
    for c in CLASSES:
        r = results["recall"][c]
        lo, hi = r["wilson95"]
        L += [f"   * - {c}", f"     - {r['n']}", f"     - {r['correct']}", f"     - {r['recall']:.3f}",
              f"     - [{lo:.3f}, {hi:.3f}]"]
    L += ["", f"Macro recall **{results['macro_recall']:.3f}**, accuracy {results['accuracy']:.3f}; "
          f"accuracy on held-out engine spectra (per fold): "
          f"{', '.join(f'{a:.3f}' for a in results['engine_holdout_accuracy'])}. "
          f"Low-z (z < 0.3) objects labelled QSO: {results['low_z_qso']['correct']} of "
          f"{results['low_z_qso']['n']} called QSO.", ""]
    rows = [r for r in results.get("per_spectrum", []) if r["survey"] != "6dfgs"]
    if rows:
        parts = []
        for c in CLASSES:
            n = sum(r["true"] == c for r in rows)
            k = sum(r["true"] == c and r["pred"] == c for r in rows)
            lo, hi = wilson_interval(k, n)
            parts.append((c, k, n, lo, hi))
        macro = np.mean([k / n for _, k, n, _, _ in parts if n])
        L += ["Without 6dFGS (SDSS/BOSS/eBOSS/SEGUE and LAMOST only): " + ", ".join(
            f"{c} {k}/{n} ({k / n:.3f}, Wilson [{lo:.3f}, {hi:.3f}])" for c, k, n, lo, hi in parts)
            + f"; macro recall {macro:.3f}.", ""]
    for fold, side in ((0, "validation"), (1, "training")):
        rows = [r for r in results.get("per_spectrum", []) if r["fold"] == fold]
        if not rows:
            continue
        parts = []
        for c in CLASSES:
            n = sum(r["true"] == c for r in rows)
            k = sum(r["true"] == c and r["pred"] == c for r in rows)
            parts.append((c, k, n, *wilson_interval(k, n)))
        macro = np.mean([k / n for _, k, n, _, _ in parts if n])
        L += [f"Fold {fold} alone (scored on the {side} side of the split): " + ", ".join(
            f"{c} {k}/{n} (Wilson [{lo:.3f}, {hi:.3f}])" for c, k, n, lo, hi in parts)
            + f"; macro recall {macro:.3f}.", ""]
    L += ["Per survey and class (correct / N): " + ", ".join(
        f"{k} {v['correct']}/{v['n']}" for k, v in results["by_survey_class"].items()) + ".", ""]
    z = results["redshift"]
    lo, hi = z["refined_wilson95"]
    clo, chi = z.get("cnn_wilson95", (float("nan"), float("nan")))
    L += [f"**Redshift** of real galaxies and quasars with a redshift label (N = {z['n']}): "
          f"``|dz|/(1+z)`` < 0.01 for **{z['cnn_within_0.01']} from the CNN alone "
          f"({z['cnn_fraction']:.3f}, Wilson [{clo:.3f}, {chi:.3f}])** and "
          f"**{z['refined_within_0.01']} ({z['refined_fraction']:.3f}, Wilson [{lo:.3f}, {hi:.3f}])** "
          f"after the local chi-square refinement with the Redrock bases "
          f"(median ``|dz|/(1+z)`` {z['refined_median_dz']:.4f}). "
          f"By class: "
          + ", ".join(f"{c} {v['refined_within_0.01']}/{v['n']}" for c, v in z["by_class"].items())
          + ". Without 6dFGS: "
          f"{z['without_6dfgs']['refined_within_0.01']}/{z['without_6dfgs']['n']} (CNN alone "
          f"{z['without_6dfgs']['cnn_within_0.01']}).", ""]
    if "by_group" in z:
        L += [".. list-table:: Redshift within 0.01 per survey/class and per fold "
              "(fold 0 is scored on the validation side, fold 1 on the training side)",
              "   :header-rows: 1", "", "   * - group", "     - N", "     - CNN", "     - CNN Wilson 95%",
              "     - refined", "     - refined Wilson 95%"]
        for k, v in z["by_group"].items():
            L += [f"   * - {k}", f"     - {v['n']}", f"     - {v['cnn_within_0.01']}",
                  f"     - [{v['cnn_wilson95'][0]:.3f}, {v['cnn_wilson95'][1]:.3f}]",
                  f"     - {v['refined_within_0.01']}",
                  f"     - [{v['refined_wilson95'][0]:.3f}, {v['refined_wilson95'][1]:.3f}]"]
        L += [""]
    misses = results.get("redshift_misses", [])
    if misses:
        L += ["Redshift misses (CNN or refined ``|dz|/(1+z)`` >= 0.01): " + "; ".join(
            f"{m['survey']} {m['id']} ({m['true']}, called {m['pred']}) z {m['z']:.4f}, "
            f"CNN {m['z_cnn']:.4f}, refined {m['z_refined']:.4f}, fold {m['fold']}"
            for m in misses) + ".", ""]
    L += ["**(b) Engine-vs-real discriminator** (logistic regression, C = 0.1, on the CNN input; 5-fold "
          "grouped CV; bootstrap over objects). 0.5 = indistinguishable:", ""]
    L += [".. list-table::", "   :header-rows: 1", "", "   * - survey/class", "     - real", "     - engine",
          "     - ROC AUC", "     - bootstrap 95%"]
    for k, v in results["discriminator"].items():
        L += [f"   * - {k}", f"     - {v['n_real']}", f"     - {v['n_engine']}", f"     - {v['auc']:.3f}",
              f"     - [{v['bootstrap95'][0]:.3f}, {v['bootstrap95'][1]:.3f}]"]
    L += ["", "**(c) Engine and real spectra side by side** (first real spectrum of each class, first engine "
          "spectrum of each class on that survey's donors):", ""]
    for f in results["figures"]:
        L += [f".. image:: _static/{Path(f).name}", "   :width: 100%", ""]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_realism"))
    ap.add_argument("--figures", type=Path, default=Path("docs/_static"))
    ap.add_argument("--cache", type=Path, default=None, help="pickle of the loaded real spectra")
    ap.add_argument("--n-engine", type=int, default=15000, help="engine spectra per fold")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folds", type=int, default=2, choices=(1, 2))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rst", type=Path, default=Path("docs/engine_results.inc"))
    ap.add_argument("--render-only", action="store_true", help="rewrite --rst from the results JSON")
    args = ap.parse_args(argv)
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/engine_realism.py "
               + " ".join(argv or sys.argv[1:]))
    if args.render_only:
        results = json.loads(args.out.with_suffix(".json").read_text())
        args.rst.write_text(render_rst(results, results.get("command", command)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    donors_all, failures = load_real(args.data, args.cache)
    log.info("%d real spectra readable; unreadable per folder: %s", len(donors_all), failures)
    library = load_library(args.data / "templates")
    side_b = splits.is_validation([d.object_id for d in donors_all], 0.5, args.seed)
    labelled = [i for i, d in enumerate(donors_all)
                if d.survey in TEST_SURVEYS and d.labels.get("class") in CLASSES]
    results = {"n_real_readable": len(donors_all), "unreadable_files": failures, "folds": []}
    per_spec = []  # (index, true, pred, z_true, z_cnn, z_ref)
    engine_by_survey = defaultdict(list)
    eng_x_by_key, eng_g_by_key = defaultdict(list), defaultdict(list)
    engine_acc = []
    for fold in range(args.folds):
        donor_side = side_b if fold == 1 else ~side_b
        donors = [d for d, s in zip(donors_all, donor_side, strict=True) if s and d.survey in TEST_SURVEYS]
        test = [i for i in labelled if not donor_side[i]]
        eng = Engine(library, donors, EngineConfig())
        fits_ = eng.fit_quasars([d for d in donors if d.labels.get("class") == "QSO"])
        galaxies = [d for d in donors if d.labels.get("class") == "GALAXY"]
        responses = eng.fit_responses(galaxies)
        z_priors = eng.fit_redshift_priors(galaxies)
        fitted_resp = {k: (v.n_donors, round(v.tilt_sigma, 3)) for k, v in eng.responses.items()}
        log.info("fold %d: %d donors, %d test spectra, QSO fits %s, responses %s", fold, len(donors),
                 len(test), fits_, fitted_resp)
        ds = EngineDataset(eng, args.n_engine, seed=1000 * args.seed + fold)
        xs, ys, us = [], [], []
        t1 = time.time()
        for i in range(args.n_engine):
            s = ds[i]
            xs.append(to_grid(s.wave, s.flux, s.ivar, s.mask))
            ys.append(CLASSES.index(s.labels["class"]))
            us.append(np.log1p(s.labels["z"]) if s.labels["class"] != "STAR" else np.nan)
            key = (s.meta["survey"], s.labels["class"])
            if len(eng_x_by_key[key]) < 300:
                eng_x_by_key[key].append(xs[-1])
                donor_obj = next(d.object_id for d in donors if d.id == s.meta["donor_id"])
                eng_g_by_key[key].append(splits.canonical_object_id(donor_obj))
            if len(engine_by_survey[s.meta["survey"]]) < 30:
                engine_by_survey[s.meta["survey"]].append(s)
        log.info("fold %d: generated %d in %.0f s", fold, args.n_engine, time.time() - t1)
        x, y, u = np.stack(xs), np.array(ys), np.array(us)
        n_hold = args.n_engine // 10
        model = train_cnn(x[n_hold:], y[n_hold:], u[n_hold:], args.epochs, args.seed + fold)
        p_hold, _ = predict(model, x[:n_hold])
        engine_acc.append(float(np.mean(p_hold.argmax(1) == y[:n_hold])))
        xr = np.stack([to_grid(donors_all[i].wave, donors_all[i].flux, donors_all[i].ivar, donors_all[i].mask)
                       for i in test])
        p, zc = predict(model, xr)
        for i, pi, zi in zip(test, p, zc, strict=True):
            d = donors_all[i]
            pred = CLASSES[int(pi.argmax())]
            zt = d.labels.get("z")
            zr = None
            if d.labels["class"] in ("GALAXY", "QSO") and zt is not None:
                cls_for_z = pred if pred != "STAR" else ("QSO" if pi[1] > pi[0] else "GALAXY")
                fitted = eng.responses.get(d.survey)
                zr = refine_z(d, [float(v) for v in zi], cls_for_z, library,
                              response=None if fitted is None else fitted.on(d.wave))
            per_spec.append((i, d.labels["class"], pred, zt, float(zi[0]), zr, fold))
        results["folds"].append({"fold": fold, "donors": len(donors), "test": len(test), "qso_fits": fits_,
                                 "responses": {k: {"n_donors": v.n_donors, "tilt_sigma": v.tilt_sigma}
                                               for k, v in eng.responses.items()},
                                 "response_fits": responses, "galaxy_z_prior_counts": z_priors,
                                 "engine_holdout_accuracy": engine_acc[-1]})
        log.info("fold %d done (%.0f s so far)", fold, time.time() - t0)

    # ---- (a) transfer metrics
    rec = {}
    for c in CLASSES:
        rows = [r for r in per_spec if r[1] == c]
        k = sum(r[2] == c for r in rows)
        rec[c] = {"n": len(rows), "correct": k, "recall": k / len(rows) if rows else float("nan"),
                  "wilson95": wilson_interval(k, len(rows))}
    results["recall"] = rec
    results["macro_recall"] = float(np.mean([rec[c]["recall"] for c in CLASSES if rec[c]["n"]]))
    results["accuracy"] = float(np.mean([r[1] == r[2] for r in per_spec]))
    results["engine_holdout_accuracy"] = engine_acc
    by_survey = defaultdict(lambda: [0, 0])
    for r in per_spec:
        key = f"{donors_all[r[0]].survey}/{r[1]}"
        by_survey[key][0] += r[1] == r[2]
        by_survey[key][1] += 1
    results["by_survey_class"] = {k: {"correct": v[0], "n": v[1]} for k, v in sorted(by_survey.items())}
    lowz = [r for r in per_spec if r[1] == "QSO" and r[3] is not None and r[3] < 0.3]
    results["low_z_qso"] = {"n": len(lowz), "correct": sum(r[2] == "QSO" for r in lowz)}
    zrows = [r for r in per_spec if r[1] in ("GALAXY", "QSO") and r[3] is not None]
    dz_cnn = np.array([abs(r[4] - r[3]) / (1 + r[3]) for r in zrows])
    dz_ref = np.array([abs(r[5] - r[3]) / (1 + r[3]) for r in zrows])
    results["redshift"] = {
        "n": len(zrows),
        "cnn_within_0.01": int(np.sum(dz_cnn < 0.01)), "refined_within_0.01": int(np.sum(dz_ref < 0.01)),
        "cnn_fraction": float(np.mean(dz_cnn < 0.01)), "refined_fraction": float(np.mean(dz_ref < 0.01)),
        "refined_wilson95": wilson_interval(int(np.sum(dz_ref < 0.01)), len(zrows)),
        "refined_median_dz": float(np.median(dz_ref)), "cnn_median_dz": float(np.median(dz_cnn)),
        "by_class": {c: {"n": int(sum(r[1] == c for r in zrows)),
                         "refined_within_0.01": int(sum((r[1] == c) and d < 0.01
                                                        for r, d in zip(zrows, dz_ref, strict=True)))}
                     for c in ("GALAXY", "QSO")},
    }
    no6 = [k for k, r in enumerate(zrows) if donors_all[r[0]].survey != "6dfgs"]
    results["redshift"]["without_6dfgs"] = {"n": len(no6),
                                            "refined_within_0.01": int(np.sum(dz_ref[no6] < 0.01)),
                                            "cnn_within_0.01": int(np.sum(dz_cnn[no6] < 0.01))}
    within_cnn, within_ref = dz_cnn < 0.01, dz_ref < 0.01
    groups = defaultdict(list)
    for k, r in enumerate(zrows):
        groups[f"{donors_all[r[0]].survey}/{r[1]}"].append(k)
        groups[f"fold {r[6]}"].append(k)  # fold 0 is scored on the validation side
    results["redshift"]["by_group"] = {
        key: {"n": len(ks), "cnn_within_0.01": int(within_cnn[ks].sum()),
              "cnn_wilson95": wilson_interval(int(within_cnn[ks].sum()), len(ks)),
              "refined_within_0.01": int(within_ref[ks].sum()),
              "refined_wilson95": wilson_interval(int(within_ref[ks].sum()), len(ks))}
        for key, ks in sorted(groups.items())}
    results["redshift"]["cnn_wilson95"] = wilson_interval(int(within_cnn.sum()), len(zrows))
    results["redshift_misses"] = [
        {"id": donors_all[r[0]].id, "survey": donors_all[r[0]].survey, "true": r[1], "pred": r[2], "z": r[3],
         "z_cnn": r[4], "z_refined": r[5], "fold": r[6]}
        for k, r in enumerate(zrows) if not (within_cnn[k] and within_ref[k])]
    results["per_spectrum"] = [{"id": donors_all[r[0]].id, "survey": donors_all[r[0]].survey, "true": r[1],
                                "pred": r[2], "z": r[3], "z_cnn": r[4], "z_refined": r[5], "fold": r[6]}
                               for r in per_spec]
    results["misclassified"] = [{"id": donors_all[r[0]].id, "survey": donors_all[r[0]].survey, "true": r[1],
                                 "pred": r[2], "z": r[3]} for r in per_spec if r[1] != r[2]]

    # ---- (b) discriminators
    disc = {}
    real_by_key = defaultdict(list)
    for i, d in enumerate(donors_all):
        if d.survey in TEST_SURVEYS and d.labels.get("class") in CLASSES:
            real_by_key[(d.survey, d.labels["class"])].append(i)
    for key, idx in sorted(real_by_key.items()):
        if len(idx) < 20 or len(eng_x_by_key.get(key, [])) < 20:
            continue
        xr = np.stack([to_grid(donors_all[i].wave, donors_all[i].flux, donors_all[i].ivar, donors_all[i].mask)
                       for i in idx])
        xe = np.stack(eng_x_by_key[key])
        keep = (xr[:, 1].mean(0) > 0.5) & (xe[:, 1].mean(0) > 0.5)  # pixels both mostly cover
        feats_r, feats_e = xr[:, 0][:, keep], xe[:, 0][:, keep]
        g_r = np.array([splits.canonical_object_id(donors_all[i].object_id) for i in idx])
        g_e = np.array(eng_g_by_key[key])
        auc, ci = discriminator_auc(feats_r, g_r, feats_e, g_e, seed=args.seed)
        disc[f"{key[0]}/{key[1]}"] = {"n_real": len(idx), "n_engine": len(feats_e), "auc": auc,
                                       "bootstrap95": ci}
        log.info("discriminator %s: AUC %.3f [%.3f, %.3f]", key, auc, *ci)
    results["discriminator"] = disc

    # ---- (c) figures
    figs = []
    for survey, samples in sorted(engine_by_survey.items()):
        real = [d for d in donors_all if d.survey == survey and d.labels.get("class") in CLASSES]
        path = args.figures / f"engine_{survey}.png"
        survey_figure(survey, real, samples, path)
        figs.append(str(path))
    results["figures"] = figs
    results["seconds"] = time.time() - t0
    results["config"] = vars(args) | {"data": str(args.data), "out": str(args.out),
                                      "figures": str(args.figures), "cache": str(args.cache)}
    results["command"] = command
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    args.rst.write_text(render_rst(results, command))
    log.info("macro recall %.3f; recall %s; z within 0.01: cnn %.3f refined %.3f (n=%d); %.0f s",
             results["macro_recall"], {c: round(rec[c]["recall"], 3) for c in CLASSES},
             results["redshift"]["cnn_fraction"], results["redshift"]["refined_fraction"], len(zrows),
             results["seconds"])


if __name__ == "__main__":
    main()
