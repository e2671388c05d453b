import math

import pytest

from omnispectra.evaluation.stats import wilson_interval


def test_wilson_interval_known_values():
    # 188 of 227 (the engine realism redshift figure): [0.774, 0.872]
    lo, hi = wilson_interval(188, 227)
    assert lo == pytest.approx(0.7738, abs=1e-4) and hi == pytest.approx(0.8717, abs=1e-4)
    lo, hi = wilson_interval(5, 5)
    assert hi == 1.0 and lo == pytest.approx(0.5655, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
