"""Real example spectra shipped inside the package.

Three small files from three surveys, copied from permissively licensed repositories
(provenance in ``docs/examples.rst`` and below), so a fresh install has real data:

=============  ===========================================  =====================================
name           file                                         what
=============  ===========================================  =====================================
``sdss``       ``spec-0266-51602-0001.fits``                SDSS-I galaxy, z = 0.0213 (``spec`` file
                                                            trimmed to its first four HDUs, the
                                                            ``spec-lite`` layout; from
                                                            FireflySpectra/firefly_release, BSD)
``lamost``     ``spec-58397-EG014118N254444M01_sp03-031``   LAMOST DR6 low-resolution spectrum of an
                                                            F5 star (hypergravity/laspec, MIT)
``miles``      ``MILES_res2.50_star_m0066V.fits``           MILES v9.1 star HD 10307 (G1.5 V, Teff
                                                            5838 K; sdss/mangadap, BSD-3-Clause)
=============  ===========================================  =====================================
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["EXAMPLES", "example_path", "example_paths"]

EXAMPLES: dict[str, str] = {
    "sdss": "spec-0266-51602-0001.fits",
    "lamost": "spec-58397-EG014118N254444M01_sp03-031.fits",
    "miles": "MILES_res2.50_star_m0066V.fits",
}


def _examples_dir() -> Path:
    return Path(str(resources.files("omnispectra") / "data" / "examples"))


def example_path(name: str) -> Path:
    """Path of one bundled example spectrum (``'sdss'``, ``'lamost'`` or ``'miles'``)."""
    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; known: {', '.join(EXAMPLES)}")
    path = _examples_dir() / EXAMPLES[name]
    if not path.is_file():  # a broken install, not a user error
        raise FileNotFoundError(f"bundled example {path} is missing from this installation")
    return path


def example_paths() -> list[Path]:
    """Paths of all bundled example spectra, in the order of :data:`EXAMPLES`."""
    return [example_path(name) for name in EXAMPLES]
