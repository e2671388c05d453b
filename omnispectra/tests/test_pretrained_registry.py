"""Named models: the bundled default, the pooch registry (against a loopback HTTP server) and paths.

Nothing here touches the internet or the user's cache: downloads come from an
``http.server`` on 127.0.0.1 serving a temporary folder (the ``server`` fixture of
conftest.py), and ``OMNISPECTRA_CACHE`` points at a temporary folder (``env``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import omnispectra
from omnispectra import CheckpointError, OmniSpectraError, pretrained
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import (
    ModelDownloadError,
    fetch_model,
    list_models,
    load_model,
    read_registry,
    save_weights,
    sha256sum,
)

from .helpers import LoopbackServer


def _tiny(seed: int = 0) -> OmniSpectra:
    torch.manual_seed(seed)
    return OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2)).eval()


def _same_weights(a: OmniSpectra, b: OmniSpectra) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _publish(server: LoopbackServer, data: Path, name: str = "tiny-v1", digest: str | None = None,
             seed: int = 0) -> tuple[OmniSpectra, str]:
    """Put a weights file on the server and a registry line for it in the package data."""
    model = _tiny(seed)
    real = save_weights(model, server.root / f"{name}.safetensors", info={"val_mse": 0.25})
    line = f"{name}  {server.url}/{name}.safetensors  {digest or real}\n"
    (data / "registry.txt").write_text("# test registry\n" + line)
    return model, real


# --------------------------------------------------------------------------- bundled


def test_missing_bundled_weights_error(env):
    with pytest.raises(CheckpointError, match="missing from this installation"):
        load_model()
    with pytest.raises(OmniSpectraError, match="bundled default weights"):
        load_model("default")
    entry = list_models()[0]
    assert entry["name"] == "default" and entry["source"] == "bundled" and not entry["available"]


def test_bundled_weights_load(env):
    data, _ = env
    model = _tiny()
    digest = save_weights(model, data / "omnispectra-default.safetensors", info={"val_mse": 0.1})
    (data / "omnispectra-default.json").write_text(json.dumps({"sha256": digest, "val_mse": 0.1}))
    loaded = load_model(device="cpu")
    assert _same_weights(loaded, model)
    assert loaded.info["name"] == "default" and loaded.info["val_mse"] == 0.1
    assert not loaded.training
    assert list_models()[0]["available"] and list_models()[0]["sha256"] == digest
    assert omnispectra.load_model is load_model


def test_bundled_weights_digest_checked(env):
    data, _ = env
    save_weights(_tiny(), data / "omnispectra-default.safetensors")
    (data / "omnispectra-default.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_model()


def test_default_model_override(env, tmp_path, monkeypatch):
    path = tmp_path / "mine.safetensors"
    model = _tiny(3)
    save_weights(model, path)
    monkeypatch.setenv("OMNISPECTRA_DEFAULT_MODEL", str(path))
    assert _same_weights(load_model(), model)
    monkeypatch.setenv("OMNISPECTRA_DEFAULT_MODEL", str(tmp_path / "nope.safetensors"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model()


# --------------------------------------------------------------------------- local paths


def test_local_path_and_attention(env, tmp_path):
    path = tmp_path / "w.safetensors"
    model = _tiny()
    save_weights(model, path)
    assert _same_weights(load_model(path), model)
    loaded = load_model(str(path), attention="sdpa")
    assert loaded.config.attention == "sdpa" and loaded.info["path"] == str(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError):
        load_model(path, attention="no-such-kernel")
    with pytest.raises(CheckpointError, match="string or a path"):
        load_model(3)


# --------------------------------------------------------------------------- registry


def test_download_once_then_cached(env, server):
    data, cache = env
    model, digest = _publish(server, data)
    loaded = load_model("tiny-v1")
    assert _same_weights(loaded, model) and loaded.info["val_mse"] == 0.25
    assert server.requests == ["/tiny-v1.safetensors"]
    cached = cache / "omnispectra-tiny-v1.safetensors"
    assert cached.is_file() and sha256sum(cached) == digest
    # a second load uses the cache: no new request, and it works with the server gone
    load_model("tiny-v1")
    server.stop()
    assert _same_weights(load_model("tiny-v1"), model)
    assert server.requests == ["/tiny-v1.safetensors"]
    entry = {m["name"]: m for m in list_models()}["tiny-v1"]
    assert entry["cached"] and entry["available"] and entry["path"] == str(cached)


def test_hash_mismatch_deletes_download(env, server):
    data, cache = env
    _publish(server, data, digest="ab" * 32)
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_model("tiny-v1")
    assert not list(cache.glob("*")) if cache.exists() else True
    # a stale cached copy that no longer matches the registry is replaced or removed too
    cache.mkdir(exist_ok=True)
    (cache / "omnispectra-tiny-v1.safetensors").write_bytes(b"stale")
    with pytest.raises(CheckpointError, match="does not match"):
        load_model("tiny-v1")
    assert not (cache / "omnispectra-tiny-v1.safetensors").exists()


def test_cached_copy_wrong_is_downloaded_again(env, server):
    data, cache = env
    model, digest = _publish(server, data)
    cache.mkdir()
    (cache / "omnispectra-tiny-v1.safetensors").write_bytes(b"corrupt")
    assert _same_weights(load_model("tiny-v1"), model)
    assert sha256sum(cache / "omnispectra-tiny-v1.safetensors") == digest


def test_offline_without_cache(env, server):
    data, cache = env
    _publish(server, data)
    server.stop()  # nothing listens on that port any more
    with pytest.raises(ModelDownloadError, match="no cached copy") as info:
        load_model("tiny-v1")
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, OSError)
    assert "network" in str(info.value)


def test_http_error_is_a_download_error(env, server):
    data, _ = env
    _publish(server, data)
    (server.root / "tiny-v1.safetensors").unlink()  # 404
    with pytest.raises(ModelDownloadError, match="could not download"):
        fetch_model("tiny-v1")


def test_unknown_name_lists_known(env, server):
    data, _ = env
    _publish(server, data)
    with pytest.raises(CheckpointError, match=r"unknown model 'nope'.*default, tiny-v1"):
        load_model("nope")


def test_registry_parsing(tmp_path):
    good = tmp_path / "r.txt"
    good.write_text("# comment\n\nm1 https://x/m1.safetensors " + "a" * 64 + "  # trailing\n"
                    "m2 https://x/m2.safetensors sha256:" + "B" * 64 + "\n")
    reg = read_registry(good)
    assert list(reg) == ["m1", "m2"] and reg["m2"]["sha256"] == "b" * 64
    for bad, msg in [("m1 https://x\n", "expected"), ("m1 u " + "z" * 64 + "\n", "sha256"),
                     ("default u " + "a" * 64 + "\n", "reserved"),
                     ("m1 u " + "a" * 64 + "\nm1 u " + "a" * 64 + "\n", "twice")]:
        good.write_text(bad)
        with pytest.raises(CheckpointError, match=msg):
            read_registry(good)
    assert read_registry(tmp_path / "absent.txt") == {}


def test_shipped_registry_is_valid():
    """The registry inside the package parses, and names no reserved model."""
    path = Path(pretrained.__file__).parent / "data" / "registry.txt"
    assert path.is_file()
    reg = read_registry(path)
    assert "default" not in reg
    assert all(m["url"].startswith("https://") for m in reg.values())
    names = [m["name"] for m in list_models()]
    assert names[0] == "default" and names[1:] == list(reg)
    assert np.all([len(m["sha256"]) == 64 for m in reg.values()])
