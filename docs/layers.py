"""Write the package's layers as an RST list, read off the code (``python docs/layers.py``).

Each module is listed under its layer with the first sentence of its docstring and the
layers it imports, so the picture in ``docs/architecture.rst`` is made from the code;
``omnispectra/tests/test_architecture.py`` checks that the committed
``docs/architecture_layers.inc`` is what this script writes today.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "omnispectra"
OUTPUT = Path(__file__).resolve().parent / "architecture_layers.inc"

#: Layers from the user down, and the modules of each (by dotted prefix under omnispectra).
LAYERS = [
    ("face", "what users call", ["cli", "api", "__init__"]),
    ("inference", "spectra in, answers out", ["inference"]),
    ("predictors", "heads, evidence and flags on top of the model", ["probes", "class_evidence", "redshift",
                                                                    "flags", "results"]),
    ("model", "the network, its weights and where it runs", ["model", "pretrained", "runtime"]),
    ("tokens", "arrays to tokens and batches", ["spectrum", "tokenizer", "masking", "collate"]),
    ("readers", "files to spectra", ["io"]),
    ("shared", "used at every level", ["templates", "exceptions", "fileio", "examples", "_version"]),
    ("beside the core (never imported by it)", "training, evaluation and data building",
     ["training", "evaluation", "engine", "corpus", "dataset", "splits", "plotting", "report"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if "tests" in rel.parts or path.name == "_version.py":
            continue
        parts = rel.parts[:-1] if path.name == "__init__.py" else rel.parts
        out[".".join(parts) or "__init__"] = path
    return out


def _layer_of(name: str) -> str:
    for layer, _, prefixes in LAYERS:
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return layer
    return "unplaced"


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".") if first else "(no docstring)"


def _imported_layers(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                found.add(_layer_of(sub if sub in modules else target))
    found.discard(_layer_of(name))
    found.discard("unplaced")
    order = [layer for layer, _, _ in LAYERS]
    return sorted(found, key=order.index)


def layers_rst() -> str:
    """The RST list of layers, modules, their summaries and the layers they import."""
    modules = _modules()
    lines = [".. This file is written by docs/layers.py from the code; do not edit it by hand.", ""]
    for layer, what, _ in LAYERS:
        members = [n for n in modules if _layer_of(n) == layer]
        if not members:
            continue
        lines += [f"- **{layer}** ({what})", ""]
        for name in members:
            uses = _imported_layers(name, modules[name], modules)
            arrow = f" *(uses: {', '.join(uses)})*" if uses else ""
            shown = "omnispectra" if name == "__init__" else f"omnispectra.{name}"
            lines.append(f"  - ``{shown}``: {_summary(modules[name])}.{arrow}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(layers_rst())
    sys.stdout.write(f"wrote {OUTPUT}\n")
