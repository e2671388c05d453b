"""Templates like weights: the bundled compact Redrock bases, which templates are used
(argument > ``$OMNISPECTRA_TEMPLATES`` > bundled), the full files from the registry (against
a loopback server, never the internet), provenance for results, ``info`` and ``download``.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from omnispectra.cli import main
from omnispectra.exceptions import CheckpointError, InvalidTemplatesError, TemplatesNotFoundError
from omnispectra.pretrained import (
    TEMPLATES_RELEASE,
    bundled_templates_path,
    fetch_templates,
    list_models,
    locate_templates,
    read_registry,
    resolve_templates,
    sha256sum,
    templates_info,
    templates_license_path,
    templates_meta,
)
from omnispectra.redshift import RedshiftFitter, fitter_for
from omnispectra.templates.library import load_compact, load_library, write_compact

from .helpers import require_data_dir, write_rrtemplate

STAR = {"RRTYPE": "STAR", "RRSUBTYP": "K"}


def _folder(root):
    """A template folder of two small valid Redrock files."""
    write_rrtemplate(root / "redrock" / "rrtemplate-galaxy.fits")
    write_rrtemplate(root / "redrock" / "rrtemplate-STAR-K-v0.1.fits", **STAR)
    return root


def _bundle(data, tmp_path, release="test-release"):
    """A compact file as the package's bundled templates (in the ``env`` fixture's data folder)."""
    path = data / bundled_templates_path().name
    write_compact(load_library(_folder(tmp_path / "src"), pyhammer=False), path, info={"release": release})
    return path


def test_precedence(env, tmp_path, monkeypatch):
    data, _ = env
    with pytest.raises(TemplatesNotFoundError, match="bundled templates .* missing from this installation"):
        locate_templates()
    bundled = _bundle(data, tmp_path)
    assert locate_templates() == (bundled, "bundled")
    monkeypatch.setenv("OMNISPECTRA_TEMPLATES", "")  # empty: as if unset
    assert locate_templates() == (bundled, "bundled")
    folder = _folder(tmp_path / "mine")
    monkeypatch.setenv("OMNISPECTRA_TEMPLATES", str(folder))
    assert locate_templates() == (folder, "env")
    assert locate_templates(folder / "redrock") == (folder, "path")  # the redrock/ folder itself
    assert locate_templates(bundled) == (bundled, "path") and resolve_templates(bundled) == bundled
    with pytest.raises(TemplatesNotFoundError, match=r"no Redrock templates .* in .*empty.*--templates DIR"):
        locate_templates(tmp_path / "empty")
    monkeypatch.setenv("OMNISPECTRA_TEMPLATES", str(tmp_path / "gone"))
    with pytest.raises(TemplatesNotFoundError, match="gone .*OMNISPECTRA_TEMPLATES"):
        resolve_templates()


def test_fitter_and_meta(env, tmp_path, monkeypatch):
    data, _ = env
    bundled = _bundle(data, tmp_path)
    fitter = fitter_for()
    assert fitter.library.info["release"] == "test-release" and len(fitter.prepared) == 2
    assert templates_meta(fitter) == {"TMPLREL": "test-release", "TMPLSHA": sha256sum(bundled)}
    folder = tmp_path / "src"
    meta = templates_meta(folder)  # files the registry does not know: a local release
    assert meta["TMPLREL"] == "local" and len(meta["TMPLSHA"]) == 64 and meta != templates_meta(bundled)
    info = templates_info()
    assert (info["source"], info["n_templates"], info["n_bases"]) == ("bundled", 2, 6)
    assert info["names"] == ["STAR-K", "GALAXY"] and info["sha256"] == sha256sum(bundled)
    monkeypatch.setenv("OMNISPECTRA_TEMPLATES", str(folder))
    assert fitter_for().library.templates[0].source.startswith(str(folder))


def _publish(server, data, digest=None):
    """Two template files on the server, and registry lines for them (and one model)."""
    folder = _folder(server.root)
    files = sorted((folder / "redrock").glob("*.fits"))
    lines = [f"templates/{f.name}  {server.url}/redrock/{f.name}  {digest or sha256sum(f)}\n" for f in files]
    model = f"m1  {server.url}/m1.safetensors  {'a' * 64}\n"
    (data / "registry.txt").write_text("# test\n" + model + "".join(lines))
    return files


def test_download_templates(env, server):
    data, cache = env
    files = _publish(server, data)
    assert list(read_registry(group="templates")) == [f.name for f in files]
    assert [m["name"] for m in list_models()] == ["default", "m1"]  # template files are not models
    root = fetch_templates(progressbar=False)
    assert root == cache / "templates" and len(server.requests) == 2
    for f in files:
        assert sha256sum(root / "redrock" / f.name) == sha256sum(f)
    fetch_templates(progressbar=False)  # cached and matching: nothing downloaded again
    assert len(server.requests) == 2
    meta = templates_meta(root)  # every file matches the registry: the known release
    assert meta["TMPLREL"] == TEMPLATES_RELEASE
    result = CliRunner().invoke(main, ["download", "templates"])
    assert result.exit_code == 0 and f"--templates {root}" in result.output
    assert len(server.requests) == 2


def test_download_hash_mismatch_and_offline(env, server):
    data, cache = env
    _publish(server, data, digest="ab" * 32)
    with pytest.raises(InvalidTemplatesError, match="does not match the sha256"):
        fetch_templates(progressbar=False)
    assert not list((cache / "templates" / "redrock").glob("*.fits"))
    _publish(server, data)
    server.stop()
    with pytest.raises(TemplatesNotFoundError, match="could not download template file"):
        fetch_templates(progressbar=False)
    result = CliRunner().invoke(main, ["download", "templates"])
    assert result.exit_code == 1 and "could not download" in result.output
    assert "Traceback" not in result.output
    (data / "registry.txt").write_text("# nothing\n")
    with pytest.raises(TemplatesNotFoundError, match="lists no template files"):
        fetch_templates()


def test_registry_template_names(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(f"templates/rrtemplate-galaxy.fits https://x/g.fits {'c' * 64}\n")
    assert read_registry(path, group="templates") == {
        "rrtemplate-galaxy.fits": {"url": "https://x/g.fits", "sha256": "c" * 64}}
    assert read_registry(path) == {}
    path.write_text(f"weights/m1 https://x/m1 {'c' * 64}\n")
    with pytest.raises(CheckpointError, match="invalid or reserved"):
        read_registry(path)
    with pytest.raises(ValueError, match="group"):
        read_registry(path, group="other")


def test_info_reports_templates(env, tmp_path, monkeypatch):
    data, _ = env
    bundled = _bundle(data, tmp_path)
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert f"templates   bundled (compact float32): {bundled}" in result.output
    assert "release test-release; 2 templates, 6 basis vectors" in result.output
    broken = tmp_path / "broken"
    write_rrtemplate(broken / "redrock" / "rrtemplate-galaxy.fits", np.zeros((5, 2000)))
    monkeypatch.setenv("OMNISPECTRA_TEMPLATES", str(broken))
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0 and "templates   unusable: " in result.output and "rank 0" in result.output


def test_zero_galaxy_basis_is_refused_by_the_cli(tmp_path, monkeypatch):
    """The issue's case: a folder whose galaxy basis is all zeros gave a flag-0 redshift."""
    monkeypatch.delenv("OMNISPECTRA_TEMPLATES", raising=False)
    folder = _folder(tmp_path / "t")
    write_rrtemplate(folder / "redrock" / "rrtemplate-galaxy.fits", np.zeros((5, 2000)))
    result = CliRunner().invoke(main, ["predict-redshift", "--examples", "--templates", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "rrtemplate-galaxy.fits: the basis has rank 0 for 5 vectors" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the shipped file


def test_bundled_templates_are_shipped():
    path = bundled_templates_path()
    assert path.is_file() and path.stat().st_size < 5_000_000
    assert "DESI Collaboration" in templates_license_path().read_text()
    with np.load(path, allow_pickle=False) as npz:  # every member loads without unpickling
        assert all(npz[name].dtype != object for name in npz.files)
    library = load_compact(path)
    assert sorted({t.spectype for t in library.templates}) == ["GALAXY", "QSO", "STAR"] and len(library) == 11
    assert library.info["release"].startswith(TEMPLATES_RELEASE) and len(library.info["sources"]) == 11
    registry = read_registry(group="templates")
    for source in library.info["sources"]:  # the registry pins each source file's upstream bytes
        assert registry[source["file"].removesuffix(".gz")]["sha256"] == source["sha256_uncompressed"]


def test_compact_matches_full_templates_on_examples():
    """z within 1e-6 and deltachi2 within 1e-6 relative of the full files (float32 is the only change)."""
    import omnispectra
    from omnispectra.examples import example_paths

    folder = require_data_dir() / "templates"
    if not (folder / "redrock").is_dir():
        pytest.skip("the shared Redrock templates are absent")
    recorded = {s["file"]: s["sha256"] for s in load_compact(bundled_templates_path()).info["sources"]}
    assert {f.name: sha256sum(f) for f in (folder / "redrock").glob("rrtemplate-*.fits*")
            if f.name in recorded} == recorded  # built from these very files
    full, compact = RedshiftFitter(directory=folder), fitter_for(bundled_templates_path())
    for path in example_paths():
        spectrum = omnispectra.read(path)[0]
        a, b = full.fit(spectrum), compact.fit(spectrum)
        assert (a.spectype, a.subtype, a.flag) == (b.spectype, b.subtype, b.flag), path.name
        assert abs(a.z - b.z) < 1e-6, path.name
        assert abs(a.deltachi2 - b.deltachi2) <= 1e-6 * max(1.0, abs(a.deltachi2)), path.name
