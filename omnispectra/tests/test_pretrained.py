"""Weights files (omnispectra.pretrained): safetensors round trips, strict loading, the bundled default."""

import json
import os

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
    assert loaded.info == {"val_mse": 0.5, "sha256": digest}
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
        save_file({"x": torch.zeros(2)}, path,
                  metadata={"format": "omnispectra-weights", "format_version": "99"})
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
    from omnispectra.fileio import default_file_mode

    path = tmp_path / "w.safetensors"
    save_weights(tiny_model, path)
    assert path.stat().st_mode & 0o777 == default_file_mode()


def _crafted_weights(path, config, tensors=None):
    """A tiny safetensors file whose header claims ``config`` (with small or no real tensors)."""
    from safetensors.torch import save_file

    save_file(tensors or {"x": torch.zeros(2)}, path,
              metadata={"format": "omnispectra-weights", "format_version": "1",
                        "config": json.dumps(config), "info": "{}"})
    return path


_LOAD_UNDER_LIMIT = """
import resource, sys
from omnispectra.pretrained import load_weights
from omnispectra.exceptions import CheckpointError
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
limit = vm + (1 << 30)  # 1 GiB more than torch and the package need once imported
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
load_weights(sys.argv[1])  # a real (tiny) model loads under the limit
try:
    load_weights(sys.argv[2])
except CheckpointError as err:
    print("REFUSED", err)
"""


def test_huge_config_in_tiny_file_is_refused_under_memory_limit(tmp_path, tiny_model):
    import subprocess
    import sys
    import time

    resource = pytest.importorskip("resource")
    if not hasattr(resource, "RLIMIT_AS") or not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux address-space limits")
    good = tmp_path / "good.safetensors"
    save_weights(tiny_model, good)
    huge = _crafted_weights(tmp_path / "huge.safetensors",
                            {"dim": 8192, "n_layers": 64, "n_heads": 64})  # ~200 GB of float32
    assert huge.stat().st_size < 1024
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _LOAD_UNDER_LIMIT, str(good), str(huge)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "REFUSED" in run.stdout and "does not match its configuration" in run.stdout
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("change, match", [
    ({"n_heads": 0}, "n_heads=0"),
    ({"dim": -4}, "dim=-4"),
    ({"dim": "768"}, "not an integer"),
    ({"n_layers": True}, "not an integer"),
    ({"n_layers": 10**9}, "outside"),
    ({"dim": 130, "n_heads": 4}, "divisible"),
    ({"dropout": float("nan")}, "finite"),
    ({"attention": "magic"}, "attention"),
    ({"stride": 40}, "stride"),
    ({"no_such": 1}, "unknown"),
], ids=["zero-heads", "negative-dim", "string-dim", "bool-layers", "huge-layers", "indivisible",
        "nan-dropout", "attention", "stride", "unknown-key"])
def test_bad_configs_are_checkpoint_errors_before_building(tmp_path, tiny_model, monkeypatch, change, match):
    import omnispectra.pretrained as pretrained

    def never(*args, **kwargs):
        raise AssertionError("the model was built before its configuration was checked")

    monkeypatch.setattr(pretrained.OmniSpectra, "__init__", never)
    path = _crafted_weights(tmp_path / "w.safetensors", tiny_model.config.to_dict() | change)
    with pytest.raises(CheckpointError, match=match):
        load_weights(path)


def test_header_shapes_are_checked_before_reading_tensors(tmp_path, tiny_model, monkeypatch):
    # right names, one wrong shape: refused from the header alone
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    tensors["head.weight"] = torch.zeros(3, 3)
    path = _crafted_weights(tmp_path / "w.safetensors", tiny_model.config.to_dict(), tensors)

    def never(*args, **kwargs):
        raise AssertionError("tensors were read before the header was checked")

    monkeypatch.setattr("safetensors.torch.load_file", never)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(path)
    # integer tensors are refused too
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    tensors["head.bias"] = tensors["head.bias"].to(torch.int32)
    monkeypatch.undo()
    path = _crafted_weights(tmp_path / "int.safetensors", tiny_model.config.to_dict(), tensors)
    monkeypatch.setattr("safetensors.torch.load_file", never)
    with pytest.raises(CheckpointError, match="not floating point"):
        load_weights(path)


def test_header_claiming_data_beyond_the_file_is_refused(tmp_path):
    import struct

    header = json.dumps({"__metadata__": {"format": "omnispectra-weights", "format_version": "1",
                                          "config": "{}", "info": "{}"},
                         "x": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="outside the file"):
        load_weights(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header claims"):
        load_weights(path)


def test_cache_env_pointing_at_a_file_is_a_config_error(tmp_path, monkeypatch):
    from omnispectra import ConfigError
    from omnispectra.pretrained import cache_dir, list_models

    target = tmp_path / "not-a-folder"
    target.write_text("x")
    monkeypatch.setenv("OMNISPECTRA_CACHE", str(target))
    with pytest.raises(ConfigError, match="not a folder"):
        cache_dir()
    with pytest.raises(ConfigError):
        list_models()


def test_load_model_records_name_and_digest_without_folders(tmp_path, tiny_model):
    from omnispectra.pretrained import load_model

    path = tmp_path / "sub" / "mine.safetensors"
    digest = save_weights(tiny_model, path)
    model = load_model(path, device="cpu")
    assert model.info["name"] == "mine.safetensors" and model.info["sha256"] == digest
