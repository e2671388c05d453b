"""The docs run: every Python snippet of README.md and docs/**/*.rst, as written.

Each file's snippets (```python blocks, ``.. code-block:: python``) run in order in one
namespace, in an empty temporary working directory, on the example spectra shipped with
the package. A snippet that cannot run in a test says so in its first line, visibly to
readers: ``# not run by the docs test: <why>``. Skips when the docs are not next to the
package (an installed wheel).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The first line of a snippet the test does not run, followed by the reason.
NOT_RUN = "# not run by the docs test:"

#: At most this many snippets may be left out (training for minutes, a GPU).
MAX_NOT_RUN = 3

_MARKDOWN = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_RST = re.compile(r"^([ \t]*)\.\. code-block:: python[ \t]*\n")


def doc_files() -> list[Path]:
    """README.md and every .rst page of docs/, sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.rst"))]


def rst_blocks(text: str) -> list[str]:
    """The ``.. code-block:: python`` bodies of a reST text, dedented."""
    lines, blocks = text.splitlines(), []
    for i, line in enumerate(lines):
        head = _RST.match(line + "\n")
        if not head:
            continue
        indent, j = len(head.group(1)), i + 1
        while j < len(lines) and re.match(r"^\s+:\w[\w-]*:", lines[j]):  # directive options
            j += 1
        body: list[str] = []
        for rest in lines[j:]:
            if rest.strip() and len(rest) - len(rest.lstrip()) <= indent:
                break
            body.append(rest)
        width = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        blocks.append("\n".join(b[width:] for b in body).strip("\n") + "\n")
    return blocks


def snippets(path: Path) -> list[str]:
    """The Python snippets of one docs file, in order."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return [m.group(1) for m in _MARKDOWN.finditer(text)]
    return rst_blocks(text)


def _files_with_snippets() -> list[Path]:
    if not (ROOT / "docs").is_dir() or not (ROOT / "README.md").is_file():
        return []
    return [p for p in doc_files() if snippets(p)]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_extraction():
    text = ("Text\n\n.. code-block:: python\n   :caption: x\n\n    a = 1\n\n    b = a + 1\n\n"
            "Back to text.\n\n  .. code-block:: python\n\n     c = 3\n")
    assert rst_blocks(text) == ["a = 1\n\nb = a + 1\n", "c = 3\n"]
    assert rst_blocks(".. code-block:: bash\n\n    ls\n") == []


@pytest.fixture
def quiet_plots(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_few_snippets_left_out():
    files = _files_with_snippets()
    if not files:
        pytest.skip("the docs are not next to the package")
    blocks = [b for p in files for b in snippets(p)]
    left_out = [b for b in blocks if b.startswith(NOT_RUN)]
    assert len(blocks) >= 15  # the extraction finds the snippets
    assert len(left_out) <= MAX_NOT_RUN, left_out
    assert all(len(b.splitlines()[0]) > len(NOT_RUN) + 5 for b in left_out), "say why it is not run"


@pytest.mark.parametrize("path", _files_with_snippets(), ids=_id)
def test_snippets_run(path, tmp_path, monkeypatch, quiet_plots):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for k, block in enumerate(snippets(path)):
        if block.startswith(NOT_RUN):
            continue
        code = compile(block, f"{_id(path)} snippet {k + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own code, as a reader runs it
