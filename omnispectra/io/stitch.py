"""One spectrum per object: stitch the orders, arms or segments of one target.

Echelle orders, spectrograph arms and detector segments of **one** target are pieces of one
spectrum; the fibres of a multi-object file are different objects. Only the reader knows
which a file holds, so the rule is owned by the readers and stated in ``meta``:

- a reader that returns pieces of one target marks each of them with :func:`mark_piece`:
  ``meta['piece_of']`` (the id of the one spectrum they form) and ``meta['piece_kind']``
  (``'order'``, ``'arm'`` or ``'segment'``);
- readers of multi-object files (fibres, plates, MaNGA rows) never mark anything, so their
  spectra are never stitched.

:func:`stitch_spectra` (called by :func:`omnispectra.io.read` unless ``stitch=False``)
joins the marked pieces of one file that share ``piece_of``, ``piece_kind``, ``object_id``
and flux unit into one spectrum with :func:`stitch`: **native pixels, no resampling**.
Where pieces overlap, the pixels of the piece with the higher signal-to-noise ratio in the
overlap (median ``|flux| * sqrt(ivar)`` of its good pixels there) are kept and the other
piece's are dropped; between pieces that do not touch there are simply no pixels (nothing
is invented). The stitched spectrum has ``id = piece_of``, the pieces' ``object_id``, and
``meta['stitched']``: the kind and, per piece (in wavelength order), its ``id``, its name
(``order``/``arm`` value), pixels, pixels kept, and the meta values in which it differs from
the first piece.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy import units as u
from astropy.nddata import InverseVariance

from ..exceptions import InvalidSpectrumError
from ._common import build_spectrum

__all__ = ["PIECE_KINDS", "mark_piece", "stitch", "stitch_spectra", "orders_are_disjoint"]

logger = logging.getLogger(__name__)

#: What a piece of one target's spectrum can be.
PIECE_KINDS = ("order", "arm", "segment")
#: meta keys of a piece that the stitched spectrum does not keep at its top level.
_PIECE_KEYS = ("piece_of", "piece_kind", "order", "arm", "aperture", "id", "n_spectra_in_file")


def mark_piece(meta: dict, piece_of: str, kind: str) -> dict:
    """Declare (in ``meta``, returned) that a spectrum is one ``kind`` of the target spectrum
    ``piece_of``; only readers of one-target files call it (see the module docstring)."""
    if kind not in PIECE_KINDS:
        raise ValueError(f"piece kind must be one of {PIECE_KINDS}, got {kind!r}")
    meta["piece_of"] = str(piece_of)
    meta["piece_kind"] = kind
    return meta


def orders_are_disjoint(lo: np.ndarray, hi: np.ndarray) -> bool:
    """True when consecutive rows (wavelength ranges ``[lo, hi]``) cover mostly different
    wavelengths (echelle orders, overlapping at their ends), False when they share one range
    (fibres of one setup, rows of a 2-D slit image)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    overlap = np.minimum(hi[1:], hi[:-1]) - np.maximum(lo[1:], lo[:-1])
    return bool(np.all(overlap < 0.5 * np.minimum(hi[1:] - lo[1:], hi[:-1] - lo[:-1])))


def _arrays(spec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(wavelength in Angstrom, flux, ivar, bad)`` of a reader's spectrum."""
    wave = spec.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    flux = np.asarray(spec.flux.value, dtype=np.float64)
    unc = spec.uncertainty
    ivar = (np.ones_like(flux) if unc is None else np.asarray(
        unc.array if isinstance(unc, InverseVariance) else unc.represent_as(InverseVariance).array,
        dtype=np.float64))
    bad = np.zeros(flux.shape, bool) if spec.mask is None else np.asarray(spec.mask, dtype=bool)
    return np.asarray(wave, dtype=np.float64), flux, ivar, bad


def _snr(arrays: tuple, lo: float, hi: float) -> float:
    """Median ``|flux| * sqrt(ivar)`` of the good pixels in ``[lo, hi]`` (-inf: none)."""
    wave, flux, ivar, bad = arrays
    sel = (wave >= lo) & (wave <= hi) & ~bad & (ivar > 0) & np.isfinite(flux)
    return float(np.median(np.abs(flux[sel]) * np.sqrt(ivar[sel]))) if sel.any() else -np.inf


def _kept_pixels(pieces: list[tuple]) -> list[np.ndarray]:
    """Which pixels of each piece the stitched spectrum keeps (one boolean array per piece).

    A pixel at wavelength ``w`` is kept when its piece is the best of the pieces covering
    ``w`` (``lo <= w <= hi``): the highest S/N over the stretch they all cover (ties: the
    first piece in wavelength order). The best piece is a function of ``w`` alone, so no two
    kept pixels share a wavelength and an overlap's pixels all come from one piece.
    """
    lo = np.array([a[0][0] for a in pieces])
    hi = np.array([a[0][-1] for a in pieces])
    best: dict[tuple[int, ...], int] = {}
    keep = []
    for i, (wave, *_) in enumerate(pieces):
        cover = (lo[None, :] <= wave[:, None]) & (hi[None, :] >= wave[:, None])  # (pixels, pieces)
        sets, inverse = np.unique(cover, axis=0, return_inverse=True)
        owner = np.empty(len(sets), dtype=np.int64)
        for k, row in enumerate(sets):
            members = tuple(int(m) for m in np.flatnonzero(row))
            if members not in best:
                a, b = lo[list(members)].max(), hi[list(members)].min()
                best[members] = max(members, key=lambda m: (_snr(pieces[m], a, b), -m))
            owner[k] = best[members]
        keep.append(owner[np.asarray(inverse).ravel()] == i)
    return keep


def stitch(pieces: Sequence[Any], piece_of: str | None = None) -> Any:
    """One spectrum from the pieces (orders, arms, segments) of one target, on native pixels.

    Parameters
    ----------
    pieces : sequence of Spectrum
        1-D spectra of one object with one flux unit (a reader's output).
    piece_of : str, optional
        The stitched spectrum's id (default: the pieces' ``meta['piece_of']``).

    Returns
    -------
    Spectrum
        Wavelengths strictly increasing; in an overlap the pixels of the piece with the higher
        S/N there; ``meta['stitched']`` says which pieces were joined (see the module docstring).

    Raises
    ------
    InvalidSpectrumError
        Fewer than two pieces, or pieces with different flux units.
    """
    if len(pieces) < 2:
        raise InvalidSpectrumError(f"stitching needs at least two pieces, got {len(pieces)}")
    units = {str(p.flux.unit) for p in pieces}
    if len(units) > 1:
        raise InvalidSpectrumError(f"pieces of one spectrum with different flux units {sorted(units)}")
    order = sorted(range(len(pieces)), key=lambda i: (float(pieces[i].spectral_axis.min().value), i))
    specs = [pieces[i] for i in order]
    arrays = [_arrays(s) for s in specs]
    keep = _kept_pixels(arrays)
    wave, flux, ivar, bad = (np.concatenate([a[k][m] for a, m in zip(arrays, keep, strict=True)])
                             for k in range(4))
    by_wave = np.argsort(wave, kind="stable")
    wave, flux, ivar, bad = wave[by_wave], flux[by_wave], ivar[by_wave], bad[by_wave]
    metas = [dict(s.meta or {}) for s in specs]
    meta = {k: v for k, v in metas[0].items() if k not in _PIECE_KEYS}
    kept = [int(m.sum()) for m in keep]
    meta["id"] = str(piece_of or metas[0].get("piece_of") or metas[0].get("id", ""))
    meta["stitched"] = {"kind": metas[0].get("piece_kind", "order"), "pieces": [
        {"id": m.get("id"), "name": m.get("order", m.get("arm", m.get("aperture"))), "pixels": int(a[0].size),
         "pixels_kept": int(n), **{k: v for k, v in m.items() if k not in _PIECE_KEYS and k in meta
                                   and not _same(v, meta[k])}}
        for m, a, n in zip(metas, arrays, kept, strict=True)]}
    unit = specs[0].flux.unit
    return build_spectrum(wave, flux, ivar, mask=bad, meta=meta, flux_unit=unit,
                          path=meta.get("source_file"))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.all(a == b))
    except Exception:  # values that cannot be compared are reported as different
        return False


def _group_key(spec: Any) -> tuple | None:
    meta = spec.meta or {}
    if meta.get("piece_kind") not in PIECE_KINDS or not meta.get("piece_of"):
        return None
    return (str(meta["piece_of"]), meta["piece_kind"], str(meta.get("object_id", "")), str(spec.flux.unit))


def stitch_spectra(spectra: Sequence[Any]) -> list:
    """The spectra of one file with the marked pieces of each target stitched (:func:`stitch`).

    Unmarked spectra (fibres, single spectra) pass unchanged; a target's stitched spectrum
    takes the place of its first piece. A group of one piece keeps its own id. Pieces that
    cannot be joined (e.g. other flux units) stay apart, logged.
    """
    groups: dict[tuple, list[int]] = {}
    for k, spec in enumerate(spectra):
        key = _group_key(spec)
        if key is not None:
            groups.setdefault(key, []).append(k)
    if not any(len(m) > 1 for m in groups.values()):
        return list(spectra)
    out: list = []
    done: set[int] = set()
    for k, spec in enumerate(spectra):
        if k in done:
            continue
        members = groups.get(_group_key(spec) or (), [k])
        if len(members) < 2:
            out.append(spec)
            continue
        done.update(members)
        try:
            out.append(stitch([spectra[i] for i in members]))
        except InvalidSpectrumError as err:
            logger.warning("%s: pieces kept apart: %s", (spec.meta or {}).get("source_file", "?"), err)
            out.extend(spectra[i] for i in members)
    joined = len(spectra) - len(out)
    for spec in out:  # the file's count (returned + skipped) with each target counted once
        held = (spectra[0].meta or {}).get("n_spectra_in_file")
        if held is not None:
            spec.meta["n_spectra_in_file"] = int(held) - joined
    return out
