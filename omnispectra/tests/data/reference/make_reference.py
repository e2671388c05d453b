"""Write the reference outputs of the example spectra (``python make_reference.py SHARED_DATA_DIR``).

The tables in this folder were made by this script on the code of the commit that added
them; ``omnispectra/tests/test_api_reference.py`` compares today's outputs with them, so
that a refactoring that changes an answer fails. Regenerate one only for a deliberate
change of behaviour, in a commit of its own that says why.
"""

from __future__ import annotations

import sys
from pathlib import Path

import omnispectra
from omnispectra.examples import example_paths

HERE = Path(__file__).parent


#: Real files of other layouts from the shared data (``../shared/data``), when present.
SHARED_FILES = ("6dfgs/g0001363-380156.ir.fits", "vimos/VANDELS_CDFS_017433.fits",
                "legac/legac_M19_56670_v3.0.fits", "lijiang/spec_J001554.18+560257.5_LJT.fits")


def reference_inputs(shared: Path) -> dict[str, list[str]]:
    """``{set name: paths}``: the bundled examples, and files of the shared data folder.

    Each set is run in its own calls, so its batches (and float round-off) do not depend
    on whether the other set is present.
    """
    return {"examples": [str(p) for p in example_paths()],
            "shared": [str(shared / name) for name in SHARED_FILES]}


def reference_tables(paths: list[str], templates: str | None) -> dict:
    """``{name: Table}`` of the reference outputs; the template ones only with ``templates``."""
    tables = {
        "classify": omnispectra.classify(paths),
        "embed": omnispectra.embed(paths, as_table=True),
        "predict_stellar": omnispectra.predict_stellar_parameters(paths),
    }
    if templates is not None:
        tables["classify_full"] = omnispectra.classify(paths, full=True, templates=templates)
        tables["predict_redshift"] = omnispectra.predict_redshift(paths, templates=templates)
    return tables


if __name__ == "__main__":
    shared = Path(sys.argv[1])  # the shared data folder, with templates/redrock
    for set_name, paths in reference_inputs(shared).items():
        for name, table in reference_tables(paths, str(shared / "templates" / "redrock")).items():
            table.meta = {}  # provenance (versions, hashes, paths) is not behaviour
            if "source_file" in table.colnames:
                table["source_file"] = [Path(p).name for p in table["source_file"]]
            table.write(HERE / f"{set_name}_{name}.ecsv", overwrite=True)
