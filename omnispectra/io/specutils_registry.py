"""omnispectra's readers, registered with specutils' io registry (``Spectrum.read(..., format=...)``).

Every format of :func:`omnispectra.io.list_formats` (except the specutils fallback itself)
becomes a specutils format named ``omnispectra-<name>`` with ``_`` -> ``-``
(``omnispectra-lamost-lrs``, ``omnispectra-miles``, ``omnispectra-xshooter-xsl`` ...), plus:

* families: ``omnispectra-lamost`` (LRS or MRS), ``omnispectra-apogee``,
  ``omnispectra-desi``, ``omnispectra-xshooter``, ``omnispectra-legac`` (the ESO Phase-3
  reader), picked by omnispectra's identifiers;
* ``omnispectra``: omnispectra's own auto-detection over all its formats.

Their identifiers always answer False, so specutils' auto-detection (``Spectrum.read(path)``
without ``format=``) never sees them and is never made ambiguous; they are used only when
named.  ``SpectrumList.read(path, format=...)`` returns every spectrum of the file;
``Spectrum.read`` returns the spectrum when the file holds exactly one (else an error
saying how many there are).  The spectra are those of :func:`omnispectra.io.read` (vacuum
Angstrom, inverse variance, meta as documented there).

Registration happens when :mod:`omnispectra.io` is imported and is idempotent;
:func:`register_with_specutils` registers formats added later.
"""

from __future__ import annotations

import logging

from astropy.io import registry as io_registry
from specutils.io.registers import data_loader

from ..exceptions import OmniSpectraError
from ._common import Spectrum, SpectrumList
from .registry import identify_formats, list_formats, read

__all__ = ["register_with_specutils", "specutils_format_name", "PREFIX", "FAMILIES"]

logger = logging.getLogger(__name__)

PREFIX = "omnispectra"
#: specutils family name -> omnispectra formats it may use (chosen by their identifiers).
FAMILIES = {"lamost": ("lamost_lrs", "lamost_mrs"), "apogee": ("apogee_aspcapstar", "apogee_apstar"),
            "desi": ("desi", "desi_stack"), "xshooter": ("xshooter_xsl",), "legac": ("eso_phase3",)}


def specutils_format_name(fmt: str | None) -> str:
    """``'lamost_lrs'`` -> ``'omnispectra-lamost-lrs'``; None -> ``'omnispectra'``."""
    return PREFIX if fmt is None else f"{PREFIX}-{fmt.replace('_', '-')}"


def _never(*args, **kwargs) -> bool:
    # Named formats only: auto-identification stays with specutils' own loaders.
    return False


def _read_family(path, formats: tuple[str, ...] | None, **kwargs) -> SpectrumList:
    if formats is None:
        return read(path, **kwargs)
    found = [f for f in identify_formats(path) if f in formats]
    return read(path, format=(found or list(formats))[0], **kwargs)


def _loaders(formats: tuple[str, ...] | None, label: str):
    def read_list(path, **kwargs) -> SpectrumList:
        return SpectrumList(list(_read_family(path, formats, **kwargs)))

    def read_one(path, **kwargs) -> Spectrum:
        spectra = _read_family(path, formats, **kwargs)
        if len(spectra) != 1:
            raise OmniSpectraError(
                f"{path}: holds {len(spectra)} spectra; use SpectrumList.read(path, format={label!r})")
        return spectra[0]

    read_list.__doc__ = read_one.__doc__ = f"specutils loader {label!r} (omnispectra.io.read)"
    return read_list, read_one


def _register(label: str, formats: tuple[str, ...] | None) -> None:
    read_list, read_one = _loaders(formats, label)
    data_loader(label, identifier=_never, dtype=SpectrumList, priority=-100)(read_list)
    data_loader(label, identifier=_never, dtype=Spectrum, priority=-100,
                autogenerate_spectrumlist=False)(read_one)


def register_with_specutils() -> list[str]:
    """Register every omnispectra format (and the families) with specutils; the new labels."""
    added = []
    known = [name for name in list_formats() if name != "specutils"]
    targets: dict[str, tuple[str, ...] | None] = {PREFIX: None}
    for name in known:
        targets[specutils_format_name(name)] = (name,)
    for family, formats in FAMILIES.items():
        present = tuple(f for f in formats if f in known)
        if present:
            targets[f"{PREFIX}-{family}"] = present
    # astropy's get_formats builds a table of every format: ask once (~20 ms a call)
    existing = set(io_registry.get_formats(Spectrum)["Format"])
    # astropy rebuilds the classes' read() docstring after every registration unless delayed
    with io_registry.delay_doc_updates(Spectrum), io_registry.delay_doc_updates(SpectrumList):
        for label, formats in targets.items():
            if label not in existing:
                _register(label, formats)
                added.append(label)
    logger.debug("registered with specutils: %s", added)
    return added
