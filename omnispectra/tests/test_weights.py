import json

import numpy as np
import pytest
import torch

from omnispectra import CheckpointError
from omnispectra.collate import collate
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import load_weights, read_weights_metadata, save_weights, sha256sum
from omnispectra.tokenizer import tokenize

from .helpers import sdss_arrays


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return OmniSpectra(OmniSpectraConfig.from_preset("tiny", n_layers=2)).eval()


def _embed(model):
    batch = collate([tokenize(*sdss_arrays())])
    with torch.no_grad():
        return model.embed(batch.tokens, batch.wavelength, batch.valid)


def test_round_trip_identical_embeddings(tmp_path, tiny_model):
    path = tmp_path / "w.safetensors"
    digest = save_weights(tiny_model, path, info={"val_mse": 0.5})
    assert digest == sha256sum(path) and len(digest) == 64
    loaded = load_weights(path)
    assert loaded.config == tiny_model.config
    assert loaded.info == {"val_mse": 0.5}
    torch.testing.assert_close(_embed(loaded), _embed(tiny_model), rtol=0, atol=0)
    assert read_weights_metadata(path)["config"]["dim"] == 128
    assert not list(tmp_path.glob("*.tmp"))


def test_mismatched_config_rejected(tmp_path, tiny_model):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    config = tiny_model.config.to_dict() | {"n_layers": 3}
    save_file(tensors, path, metadata={"format": "omnispectra-weights", "format_version": "1",
                                       "config": json.dumps(config), "info": "{}"})
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_weights(path)
    tensors["head.weight"] = torch.zeros(5, 5)
    save_file(tensors, path, metadata={"format": "omnispectra-weights", "format_version": "1",
                                       "config": json.dumps(tiny_model.config.to_dict()), "info": "{}"})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "version", "missing"])
def test_corrupt_weights_rejected(tmp_path, tiny_model, damage):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_weights(tiny_model, path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64 + b"not safetensors")
    elif damage == "foreign":
        save_file({"x": torch.zeros(2)}, path)
    elif damage == "version":
        save_file({"x": torch.zeros(2)}, path, metadata={"format": "omnispectra-weights", "format_version": "99"})
    else:
        path.unlink()
    with pytest.raises(CheckpointError):
        load_weights(path)


def test_pickle_payload_is_never_executed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_weights(path)
    assert not (tmp_path / "pwned").exists()


def test_interrupted_save_keeps_old_file(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights(tiny_model, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_weights(tiny_model, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
    assert np.isfinite(_embed(load_weights(path)).numpy()).all()


def test_saved_weights_get_default_permissions(tmp_path, tiny_model):
    from omnispectra._fileutils import default_file_mode

    path = tmp_path / "w.safetensors"
    save_weights(tiny_model, path)
    assert path.stat().st_mode & 0o777 == default_file_mode()
