"""Survey readers: FITS/HDF5 spectrum files -> :class:`specutils.Spectrum` objects.

A small registry in the style of specutils' io registry: every format registers a
reader function with :func:`register_reader` (``@register_reader("sdss",
identify=identify_sdss, extensions=(".fits",), priority=60)``) and an identifier that
looks at the file's headers once (:class:`FileProbe`).  :func:`read` auto-detects the
format (highest priority first; an identifier that raises means "not this format") or
uses ``format=``; it always returns a :class:`specutils.SpectrumList`.

Contract every reader meets
---------------------------
Each spectrum is 1-D, one per object/row of the file, with

* ``spectral_axis``: **vacuum Angstrom**, strictly increasing (a decreasing axis is
  reversed; a non-monotonic one raises :class:`InvalidSpectrumError`).  Air wavelengths
  (MILES, X-shooter XSL, LEGA-C, LAMOST files whose ``VACUUM = F``) are converted with
  :func:`specutils.utils.wcs_utils.air_to_vac` (Morton 2000) and ``meta['medium'] =
  'air->vacuum'``; ``meta['medium'] = 'vacuum'`` when the file or its survey's convention
  says vacuum, and ``'unknown'`` (wavelengths unchanged) when nothing says (generic
  tables, MMU VIPERS).  Unit-less wavelengths are taken as Angstrom only when plausible
  (``meta['wave_unit_assumed']``, :mod:`omnispectra.io.tables`), else refused.
* ``flux``: a Quantity in the file's unit when known (``1e-17 erg / (s cm2 Angstrom)``
  for SDSS/BOSS/DESI/apStar/MaNGA, ``erg / (s cm2 Angstrom)`` for XSL, ``1e-19 ...`` for
  LEGA-C), ``dimensionless`` when the file has none (APOGEE aspcapStar normalised flux,
  MILES, LAMOST relative flux, DESI stacks).  Non-finite flux values are set to 0 and
  masked (pixels are never dropped).
* ``uncertainty``: always :class:`~astropy.nddata.InverseVariance` (unit flux**-2).
  Errors are converted as 1/err**2 with ivar = 0 where err <= 0 or non-finite.  Files
  without errors (MILES) get ivar = 1 for finite flux and
  ``meta['ivar_is_placeholder'] = True``.
* ``mask``: boolean, True = bad: ivar <= 0, non-finite flux, plus the survey's bad
  bits (SDSS: the SPPIXMASK bits that mean bad, :data:`omnispectra.io.sdss.BAD_PIXEL_BITS`,
  not the informational ones such as BADFLAT; DESI ``MASK != 0``; APOGEE pixel-mask bits 0-7,14 and chip
  gaps; LAMOST ``andmask != 0``; MaNGA ``MASK != 0``; ESO ``QUAL != 0``).
* ``meta`` (a dict) with at least:

  - ``id``: unique across a data set: the file stem, plus ``:<row>``, ``:<TARGETID>``
    (DESI), ``:B``/``:R`` (LAMOST MRS arms) for files holding several spectra;
  - ``object_id``: shared by every spectrum of one physical object (SDSS: photometric
    objid ``sdss:<objid>`` / ``sdss_thing:<THING_ID>`` / RA-Dec; LAMOST: RA-Dec rounded to
    1 arcsec ``radec:...``; DESI ``desi:<TARGETID>``; APOGEE the APOGEE id; MILES the MILES id
    such as ``s0505``; XSL the ``OBJECT`` name; MaNGA ``<stem>:<row>``);
  - ``survey``: ``sdss``, ``boss``, ``eboss``, ``segue``, ``desi``, ``apogee``,
    ``lamost_lrs``, ``lamost_mrs``, ``miles``, ``xshooter``, ``manga``, ``legac``,
    ``vipers``, ... (from the headers where possible);
  - ``source_file`` (absolute path string), ``format`` (the reader's identifier),
    ``rest_frame`` (bool; True for stacks such as ``desi/stack-LRG.fits`` and XSL spectra
    with ``REST_COR = T``), ``medium``;
  - labels when the file has them, under exactly these keys: ``class`` (upper-case
    ``GALAXY``/``QSO``/``STAR``), ``subclass``, ``z``, ``z_err``, ``teff`` (K), ``logg``,
    ``fe_h``.  Missing values are absent (never -9999/9999 sentinels).  APOGEE raw grid
    values go to ``teff_fparam`` etc., never to the main keys.
  - ``header_warnings``: warnings astropy emits while a file is read (e.g. about
    non-standard header cards) are recorded here instead of being re-emitted.  (The 11
    APOGEE aspcapStar files with ``AKTARG``/``AKWISE = NaN`` cards read without any
    warning: those cards are never parsed.)

* Input files are opened read-only with ``memmap=False`` and closed before returning.

Errors
------
Every failure is an :class:`~omnispectra.exceptions.OmniSpectraError` whose message names
the file: :class:`SpectrumFormatError` (missing, truncated, corrupt, or lacking the
expected HDUs/columns), :class:`UnknownFormatError` (no reader recognises the file; lists
the known formats), :class:`NotASpectrumError` (a readable file without a sampled spectrum:
DESI redrock files, catalogues, Gaia XP coefficient tables), :class:`InvalidSpectrumError`
(all-zero ivar, NaN-only flux, non-monotonic wavelengths).  In files with many spectra
an invalid row is skipped (noted in the other spectra's meta) unless all rows are invalid.

Formats
-------
``sdss`` (SDSS/BOSS/eBOSS/SEGUE spec files), ``desi`` (coadd/spectra), ``desi_stack``,
``apogee_aspcapstar``, ``apogee_apstar``, ``lamost_lrs``, ``lamost_mrs``, ``miles``,
``xshooter_xsl``, ``manga``, ``eso_phase3`` (LEGA-C, VIMOS/VIPERS-style and other FITS
WAVE/FLUX/ERR tables, PyHammer templates), ``mmu`` (Multimodal Universe HDF5, incl.
VIPERS), ``deimos`` (Keck/DEIMOS spec1d), ``uves_popler``, ``x1d`` (JWST/HST extracted
spectra, one per order), ``ascii_table`` (CSV/ECSV/text tables named explicitly),
``pypeit_spec1d`` (PypeIt spec1d, one object per BinTable), ``specutils`` (anything specutils reads;
tried last).  See :func:`list_formats`.
FITS images: ``6dfgs``, ``sdss_spspec`` (SDSS-I/II spSpec), and the generic
``iraf_multispec``, ``fits_image`` and ``fits_image_rows`` (:mod:`omnispectra.io.fits_image`), whose
axes come from :mod:`omnispectra.io.spectral_wcs`; they say ``medium = 'unknown'`` (wavelengths
kept as written) when nothing in the file says air or vacuum.  No reader ever uses the pixel index
as the wavelength, and axes outside 100 A - 100 um (radio, X-ray, velocity) are refused
(:class:`~omnispectra.exceptions.UnitsError`, checked in :func:`build_spectrum`).

Every format is also a specutils format (``Spectrum.read(path, format="omnispectra-lamost")``,
``omnispectra-miles``, ``omnispectra-xshooter``, ``omnispectra-legac`` ...;
:mod:`omnispectra.io.specutils_registry`); those never take part in specutils'
auto-identification.

Iterating over many files
-------------------------
:func:`iter_spectra` (:mod:`omnispectra.io.sources`, the one owner of path expansion,
suffixes and the id rule) takes files, directories (walked for ``.fits``,
``.fits.gz``, ``.hdf5`` ...) and glob patterns, in sorted order, and returns a
:class:`SpectrumIterator` whose ``failures`` list of :class:`ReadFailure` ``(path, error)``
tells a corpus builder what failed and why (``on_error='raise'|'warn'|'skip'``).
"""

from ._common import Spectrum, SpectrumList, air_to_vacuum, build_spectrum, err_to_ivar, file_stem
from .registry import (
    FileProbe,
    ReaderInfo,
    get_reader,
    identify_format,
    identify_formats,
    list_formats,
    probe_file,
    read,
    register_reader,
)
from .sources import SPECTRUM_FILE_SUFFIXES, ReadFailure, SpectrumIterator, SpectrumReadWarning, iter_spectra

# Importing the reader modules registers them, in this order (isort would alphabetise it, so it is
# switched off for the block: generic image layouts must come after the specific formats and the
# specutils fallback last).
# isort: off
from . import sdss, desi, apogee, lamost, miles, xshooter, manga, eso, mmu, nonspectra  # noqa: F401
from . import tables, x1d, deimos, uves_popler, pypeit  # noqa: F401
from . import sixdfgs, sdss_spspec  # noqa: F401
from . import fits_image  # noqa: F401  (generic image layouts, before the specutils fallback)
from . import specutils_fallback  # noqa: F401
# isort: on
from .mmu import iter_mmu, read_mmu
from .specutils_registry import register_with_specutils

register_with_specutils()  # Spectrum.read(path, format="omnispectra-lamost") etc.; never auto-identified

__all__ = [
    "read",
    "iter_spectra",
    "identify_format",
    "identify_formats",
    "list_formats",
    "register_reader",
    "get_reader",
    "probe_file",
    "read_mmu",
    "register_with_specutils",
    "iter_mmu",
    "air_to_vacuum",
    "err_to_ivar",
    "build_spectrum",
    "file_stem",
    "FileProbe",
    "ReaderInfo",
    "ReadFailure",
    "SpectrumIterator",
    "SpectrumReadWarning",
    "SPECTRUM_FILE_SUFFIXES",
    "Spectrum",
    "SpectrumList",
]
