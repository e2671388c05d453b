"""Writing files safely: one atomic-write helper and one output-path check for every writer.

Rules every writer of the package follows:

- :func:`check_output` runs **before any work**: an output that is one of the inputs is
  always refused (after resolving symlinks, and by inode, so a hard link or another
  spelling of the same file is caught too), and an existing output is refused unless
  the caller asked to overwrite it.
- :func:`atomic_write` writes to a hidden temporary file in the target folder, flushes it
  to disk (``fsync``), gives it the mode a plain ``open()`` would (:func:`default_file_mode`)
  and renames it over the target with :func:`os.replace`. An interrupted write never
  leaves a truncated file under the final name, and never damages the file it replaces.

Example::

    from omnispectra.fileio import atomic_write, check_output

    check_output("result.ecsv", inputs=["spectrum.fits"], overwrite=False)
    ...  # the computation
    with atomic_write("result.ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .exceptions import OutputExistsError, OutputIsInputError

__all__ = ["default_file_mode", "atomic_write", "commit", "write_bytes", "write_text", "check_output",
           "same_file", "safe_filename", "writer_tag", "writer_is_dead"]


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask.

    ``tempfile.mkstemp`` creates files readable by their owner only; files written
    through a temporary name and renamed into place get this mode first.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (not possible everywhere, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Context manager yielding a temporary path that replaces ``path`` on success.

    The caller writes the whole file to the yielded path (with any library: h5py,
    ``Table.write``, ``torch.save``, ...). On a clean exit the file is fsynced, given
    ``mode`` (default :func:`default_file_mode`) and renamed to ``path`` with
    :func:`os.replace`; on any exception (``KeyboardInterrupt`` included) it is deleted
    and ``path`` is left as it was. Missing parent folders are created.

    The temporary name (``.<name>.<random>.tmp<suffixes>``) ends with ``path``'s suffixes,
    so writers that pick a format from the file name see the right one.

    Parameters
    ----------
    path : path-like
        The final file.
    mode : int, optional
        Permission bits of the final file.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.suffixes else ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()  # writers such as h5py or Table.write refuse an existing file
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        commit(tmp, path, mode)
    finally:
        if tmp.exists():
            tmp.unlink()


def commit(tmp: str | os.PathLike, path: str | os.PathLike, mode: int | None = None) -> None:
    """Move a complete temporary file over ``path``: fsync, set its mode, rename atomically.

    For writers that stream into their own temporary file over a long time (the corpus
    builder, Lightning's checkpoint IO); :func:`atomic_write` ends with this. ``tmp`` must
    be in ``path``'s folder (a rename does not cross file systems). ``mode`` defaults to
    :func:`default_file_mode` (``mkstemp`` makes files readable by their owner only).
    """
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, default_file_mode() if mode is None else mode)
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    write_bytes(path, text.encode(encoding))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: same resolved path, or same device and inode."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.resolve() == pb.resolve():
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:  # one of them does not exist: they cannot be one file
        return False


def _input_paths(inputs: Iterable[object]) -> list[Path]:
    """The paths among ``inputs``; in-memory inputs (spectra, arrays) cannot be overwritten."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return [Path(item).expanduser() for item in inputs if isinstance(item, (str, os.PathLike))]


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Refuse an output path that would destroy data; call it before any work.

    Parameters
    ----------
    path : path-like
        The file about to be written.
    inputs : iterable of path-like
        The files (or folders) the command reads; other objects (in-memory spectra) are
        ignored. An existing file inside an input folder counts as an input (the folder's
        files are read).
    overwrite : bool
        Allow replacing an existing output that is not an input.

    Returns
    -------
    Path
        ``path`` as a Path (``~`` expanded).

    Raises
    ------
    OutputIsInputError
        ``path`` is one of the inputs (symlinks resolved, hard links caught by inode);
        ``overwrite`` does not change this.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    out = Path(path).expanduser()
    for item in _input_paths(inputs):
        if same_file(out, item) or (item.is_dir() and out.is_file() and _inside(out, item)):
            raise OutputIsInputError(
                f"the output {out} is one of the inputs ({item}); writing it would destroy the "
                "input. Choose another output path")
    if out.is_dir():
        raise OutputExistsError(f"the output {out} is a folder; give a file name")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(
            f"the output {out} already exists; pass overwrite=True to replace it")
    return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_filename(part: str, max_length: int = 100) -> str:
    """A string made safe as one component of a file name.

    Runs of characters other than letters, digits, ``.``, ``_``, ``+`` and ``-`` (path
    separators, spaces, control characters) become ``_``; leading dots are dropped so
    the name is neither hidden nor ``..``; an empty result becomes ``_``.
    """
    cleaned = _UNSAFE.sub("_", str(part)).lstrip(".")[:max_length]
    return cleaned or "_"


# ---------------------------------------------------------------------------------------
# who wrote a temporary file: a long writer (the corpus builder) names its temporary files
# with this tag, so that a later run can prove the writer dead before removing them

_TAG = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>[1-9][0-9]*)-(?P<start>[0-9]+)$")


def _host_tag() -> str:
    """8 hex digits naming this machine (process ids mean nothing on another host)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _process_state(pid: int) -> tuple[str, int] | None:
    """``(state letter, start time in clock ticks after boot)`` of a process from Linux's
    ``/proc/<pid>/stat``; None where it cannot be read (no such process, no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_tag() -> str:
    """``<host>-<pid>-<start>`` of the running process, for the names of its temporary files.

    ``start`` is the process's start time (Linux ``/proc``; 0 where unknown), so that a
    later process that reuses the id is not mistaken for the writer (:func:`writer_is_dead`).
    """
    state = _process_state(os.getpid())
    return f"{_host_tag()}-{os.getpid()}-{state[1] if state else 0}"


def writer_is_dead(tag: str) -> bool:
    """Whether the process a :func:`writer_tag` names has provably ended.

    True only when the tag is from this host and no process has its id, or the process
    with its id started at another time (the id was reused) or is a zombie. Anything that
    cannot be proved (another host, a malformed tag, no ``/proc`` to compare start times)
    gives False: a live writer's file must never be removed.
    """
    match = _TAG.match(tag)
    if match is None or match["host"] != _host_tag():
        return False
    pid, start = int(match["pid"]), int(match["start"])
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists (another user's)
        pass
    except OSError:
        return False
    state = _process_state(pid)
    if state is None or start == 0:
        return False
    return state[0] == "Z" or state[1] != start
