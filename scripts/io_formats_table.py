"""Write docs/io_formats.rst: which file layouts read and which are refused, with the message.

The layouts are the ones the reader tests build (omnispectra/io/tests: test_edges, test_stitch,
test_table_layouts) and one file per folder of the shared real data; each is read with
:func:`omnispectra.io.read` and the outcome (format and spectra, or the error and its message)
goes into one table. Run from the repository root::

    OMNISPECTRA_DATA_DIR=/work/shared/data python scripts/io_formats_table.py
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

import omnispectra.io as oio
from omnispectra.io.tests import test_edges as edges
from omnispectra.io.tests import test_table_layouts as layouts

N = edges.N
OUT = Path(__file__).resolve().parents[1] / "docs" / "io_formats.rst"


def _cos_x1dsum(path: Path) -> Path:
    n = 300
    wave = np.vstack([np.linspace(1600, 1760, n), np.linspace(1400, 1560, n)])
    cols = [fits.Column("SEGMENT", "4A", array=["FUVA", "FUVB"]),
            fits.Column("WAVELENGTH", f"{n}D", array=wave, unit="angstrom"),
            fits.Column("FLUX", f"{n}E", array=np.full((2, n), 1e-14), unit="erg /s /cm**2 /angstrom"),
            fits.Column("ERROR", f"{n}E", array=np.full((2, n), 1e-15), unit="erg /s /cm**2 /angstrom"),
            fits.Column("DQ", f"{n}I", array=np.zeros((2, n), np.int16))]
    prim = fits.PrimaryHDU()
    prim.header.update(TELESCOP="HST", INSTRUME="COS", TARGNAME="WD1234")
    fits.HDUList([prim, fits.BinTableHDU.from_columns(cols, name="SCI")]).writeto(path)
    return path


def _pypeit(path: Path, echelle: bool) -> Path:
    prim = fits.PrimaryHDU()
    prim.header.update(PYPELINE="Echelle" if echelle else "MultiSlit", PYP_SPEC="vlt_xshooter_vis")
    if echelle:
        tables = [edges._pypeit_table("OBJ0001-ORDER0020-DET01", start=5500.0, order=20, objid=1),
                  edges._pypeit_table("OBJ0001-ORDER0021-DET01", start=5650.0, order=21, objid=1)]
    else:
        tables = [edges._pypeit_table(f"SPAT0{k}00-SLIT0456-DET01") for k in (1, 3)]
    fits.HDUList([prim, *tables]).writeto(path)
    return path


def _jwst_s2d(path: Path) -> Path:
    ny, nx = 30, 400
    prim = fits.PrimaryHDU()
    prim.header.update(TELESCOP="JWST", INSTRUME="NIRSPEC")
    wave = fits.ImageHDU(np.tile(np.linspace(1.0, 5.0, nx), (ny, 1)) + 1e-4 * np.arange(ny)[:, None],
                         name="WAVELENGTH")
    wave.header["BUNIT"] = "um"
    fits.HDUList([prim, fits.ImageHDU(np.ones((ny, nx)), name="SCI"), wave]).writeto(path)
    return path


def _ascii_gz(path: Path) -> Path:
    import gzip

    wave = np.linspace(4000.0, 5000.0, 50)
    lines = ["# wavelength flux error"] + [f"{w:.2f} 1.0 0.1" for w in wave]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _repeat_row(path: Path) -> Path:
    wave = np.linspace(4000.0, 7000.0, N)
    wave[101] = wave[100]
    return edges._rows_file(path, [wave, np.linspace(0.5, 0.9, N), np.full(N, 0.01)])


#: (layout, file name, builder) of the layouts the tests build.
BUILT: list[tuple[str, str, Callable[[Path], Path]]] = [
    ("1-D image, WCS in Angstrom", "wcs.fits",
     lambda p: edges._image(p, CTYPE1="WAVE", CRVAL1=4000.0, CDELT1=1.0, CRPIX1=1, CUNIT1="Angstrom")),
    ("1-D image, unit in CTYPE1 ('ANGSTROM')", "ctype.fits",
     lambda p: edges._image(p, CTYPE1="ANGSTROM", CRVAL1=4000.0, CDELT1=2.0, CRPIX1=1)),
    ("1-D image, WCS in nm without a unit", "nm.fits",
     lambda p: edges._image(p, CTYPE1="WAVE", CRVAL1=400.0, CDELT1=0.2, CRPIX1=1)),
    ("1-D image, log10 WCS without DC-FLAG or unit", "log.fits",
     lambda p: edges._image(p, CTYPE1="LINEAR", CRVAL1=3.58, CDELT1=1e-4, CRPIX1=1)),
    ("image rows, wavelength row with a repeated value", "rep.fits", _repeat_row),
    ("two 1-D image HDUs, each with its own WCS", "two.fits", lambda p: edges._multi_hdu(p, 2)),
    ("IRAF multispec, Legendre dispersion", "leg.fits",
     lambda p: edges._legendre_file(p, "3", "5000. 100. 1.")),
    ("IRAF multispec, WAT2 claiming a Legendre order of 10^8", "hostile.fits",
     lambda p: edges._legendre_file(p, "100000000", "5000. 100. 1.")),
    ("JWST x1d (Jy, error column in mJy)", "mjy_x1d.fits", lambda p: edges._jwst_x1d(p, "mJy")),
    ("JWST x1d, error column in km/s", "bad_x1d.fits", lambda p: edges._jwst_x1d(p, "km/s")),
    ("JWST x1d, NaN wavelengths flagged DO_NOT_USE", "nan_x1d.fits",
     lambda p: edges._jwst_x1d(p, nan_wave=(0, 1, 199))),
    ("JWST x1d, NaN wavelengths not flagged", "nanu_x1d.fits",
     lambda p: edges._jwst_x1d(p, nan_wave=(5,), flag_nan=False)),
    ("JWST s2d (2-D slit image)", "jw_s2d.fits", _jwst_s2d),
    ("HST/COS x1dsum, segments FUVA + FUVB", "lb_x1dsum.fits", _cos_x1dsum),
    ("PypeIt spec1d, multi-slit (2 objects)", "spec1d_slits.fits", lambda p: _pypeit(p, False)),
    ("PypeIt spec1d, echelle (2 orders of 1 object)", "spec1d_ech.fits", lambda p: _pypeit(p, True)),
    ("gzipped ASCII with a commented header", "spec.txt.gz", _ascii_gz),
]


def _outcome(path: Path) -> tuple[str, str]:
    """``(result, detail)``: ``read`` and ``<format>: <n> spectra``, or ``refused`` and the error."""
    try:
        spectra = oio.read(path)
    except Exception as err:  # every refusal is recorded with its message
        text = str(err).replace(str(path.parent) + os.sep, "")
        return "refused", f"{type(err).__name__}: {text[:220]}"
    kinds = {s.meta.get("format", "?") for s in spectra}
    stitched = sum("stitched" in s.meta for s in spectra)
    extra = f" ({stitched} stitched from orders/arms/segments)" if stitched else ""
    return "read", f"{', '.join(sorted(kinds))}: {len(spectra)} spectrum/spectra{extra}"


def _shared_cases(data: Path) -> list[tuple[str, Path]]:
    """One file per folder of the shared data (the first FITS/HDF5 file found, sorted)."""
    cases = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.rglob("*") if f.is_file() and ".fits" in f.name or f.suffix == ".h5")
        if files:
            cases.append((f"shared data: {folder.name}/", files[0]))
    from omnispectra.io.tests.test_real_data import INVALID_FILES, NOT_SPECTRA

    cases += [(f"shared data: {rel}", data / rel) for rel in sorted(NOT_SPECTRA) + sorted(INVALID_FILES)]
    return cases


def _rst(rows: list[tuple[str, str, str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("\n", " ").replace("|", "/").replace("`", "'").replace("*", "\\*")

    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 15 8 47", "",
             "   * - Layout", "     - File", "     - Result", "     - Format / message"]
    for layout, name, result, detail in rows:
        lines += [f"   * - {cell(layout)}", f"     - ``{cell(name)}``", f"     - {result}",
                  f"     - {cell(detail)}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, name, build in BUILT:
            rows.append((layout, name, *_outcome(build(Path(tmp) / name))))
    data = os.environ.get("OMNISPECTRA_DATA_DIR")
    if data:
        for layout, path in _shared_cases(Path(data)):
            rows.append((layout, path.name, *_outcome(path)))
    head = ("File formats: what reads and what is refused\n"
            "============================================\n\n"
            "Made by ``scripts/io_formats_table.py`` from the layouts the reader tests build\n"
            "(``omnispectra/io/tests``) and one file per folder of the shared real data. Every refusal is a\n"
            "typed error of :mod:`omnispectra.exceptions` naming the file and the problem. Orders, arms and\n"
            "segments of one target are stitched into one spectrum (:mod:`omnispectra.io.stitch`;\n"
            "``read(path, stitch=False)`` keeps them apart); fibres of multi-object files never are.\n\n")
    OUT.write_text(head + _rst(rows))
    print(f"wrote {OUT} ({len(rows)} layouts)")


if __name__ == "__main__":
    _ = layouts  # the table layouts' builders are importable here for further rows
    main()
