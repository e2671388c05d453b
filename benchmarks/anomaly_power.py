"""Power of the anomaly statistic against its cost: fewer masks, same detections? (issue #26)

The ``ANOMALY`` flag's statistic (:func:`omnispectra.anomaly_statistic`) averages the masked
chi-square over ``n_masks`` chunk masks (8 shipped), and those masked passes are most of the
cost of a catalogue row. The masks are drawn per index (``mask_rng(seed, k, 0)``), so ``n``
masks are the first ``n`` of the 8. This benchmark measures, for n = 1, 2, 4 and 8:

- *normal*: real labelled spectra of the validation side of the project split (the threshold's
  own population); the threshold is their 99th percentile, as the card's;
- *anomalous*: the same spectra corrupted once each, in turn: cosmic-ray spikes, a dead segment,
  a flux-calibration break, the flux reversed in wavelength, two objects spliced, and noise
  alone with the spectrum's errors;

The last row is the statistic of a row with a template fit instead: the best template model's
floored residual chi-square (:func:`omnispectra.redshift.residual_chi2`, bundled templates), which
costs no forward pass; its threshold is the training domain's ``residual_max``.

It reports the AUROC (normal vs anomalous, with a bootstrap 95% interval) and the share of
anomalous spectra above the threshold, overall and per corruption. The threshold a catalogue
row uses is measured on more spectra (every validation-side spectrum of the corpus, those
without uncertainties too: :func:`omnispectra.training.predictors.measure_anomaly_threshold`);
the last columns give that threshold for each mask count and the normal and anomalous
spectra above it.

Usage (about 10 min on 2 cores)::

    OMP_NUM_THREADS=2 python benchmarks/anomaly_power.py corpus/*.h5 -o benchmarks/results/anomaly-power.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

CORRUPTIONS = ("spikes", "dead_segment", "calibration_break", "reversed", "spliced", "noise_only")
MASKS = (1, 2, 4, 8)


def normal_spectra(corpus: list[str], limit: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(wavelength, flux, ivar)`` of up to ``limit`` validation-side spectra with errors."""
    from omnispectra.dataset import SpectrumDataset
    from omnispectra.spectrum import spectrum_data
    from omnispectra.splits import DEFAULT_SEED, DEFAULT_VALIDATION_FRACTION, is_validation

    ds = SpectrumDataset(corpus, return_index=False)
    val = np.flatnonzero(is_validation(ds.column("object_id"), DEFAULT_VALIDATION_FRACTION, DEFAULT_SEED))
    out = []
    for i in val:
        d = spectrum_data(ds.spectrum(int(i)))
        good = ~d.mask & np.isfinite(d.flux) & (d.ivar > 0)
        if d.has_ivar and good.sum() > 500:
            out.append((d.wavelength[good], d.flux[good], d.ivar[good]))
        if len(out) == limit:
            break
    return out


def corrupt(spectra: list, rng: np.random.Generator) -> tuple[list, list[str]]:
    """Each spectrum corrupted once, the corruptions in turn."""
    out, kinds = [], []
    for i, (w, f, iv) in enumerate(spectra):
        kind, f = CORRUPTIONS[i % len(CORRUPTIONS)], f.copy()
        sigma, n = 1 / np.sqrt(iv), f.size
        if kind == "spikes":
            hit = rng.choice(n, max(5, n // 50), replace=False)
            f[hit] += 30 * sigma[hit]
        elif kind == "dead_segment":
            start = rng.integers(0, n - n // 10)
            f[start:start + n // 10] = np.median(f)
        elif kind == "calibration_break":
            f[n // 2:] *= 3.0
        elif kind == "reversed":
            f = f[::-1].copy()
        elif kind == "spliced":
            w2, f2, _ = spectra[(i + len(spectra) // 2) % len(spectra)]
            other = np.interp(w, w2, f2)
            scale = np.median(np.abs(f)) / max(np.median(np.abs(other)), 1e-30)
            f[n // 2:] = other[n // 2:] * scale
        else:
            f = rng.normal(0.0, sigma)
        out.append((w, f, iv))
        kinds.append(kind)
    return out, kinds


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(anomalous > normal), ties half (scikit-learn's ROC AUC)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(normal.size), np.ones(anomalous.size)]
    return float(roc_auc_score(labels, np.r_[normal, anomalous]))


def bootstrap(normal: np.ndarray, anomalous: np.ndarray, n: int = 500, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    vals = [auroc(rng.choice(normal, normal.size), rng.choice(anomalous, anomalous.size)) for _ in range(n)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def fit_residuals(spectra: list) -> np.ndarray:
    """The best template model's residual chi-square of each spectrum (bundled templates)."""
    from omnispectra.redshift import fitter_for
    from omnispectra.redshift_batch import fit_many

    return np.array([fit.residual_chi2 for fit in fit_many(fitter_for(None), spectra)])


def fit_threshold() -> float:
    """The bundled training domain's ``residual_max`` (NaN when it has none)."""
    from omnispectra.domain import training_domain

    domain = training_domain()
    return float("nan") if domain is None or domain.residual_max is None else domain.residual_max


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="+", help="corpus files of real labelled spectra")
    parser.add_argument("--limit", type=int, default=240, help="normal spectra (validation side)")
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import omnispectra
    from omnispectra.runtime import resolve_model
    from omnispectra.training.predictors import measure_anomaly_threshold

    encoder = resolve_model("default", "cpu")
    normal = normal_spectra(args.corpus, args.limit)
    anomalous, kinds = corrupt(normal, np.random.default_rng(0))
    kinds = np.asarray(kinds)
    lines = ["# Anomaly statistic: masks against detections", "",
             "Command: `python benchmarks/anomaly_power.py " + " ".join(
                 Path(c).name if Path(c).is_absolute() else c for c in args.corpus) + "`", "",
             f"{len(normal)} normal spectra (validation side, with errors), each also corrupted once.", "",
             "| masks (or statistic) | AUROC [bootstrap 95%] | anomalous above the normal p99 | "
             + " | ".join(CORRUPTIONS) + " | card threshold | normal / anomalous above it |",
             "|---" * (5 + len(CORRUPTIONS)) + "|"]
    rows = [(k, lambda spectra, k=k: omnispectra.anomaly_statistic(spectra, n_masks=k, progress=False)[0],
             lambda k=k: measure_anomaly_threshold(args.corpus, encoder, ["unknown"], n_masks=k)["p99"])
            for k in MASKS]
    rows.append(("template residual", fit_residuals, fit_threshold))
    for k, statistic, card_threshold in rows:
        a, b = statistic(normal), statistic(anomalous)
        ok_a, ok_b = np.isfinite(a), np.isfinite(b)
        threshold = np.percentile(a[ok_a], 99)
        above = (b > threshold) & ok_b
        per = [f"{above[kinds == c].sum()}/{(kinds == c).sum()}" for c in CORRUPTIONS]
        lo, hi = bootstrap(a[ok_a], b[ok_b])
        card = card_threshold()
        lines.append(f"| {k} | {auroc(a[ok_a], b[ok_b]):.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{above.sum()}/{ok_b.sum()} | " + " | ".join(per)
                     + f" | {card:.2f} | {(a[ok_a] > card).sum()} / {(b[ok_b] > card).sum()} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
