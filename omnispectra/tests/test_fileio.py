"""The one atomic-write helper and the one output-path check."""

import os
from pathlib import Path

import pytest

from omnispectra import OutputExistsError, OutputIsInputError
from omnispectra.fileio import atomic_write, check_output, default_file_mode, safe_filename, write_text


def test_output_that_is_an_input_is_always_refused(tmp_path):
    spectrum = tmp_path / "s.fits"
    spectrum.write_bytes(b"SIMPLE")
    link = tmp_path / "link.fits"
    link.symlink_to(spectrum)
    hard = tmp_path / "hard.fits"
    os.link(spectrum, hard)
    folder = tmp_path / "spectra"
    folder.mkdir()
    (folder / "a.fits").write_bytes(b"x")
    cases = [(spectrum, [spectrum]), (link, [spectrum]), (spectrum, [link]), (hard, [spectrum]),
             (tmp_path / "." / "s.fits", [str(spectrum)]), (folder / "a.fits", [folder])]
    for out, inputs in cases:
        for overwrite in (False, True):
            with pytest.raises(OutputIsInputError, match="one of the inputs"):
                check_output(out, inputs, overwrite=overwrite)
    assert spectrum.read_bytes() == b"SIMPLE"


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "r.ecsv"
    assert check_output(out, [tmp_path / "s.fits", object()]) == out  # new file: fine
    out.write_text("old")
    with pytest.raises(OutputExistsError, match="overwrite"):
        check_output(out, [])
    assert check_output(out, [], overwrite=True) == out
    with pytest.raises(OutputExistsError, match="folder"):
        check_output(tmp_path, [], overwrite=True)
    # a new file inside an input folder is fine; only files that are read are protected
    assert check_output(tmp_path / "new.ecsv", [tmp_path]) == tmp_path / "new.ecsv"


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "t.ecsv"
    write_text(path, "good")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as tmp:
            assert tmp.parent == tmp.parent and tmp.name.endswith(".ecsv") and not tmp.exists()
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert path.read_text() == "good"
    assert os.listdir(tmp_path) == ["t.ecsv"]
    with atomic_write(tmp_path / "sub" / "new.txt") as tmp:
        tmp.write_text("new")
    new = tmp_path / "sub" / "new.txt"
    assert new.read_text() == "new" and new.stat().st_mode & 0o777 == default_file_mode()
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "never.txt"):
            pass  # the writer wrote nothing
    assert not (tmp_path / "never.txt").exists()


@pytest.mark.parametrize("name, expected", [("sdss", "sdss"), ("sdss/boss", "sdss_boss"), ("..", "_"),
                                            ("a b\nc", "a_b_c"), ("", "_"), ("../x", "_x")])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to tell processes apart")
def test_writer_is_dead_only_when_proved():
    from omnispectra.fileio import writer_is_dead, writer_tag

    host, pid, start = writer_tag().split("-")
    assert int(pid) == os.getpid() and int(start) > 0
    assert not writer_is_dead(writer_tag())  # this very process
    assert writer_is_dead(f"{host}-{pid}-{int(start) + 1}")  # same id, another start: the id was reused
    assert writer_is_dead(f"{host}-{2**22 + 17}-5")  # above Linux's largest pid: no such process
    assert not writer_is_dead(f"{'0' * 8 if host != '0' * 8 else '1' * 8}-{2**22 + 17}-5")  # another host
    assert not writer_is_dead(f"{host}-{pid}-0")  # start time unknown: cannot prove
    assert not writer_is_dead("garbage")
