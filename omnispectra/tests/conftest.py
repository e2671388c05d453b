"""Test-wide settings."""

import pytest
import torch

from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import save_weights

from .helpers import TINY_DIM


@pytest.fixture(autouse=True)
def _float32_by_default(monkeypatch):
    """Make ``dtype="auto"`` mean float32 whatever CPU runs the tests.

    Many tests compare embeddings to 1e-5 (alone vs. in a padded batch, input order ...),
    which bf16 rounding would blur; ``test_auto_dtype_follows_the_hardware`` checks the
    hardware-dependent default itself.
    """
    monkeypatch.setattr("omnispectra.runtime.cpu_has_native_bf16", lambda: False)


# The tiny random model shared by test_api.py and test_cli.py (a module that defines its own
# ``model`` fixture uses that one instead).
@pytest.fixture(scope="module")
def model() -> OmniSpectra:
    torch.manual_seed(0)
    return OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=TINY_DIM, n_layers=2, n_heads=2)).eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(model, path, info={"note": "random tiny test model"})
    return str(path)
