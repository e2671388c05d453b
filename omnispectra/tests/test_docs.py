"""The docs run and are complete.

Every Python snippet of README.md and docs/**/*.rst runs as written: each file's snippets
(```python blocks, ``.. code-block:: python``) run in order in one namespace, in an empty
temporary working directory, on the example spectra shipped with the package. A snippet
that cannot run in a test says so in its first line, visibly to readers:
``# not run by the docs test: <why>``. Skips when the docs are not next to the package
(an installed wheel).

``docs/cli.rst`` lists every environment variable the package reads (of its tests, the
``OMNISPECTRA_`` ones), found in the code's syntax tree: ``os.environ.get(NAME)``,
``os.environ[NAME]``, ``os.getenv(NAME)``, ``NAME in os.environ``, with ``NAME`` a string
or a module constant holding one.
"""

from __future__ import annotations

import ast
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


# --------------------------------------------------------------------------- environment variables


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


def _environ_keys(tree: ast.AST) -> list[ast.AST]:
    """The key expressions of every read of the environment in a module."""
    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and (
                    (func.attr in ("get", "pop") and _is_environ(func.value)) or func.attr == "getenv"):
                keys.append(node.args[0])
            elif isinstance(func, ast.Name) and func.id == "getenv":
                keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.ctx, ast.Load):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            keys.append(node.left)
    return keys


def environment_variables(source: str, where: str = "<source>") -> set[str]:
    """Names of the environment variables one module reads.

    Raises
    ------
    AssertionError
        A name that is neither a string nor a module-level string constant (the test
        cannot tell which variable it is: name it).
    """
    tree = ast.parse(source)
    constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for t in node.targets if isinstance(t, ast.Name)}
    names = set()
    for key in _environ_keys(tree):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            names.add(constants[key.id])
        else:
            raise AssertionError(f"{where}:{key.lineno}: an environment variable whose name the docs "
                                 f"test cannot tell ({ast.unparse(key)}); use a string or a module constant")
    return names


def test_environment_variables_are_found():
    code = ("import os\nfrom os import environ, getenv\nENV = 'C'\n"
            "os.environ.get('A', '1'); os.environ['B']; os.getenv(ENV); 'D' in os.environ\n"
            "environ.get('E'); getenv('F'); os.environ['W'] = '1'\n")
    assert environment_variables(code) == {"A", "B", "C", "D", "E", "F"}
    with pytest.raises(AssertionError, match="cannot tell"):
        environment_variables("import os\nos.environ.get(name)\n")


def test_cli_page_lists_every_environment_variable():
    page = ROOT / "docs" / "cli.rst"
    if not page.is_file():
        pytest.skip("the docs are not next to the package")
    text = page.read_text(encoding="utf-8")
    section = text[text.index("Environment variables\n---"):].split("\nReference\n")[0]
    listed = set(re.findall(r"``([A-Z][A-Z0-9_]+)``", section))
    package = ROOT / "omnispectra"
    read = {}
    for path in package.rglob("*.py"):
        is_test = "tests" in path.relative_to(package).parts
        for name in environment_variables(path.read_text(encoding="utf-8"), str(path)):
            # the tests' own settings; not Python's (PYTHONPATH handed to a subprocess)
            if not is_test or name.startswith("OMNISPECTRA_"):
                read[name] = path
    assert {"OMNISPECTRA_TEMPLATES", "OMNISPECTRA_MAX_PIXELS"} <= set(read)  # the scan sees them
    missing = {name: str(path.relative_to(ROOT)) for name, path in read.items() if name not in listed}
    assert not missing, f"read by the code but not listed in docs/cli.rst: {missing}"
    stale = listed - set(read)
    assert not stale, f"listed in docs/cli.rst but read nowhere: {stale}"
