"""The layout keeps its one-way flow (checked on the source, with the AST).

readers (io) -> tokenizer -> collator -> model -> probes -> inference -> api -> cli; training,
evaluation and the data engine sit beside the core and are never imported by it. These
tests fail on an import circle, an upward arrow, a private name imported across modules,
an overlong function and a face (``api.py``) that grew logic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
NAME = PACKAGE.name

#: Layers that must never import the layers named with them.
FORBIDDEN = {
    "inference": ("engine", "training", "evaluation", "cli"),
    "api": ("engine", "training", "evaluation", "cli"),
    "redshift": ("engine", "training", "evaluation", "inference", "api", "cli"),
    "templates": ("engine", "training", "evaluation", "inference", "api", "cli", "redshift"),
    "io": ("inference", "api", "cli", "training", "engine", "evaluation", "tokenizer", "collate", "model"),
    "model": ("inference", "api", "cli", "training", "engine", "evaluation", "io", "probes"),
    "probes": ("inference", "api", "cli", "training", "engine", "evaluation"),
    "flags": ("inference", "api", "cli", "training", "engine", "evaluation"),
}

MAX_FUNCTION_LINES = 80
MAX_API_LINES = 250


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package (tests left out)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "tests" in rel.parts or path.name == "_version.py":
            continue
        parts = rel.parts[:-1] if path.name == "__init__.py" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` of every import in a module (lazy ones too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in MODULES else (target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
    return [entry for entry in found if entry[0] == NAME or entry[0].startswith(NAME + ".")]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. A module importing its own package's ``__init__``
    (to reach a sibling) counts as importing that sibling's package only when it is not
    its own."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for target, _, _ in _imports(name, path):
            if target == name or name.startswith(target + "."):
                continue  # a package's own __init__ seen from inside is not an arrow
            targets.add(target)
        graph[name] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_circle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_a_circle_is_found():  # the check itself can fail
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_arrow(layer):
    bad = []
    for name, path in MODULES.items():
        if _layer(name) != layer:
            continue
        for target, _, line in _imports(name, path):
            if _layer(target) in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target, imported, line in _imports(name, path):
            private_module = any(part.startswith("_") and not part.startswith("__")
                                 for part in target.split(".")[1:])
            same_package = target.rsplit(".", 1)[0] == package
            if imported.startswith("_") and not imported.startswith("__"):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{imported}")
            elif private_module and not same_package:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports private module {target}")
    assert not bad, "\n".join(bad)


def _code_lines(node: ast.AST, source_lines: list[str]) -> int:
    """Lines of a function that are neither blank, comments nor its docstring."""
    body = node.body
    start = node.lineno
    doc = ast.get_docstring(node, clean=False)
    skip: set[int] = set()
    if doc is not None and isinstance(body[0], ast.Expr):
        skip = set(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for number in range(start, node.end_lineno + 1):
        text = source_lines[number - 1].strip()
        if number in skip or not text or text.startswith("#"):
            continue
        count += 1
    return count


def test_no_function_is_overlong():
    long = []
    for path in MODULES.values():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node, lines)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines (docstrings and comments not counted):\n" + "\n".join(long)


def test_the_face_holds_no_logic():
    path = PACKAGE / "api.py"
    assert len(path.read_text().splitlines()) <= MAX_API_LINES
    tree = ast.parse(path.read_text())
    logic = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert not logic, f"api.py defines {logic}: it re-exports the verbs of omnispectra.inference"


def test_the_documented_layers_are_current():
    import importlib.util

    script = PACKAGE.parent / "docs" / "layers.py"
    if not script.is_file():
        pytest.skip("docs/ is not in this installation")
    spec = importlib.util.spec_from_file_location("layers", script)
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    assert (PACKAGE.parent / "docs" / "architecture_layers.inc").read_text() == layers.layers_rst(), (
        "docs/architecture_layers.inc is out of date: run python docs/layers.py")
