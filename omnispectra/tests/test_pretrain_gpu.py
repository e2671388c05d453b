"""scripts/pretrain_gpu.py, the prepared one-GPU pretraining run: its CPU dry run end to end."""

import json

import pytest

from .helpers import REPO, load_script

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning",
)


def test_dry_run_trains_three_steps_and_writes_everything_under_out(tmp_path, monkeypatch):
    from omnispectra.examples import example_paths

    script = load_script(REPO / "scripts" / "pretrain_gpu.py", "pretrain_gpu")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    examples = [str(p) for p in example_paths()]
    summary = script.main(["--dry-run", "--build-from", *examples, "--engine-donors", *examples,
                           "--auxiliary", '{"class_weight": 0.1}'])
    run = tmp_path / "out" / "pretrain"
    assert summary["steps"] == 3 and summary["device"] == "cpu"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "encoder.safetensors").is_file()
    assert json.loads((run / "summary.json").read_text())["encoder_sha256"] == summary["encoder_sha256"]
    assert summary["spectra_per_s"] > 0 and summary["settings"]["auxiliary"] == {"class_weight": 0.1}
    assert summary["engine_stream"]["rendered"] > 0 and summary["settings"]["engine_fraction"] == 0.5
    paper = script._settings(script._options(["x.h5"]), ["x.h5"], tmp_path)
    assert paper["precision"] == "bf16-mixed" and paper["max_time_minutes"] == 5.5 and paper["devices"] == 1
    with pytest.raises(SystemExit, match="no corpus"):
        script.main(["--dry-run", "--output", str(tmp_path / "empty")])
