"""Calibration of predicted probabilities and uncertainties (numpy only; plots need matplotlib).

Classification
--------------
- :func:`expected_calibration_error`: ECE over equal-width bins of the top-class
  probability (Guo et al. 2017): ``sum_b (n_b / N) |accuracy_b - confidence_b|``;
- :func:`brier_score`: mean over rows of ``sum_k (p_k - [y == k])**2`` (multi-class,
  0 is perfect, 2 the worst);
- :func:`reliability_curve` / :func:`plot_reliability`: the per-bin numbers behind the
  ECE and the reliability diagram;
- :func:`confident_accuracy`: how often the prediction is right among rows whose top
  probability reaches a threshold (e.g. 0.95), with the count;
- :func:`fit_temperature` / :func:`softmax`: temperature scaling, one scalar ``T``
  dividing the logits, fitted by minimising the negative log-likelihood on a
  calibration set that must differ from the set it is scored on;
- :func:`fit_template_combination`: the four-number logistic model of
  :mod:`omnispectra.class_evidence` joining a probe's probabilities with the template
  fit's chi-square differences, fitted the same way.

Regression
----------
- :func:`fit_sigma_scale`: the factor by which a raw spread (e.g. the standard deviation
  of an ensemble's members) is multiplied so that ``|residual| <= scale * spread`` holds
  for the wanted fraction (68.27%: +-1 sigma of a Gaussian) of a calibration set;
- :func:`interval_coverage`: the fraction of rows with ``|residual| <= sigma``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ONE_SIGMA", "softmax", "fit_temperature", "fit_template_combination",
           "expected_calibration_error", "brier_score",
           "reliability_curve", "confident_accuracy", "plot_reliability", "fit_sigma_scale",
           "interval_coverage"]

#: Fraction of a Gaussian within +-1 standard deviation.
ONE_SIGMA = 0.6826894921370859


def _check_prob(prob: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=np.float64)
    t = np.asarray(y)
    if p.ndim != 2 or t.ndim != 1 or p.shape[0] != t.shape[0]:
        raise ValueError(f"expected probabilities (N, K) and labels (N,), got {p.shape} and {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= p.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]})")
    return p, t.astype(np.int64)


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``softmax(logits / temperature)`` row by row (float64)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float, weights: np.ndarray | None = None) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.average(log_norm - z[np.arange(y.size), y], weights=weights))


def fit_temperature(logits: Any, y: Any, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-4) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    A golden-section search over ``log T`` within ``bounds`` (the NLL is unimodal in
    ``T`` for fixed logits). ``T > 1`` softens overconfident probabilities; the class
    ranking, hence accuracy and recall, never changes.

    Parameters
    ----------
    logits : array (N, K)
        Raw scores of a calibration set the model was *not* trained on.
    y : array (N,)
        True class indices.
    bounds : (float, float)
        Search range of ``T``.
    tol : float
        Tolerance on ``log T``.
    """
    z, t = _check_prob(logits, y)
    if t.size == 0:
        raise ValueError("cannot fit a temperature on zero rows")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5.0) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, t, np.exp(a)), _nll(z, t, np.exp(b))
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, t, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, t, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def fit_template_combination(prob: Any, evidence: Any, y: Any, classes: Any,
                             l2: float = 1e-3, groups: Any = None) -> dict[str, Any]:
    """Fit ``a``, ``b`` and the biases of :func:`omnispectra.class_evidence.combined_logits`.

    Minimises the mean negative log-likelihood of the combined probabilities
    (plus ``l2`` times the squared parameters, which keeps the fit finite when a set is
    separable) by L-BFGS; the last class's bias is fixed at 0.

    Parameters
    ----------
    prob : array (N, K)
        Calibrated probe probabilities of rows the probe was *not* trained on.
    evidence : array (N, K)
        :func:`omnispectra.class_evidence.template_evidence` of the same rows (rows with
        NaN are left out).
    y : array (N,)
        True class indices.
    classes : sequence of str
        Class names, stored with the fit.
    l2 : float
        Ridge penalty.
    groups : array (N,), optional
        Source group of each row: every group then weighs the same in the likelihood (each
        row ``1 / n_group``), so the biases are not the class mix of the largest sources;
        a temperature fitted over all rows (:func:`fit_temperature`, stored as
        ``temperature`` and already divided into the parameters) then calibrates them.

    Returns
    -------
    dict
        ``network_weight``, ``template_weight``, ``bias`` (K), ``classes``, ``n`` (rows
        used) and ``weighting`` (``rows`` or ``groups``): what a class probe stores under
        :data:`omnispectra.class_evidence.COMBINATION_KEY`.
    """
    from scipy.optimize import minimize

    from ..class_evidence import combined_logits

    p, t = _check_prob(prob, y)
    ev = np.asarray(evidence, dtype=np.float64)
    use = np.isfinite(ev).all(axis=1)
    p, ev, t = p[use], ev[use], t[use]
    if t.size == 0:
        raise ValueError("cannot fit a template combination on zero rows with template evidence")
    weights = None
    if groups is not None:
        g = np.asarray(groups, dtype=str)
        if g.shape != use.shape:
            raise ValueError(f"groups must have one entry per row, got {g.shape} for {use.size} rows")
        _, inverse, counts = np.unique(g[use], return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse]
    k = p.shape[1]

    def params(theta: np.ndarray) -> dict[str, Any]:
        return {"network_weight": theta[0], "template_weight": theta[1], "bias": np.r_[theta[2:], 0.0]}

    def loss(theta: np.ndarray) -> float:
        return (_nll(combined_logits(p, ev, params(theta)), t, 1.0, weights)
                + l2 * float(np.sum(theta ** 2)))

    start = np.r_[1.0, 0.1, np.zeros(k - 1)]
    theta = minimize(loss, start, method="L-BFGS-B").x
    rescale = 1.0
    if weights is not None:
        # the weighted fit ranks the classes; one temperature over all rows calibrates them
        # (dividing every parameter by it changes no class)
        rescale = fit_temperature(combined_logits(p, ev, params(theta)), t)
        theta = theta / rescale
    fitted = params(theta)
    return {"network_weight": float(fitted["network_weight"]),
            "template_weight": float(fitted["template_weight"]), "bias": [float(v) for v in fitted["bias"]],
            "classes": [str(c) for c in classes], "n": int(t.size),
            "weighting": "rows" if weights is None else "groups",
            **({"temperature": float(rescale)} if weights is not None else {})}


def reliability_curve(prob: Any, y: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and count of the top-class probability.

    Bins are equal-width over [0, 1]; bin ``b`` holds ``b/n_bins < p <= (b+1)/n_bins``
    (``p == 0`` falls in bin 0). Empty bins have NaN confidence and accuracy.

    Returns
    -------
    dict with ``edges`` (n_bins + 1), ``confidence``, ``accuracy`` and ``count`` (n_bins).
    """
    p, t = _check_prob(prob, y)
    conf = p.max(axis=1) if p.size else np.zeros(0)
    right = (p.argmax(axis=1) == t) if p.size else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=right.astype(np.float64), minlength=n_bins) / count
    return {"edges": edges, "confidence": confidence, "accuracy": accuracy, "count": count}


def expected_calibration_error(prob: Any, y: Any, n_bins: int = 15, equal_count: bool = False) -> float:
    """ECE of the top-class probability over ``n_bins`` bins (NaN for no rows).

    Bins are equal-width (:func:`reliability_curve`) or, with ``equal_count``, hold equal
    numbers of rows sorted by confidence (``numpy.array_split``; robust when most rows sit
    near p = 1).
    """
    if not equal_count:
        curve = reliability_curve(prob, y, n_bins)
        n = curve["count"].sum()
        if n == 0:
            return float("nan")
        used = curve["count"] > 0
        gap = np.abs(curve["accuracy"][used] - curve["confidence"][used])
        return float((curve["count"][used] * gap).sum() / n)
    p, t = _check_prob(prob, y)
    if t.size == 0:
        return float("nan")
    conf = p.max(axis=1)
    right = (p.argmax(axis=1) == t).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    gaps = [b.size * abs(right[b].mean() - conf[b].mean()) for b in np.array_split(order, n_bins) if b.size]
    return float(sum(gaps) / t.size)


def brier_score(prob: Any, y: Any) -> float:
    """Multi-class Brier score: mean over rows of ``sum_k (p_k - onehot_k)**2`` (NaN for no rows)."""
    p, t = _check_prob(prob, y)
    if t.size == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def confident_accuracy(prob: Any, y: Any, threshold: float = 0.95) -> tuple[int, int]:
    """``(right, n)``: rows whose top probability is ``>= threshold``, and how many of them are right."""
    p, t = _check_prob(prob, y)
    sure = p.max(axis=1) >= threshold if t.size else np.zeros(0, bool)
    return int((p[sure].argmax(axis=1) == t[sure]).sum()), int(sure.sum())


def plot_reliability(curves: dict[str, dict[str, np.ndarray]], title: str = "", ax: Any = None) -> Any:
    """Reliability diagram: accuracy against confidence per bin, one line per labelled curve.

    ``curves`` maps a legend label (e.g. ``"T = 1"``, ``"T = 1.8"``) to a
    :func:`reliability_curve`. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    for label, curve in curves.items():
        used = curve["count"] > 0
        ax.plot(curve["confidence"][used], curve["accuracy"][used], "o-", ms=4, label=label)
    ax.set_xlabel("top-class probability")
    ax.set_ylabel("fraction right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def fit_sigma_scale(residual: Any, spread: Any, coverage: float = ONE_SIGMA) -> np.ndarray:
    """Per-output factor ``s`` so that ``|residual| <= s * spread`` for ``coverage`` of the rows.

    The ``coverage`` quantile of ``|residual| / spread`` per column, over rows where
    both are finite and the spread is positive.

    Parameters
    ----------
    residual, spread : array (N,) or (N, T)
        Prediction minus truth, and the raw uncertainty (e.g. ensemble standard
        deviation), in the same units, on a calibration set.
    coverage : float
        Wanted fraction inside; default +-1 sigma of a Gaussian.

    Returns
    -------
    ndarray (T,) (NaN for a column without usable rows)
    """
    r = np.abs(np.asarray(residual, dtype=np.float64))
    s = np.asarray(spread, dtype=np.float64)
    if r.shape != s.shape:
        raise ValueError(f"residual and spread shapes differ: {r.shape} vs {s.shape}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    r, s = r.reshape(r.shape[0], -1), s.reshape(s.shape[0], -1)
    out = np.full(r.shape[1], np.nan)
    for k in range(r.shape[1]):
        ok = np.isfinite(r[:, k]) & np.isfinite(s[:, k]) & (s[:, k] > 0)
        if ok.any():
            out[k] = float(np.quantile(r[ok, k] / s[ok, k], coverage))
    return out


def interval_coverage(residual: Any, sigma: Any) -> np.ndarray:
    """Per-output fraction of rows with ``|residual| <= sigma`` (finite rows only; NaN if none)."""
    r = np.abs(np.asarray(residual, dtype=np.float64))
    s = np.asarray(sigma, dtype=np.float64)
    r, s = r.reshape(r.shape[0], -1), s.reshape(s.shape[0], -1)
    ok = np.isfinite(r) & np.isfinite(s)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, ((r <= s) & ok).sum(axis=0) / n, np.nan)
