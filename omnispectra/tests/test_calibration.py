"""Calibration metrics and temperature / sigma-scale fits (omnispectra.evaluation.calibration)."""

import numpy as np
import pytest

from omnispectra.evaluation import calibration as cal


def test_ece_and_reliability_by_hand():
    # two rows in the 0.9-bin (one right), two in the 0.6-bin (both right)
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    curve = cal.reliability_curve(prob, y, n_bins=10)
    assert curve["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert curve["accuracy"][8] == 0.5 and curve["confidence"][8] == pytest.approx(0.9)
    assert curve["accuracy"][5] == 1.0 and curve["confidence"][5] == pytest.approx(0.6)
    # ECE = 2/4 * |0.5 - 0.9| + 2/4 * |1 - 0.6|
    assert cal.expected_calibration_error(prob, y, n_bins=10) == pytest.approx(0.4)
    # a perfectly calibrated set has ECE 0; an always-wrong sure model has ECE 1
    assert cal.expected_calibration_error(np.eye(3), [0, 1, 2]) == pytest.approx(0.0)
    assert cal.expected_calibration_error(np.eye(3), [1, 2, 0]) == pytest.approx(1.0)
    assert np.isnan(cal.expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)))
    with pytest.raises(ValueError, match="class indices"):
        cal.expected_calibration_error(prob, [0, 1, 2, 0])


def test_brier_and_confident_accuracy():
    prob = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.96, 0.04, 0.0]])
    y = np.array([0, 1, 1])
    # rows: 0; 0.25 + 0.25; 0.96**2 + 0.96**2
    assert cal.brier_score(prob, y) == pytest.approx((0 + 0.5 + 2 * 0.96 ** 2) / 3)
    assert cal.confident_accuracy(prob, y, 0.95) == (1, 2)
    assert cal.confident_accuracy(prob, y, 0.999) == (1, 1)


def test_temperature_recovers_the_generating_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, size=(4000, 3))
    y = np.array([rng.choice(3, p=p) for p in cal.softmax(true_logits)])
    # a model three times too sure: its logits are the true ones times 3
    t = cal.fit_temperature(3.0 * true_logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    before = cal.expected_calibration_error(cal.softmax(3.0 * true_logits), y)
    after = cal.expected_calibration_error(cal.softmax(3.0 * true_logits, t), y)
    assert after < before / 2
    # ranking unchanged
    assert (cal.softmax(true_logits, t).argmax(1) == true_logits.argmax(1)).all()
    with pytest.raises(ValueError, match="positive"):
        cal.softmax(true_logits, 0.0)


def test_sigma_scale_gives_the_wanted_coverage():
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.5, 2.0, size=(5000, 2))
    true_sigma = spread * np.array([3.0, 0.5])          # raw spread too small / too large
    residual = rng.normal(0, true_sigma)
    scale = cal.fit_sigma_scale(residual[:2500], spread[:2500])
    np.testing.assert_allclose(scale, [3.0, 0.5], rtol=0.08)
    cover = cal.interval_coverage(residual[2500:], scale * spread[2500:])
    np.testing.assert_allclose(cover, cal.ONE_SIGMA, atol=0.03)
    assert cal.interval_coverage(residual[2500:], spread[2500:])[0] < 0.4
    with pytest.raises(ValueError, match="shapes differ"):
        cal.fit_sigma_scale(residual, spread[:, :1])


def test_reliability_plot(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    prob = np.array([[0.9, 0.1], [0.3, 0.7]])
    fig = cal.plot_reliability({"T = 1": cal.reliability_curve(prob, [0, 0])}, title="t")
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_template_combination_weighs_every_source_group_the_same():
    """With ``groups``, a large source of one class no longer sets the class biases: a source
    of 300 galaxies and one of 30 stars weigh the same; equal groups change nothing."""
    from omnispectra.evaluation.calibration import fit_template_combination

    rng = np.random.default_rng(0)
    n_gal, n_star = 300, 30
    y = np.r_[np.zeros(n_gal, int), np.full(n_star, 2)]
    prob = np.full((y.size, 3), 0.2)
    prob[np.arange(y.size), y] = 0.6
    prob /= prob.sum(1, keepdims=True)
    evidence = rng.uniform(0, 2, size=(y.size, 3))
    groups = np.r_[["6dfgs"] * n_gal, ["boss"] * n_star]
    rows = fit_template_combination(prob, evidence, y, ["GALAXY", "QSO", "STAR"])
    balanced = fit_template_combination(prob, evidence, y, ["GALAXY", "QSO", "STAR"], groups=groups)
    assert rows["weighting"] == "rows" and balanced["weighting"] == "groups"
    # the galaxy prior of the big source is gone (relative to the network's weight: the pooled
    # temperature rescales every parameter alike)
    assert balanced["bias"][0] / balanced["network_weight"] < 0.5 * rows["bias"][0] / rows["network_weight"]
    assert "temperature" not in rows and balanced["temperature"] > 0
    # the pooled temperature is the best single scale of the balanced logits over all rows
    from omnispectra.class_evidence import combined_logits

    logits = combined_logits(prob, evidence, {**balanced, "bias": np.asarray(balanced["bias"])})
    assert cal.fit_temperature(logits, y) == pytest.approx(1.0, abs=1e-3)
    same = fit_template_combination(prob, evidence, y, ["GALAXY", "QSO", "STAR"], groups=["one"] * y.size)
    ratio = np.array(same["bias"]) / same["network_weight"]  # one group: the rows' fit, rescaled
    np.testing.assert_allclose(ratio, np.array(rows["bias"]) / rows["network_weight"], atol=1e-3)
    with pytest.raises(ValueError, match="one entry per row"):
        fit_template_combination(prob, evidence, y, ["GALAXY", "QSO", "STAR"], groups=groups[:5])
