"""Test-wide settings."""

import pytest
import torch

from omnispectra import pretrained
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import save_weights

from .helpers import TINY_DIM, LoopbackServer


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


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fake package data folder, a private cache and no proxy for loopback (registry tests)."""
    data = tmp_path / "data"
    data.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setattr(pretrained, "_data_dir", lambda: data)
    monkeypatch.setenv("OMNISPECTRA_CACHE", str(cache))
    monkeypatch.delenv("OMNISPECTRA_DEFAULT_MODEL", raising=False)
    monkeypatch.delenv("OMNISPECTRA_TEMPLATES", raising=False)
    monkeypatch.delenv("OMNISPECTRA_DOMAIN", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(pretrained, "_digests", {})
    return data, cache


@pytest.fixture
def server(tmp_path):
    """A :class:`~.helpers.LoopbackServer` over ``tmp_path/www``, stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    srv = LoopbackServer(root)
    yield srv
    srv.stop()
