"""Build the compact Redrock templates bundled with omnispectra (and check them).

Reads the Redrock ``rrtemplate-*.fits[.gz]`` files the redshift fit uses (every file of
``SOURCE/redrock`` except the old ``QSO-None`` basis, as
:func:`omnispectra.templates.library.load_library` chooses them), validated and put on the
fitter's uniform log10 grid, and writes them in float32 with
:func:`~omnispectra.templates.library.write_compact` to
``OUTPUT/redrock-templates-compact.npz``; the upstream licence is copied next to it as
``OUTPUT/redrock-templates-LICENSE.md``. The file's header records the release, the grid and,
per source file, its sha256 (as read, and of its uncompressed bytes, which is what the
package registry pins for the upstream file). The output depends only on the input files:
running the script twice gives the same bytes.

Usage::

    python scripts/make_compact_templates.py --source ../shared/data/templates -o omnispectra/data
    python scripts/make_compact_templates.py --source ../shared/data/templates --compare

``--compare`` fits the example spectra shipped with the package with the full templates and
with the compact file of ``-o`` and prints z, deltachi2 and their differences.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
from pathlib import Path

from omnispectra.pretrained import TEMPLATES_RELEASE, bundled_templates_path, sha256sum
from omnispectra.templates.library import FINE_DLOGLAM, load_library, write_compact

COMPACT_NAME = "redrock-templates-compact.npz"
LICENSE_NAME = "redrock-templates-LICENSE.md"
#: The release recorded in the compact file (``meta['TMPLREL']`` of results made with it).
COMPACT_RELEASE = f"{TEMPLATES_RELEASE} compact-f32"


def _uncompressed_sha256(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    digest = hashlib.sha256()
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(source: Path, output: Path) -> Path:
    """Write the compact file and the licence into ``output``; return the compact file."""
    root = source.parent if source.name == "redrock" else source
    library = load_library(root, pyhammer=False)
    files = sorted({Path(t.source) for t in library.templates})
    info = {
        "release": COMPACT_RELEASE,
        "form": f"Redrock bases bin-averaged onto a uniform log10 grid (dloglam {FINE_DLOGLAM:g} for linear "
                "files, the file's own step for log files), float32, no archetype rows",
        "builder": "scripts/make_compact_templates.py",
        "license": f"{LICENSE_NAME} (BSD-3-Clause, DESI Collaboration)",
        "sources": [{"file": f.name, "sha256": sha256sum(f), "sha256_uncompressed": _uncompressed_sha256(f)}
                    for f in files],
    }
    licence = root / "redrock" / "LICENSE.md"
    if not licence.is_file():
        raise SystemExit(f"{licence} is missing: the templates may not be shipped without their licence")
    output.mkdir(parents=True, exist_ok=True)
    target = output / COMPACT_NAME
    write_compact(library, target, info=info)
    shutil.copyfile(licence, output / LICENSE_NAME)
    print(f"wrote {target}: {len(library)} templates, {target.stat().st_size} bytes, "
          f"sha256 {sha256sum(target)}")
    return target


def compare(source: Path, compact: Path) -> None:
    """Fit the example spectra with the full templates and with ``compact``; print the differences."""
    import omnispectra
    from omnispectra.examples import example_paths
    from omnispectra.redshift import RedshiftFitter

    root = source.parent if source.name == "redrock" else source
    full, small = RedshiftFitter(directory=root), RedshiftFitter(directory=compact)
    print(f"{'spectrum':<48} {'spectype':<8} {'z full':>12} {'dz':>10} {'deltachi2':>12} {'d deltachi2':>12}")
    for path in example_paths():
        spectrum = omnispectra.read(path)[0]
        a, b = full.fit(spectrum), small.fit(spectrum)
        same = ("" if (a.spectype, a.flag) == (b.spectype, b.flag)
                else f"  DIFFERENT: {b.spectype} flag {b.flag}")
        print(f"{path.name:<48} {a.spectype:<8} {a.z:>12.7f} {b.z - a.z:>10.2e} {a.deltachi2:>12.3f} "
              f"{b.deltachi2 - a.deltachi2:>12.2e}{same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/templates"),
                        help="Template folder holding redrock/rrtemplate-*.fits[.gz] and redrock/LICENSE.md.")
    parser.add_argument("-o", "--output", type=Path, default=bundled_templates_path().parent,
                        help="Output folder (default: the package's data folder).")
    parser.add_argument("--compare", action="store_true",
                        help="Do not build: compare the full and compact templates on the example spectra.")
    args = parser.parse_args()
    if args.compare:
        compare(args.source, args.output / COMPACT_NAME)
    else:
        build(args.source, args.output)


if __name__ == "__main__":
    main()
