"""Test-wide settings."""

import pytest


@pytest.fixture(autouse=True)
def _float32_by_default(monkeypatch):
    """Make ``dtype="auto"`` mean float32 whatever CPU runs the tests.

    Many tests compare embeddings to 1e-5 (alone vs. in a padded batch, input order ...),
    which bf16 rounding would blur; ``test_auto_dtype_follows_the_hardware`` checks the
    hardware-dependent default itself.
    """
    monkeypatch.setattr("omnispectra.runtime.cpu_has_native_bf16", lambda: False)
