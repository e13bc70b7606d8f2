"""FITS plumbing shared by the spectrum readers: lazy opening, HDUs and columns by name, native arrays.

HDUs and columns are found by name in any case (DR18+ files use UPPERCASE names); big-endian FITS
data become native float32/float64 arrays; every failure becomes a :class:`SpectrumReadError` with
one line ``<file>: <reason>``. A file that is not a whole number of 2880-byte blocks is reported
truncated; a cut on a block boundary is reported when it reaches a header or data unit the reader
needs (later, unread HDUs are not checked).
"""

from __future__ import annotations

import os
import re
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from lenscat.errors import InputFileError

_TFORM = re.compile(r"^\s*(\d*)\s*([LXBIJKAEDCMPQ])")


_TFORM_DTYPE = {
    "L": "S1",
    "B": "u1",
    "I": ">i2",
    "J": ">i4",
    "K": ">i8",
    "E": ">f4",
    "D": ">f8",
    "C": ">c8",
    "M": ">c16",
}


_TFORM_SIZE = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "E": 4, "D": 8, "C": 8, "M": 16, "A": 1, "P": 8, "Q": 16}


class SpectrumReadError(InputFileError):
    """A spectrum file cannot be read; the message is ``<file>: <reason>`` on one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


def _with_fits(path: Path, fn: Any) -> Any:
    """Open ``path`` lazily and run ``fn(hdulist)``, turning every failure into a SpectrumReadError."""
    if not path.exists():
        raise SpectrumReadError(path, "no such file")
    if not path.is_file():
        raise SpectrumReadError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise SpectrumReadError(path, "empty file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh"
    if not compressed and head != b"SIMPLE  =":
        raise SpectrumReadError(path, "not a FITS file (no SIMPLE card at the start)")
    if not compressed and size % 2880:
        # FITS files are whole 2880-byte blocks; a cut-off download almost never is
        raise SpectrumReadError(path, f"truncated FITS file ({size} bytes, not a whole number of 2880-byte blocks)")
    caught: list[warnings.WarningMessage] = []

    def truncation() -> str | None:
        return next((str(w.message) for w in caught if "truncated" in str(w.message).lower()), None)

    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            caught = rec if rec is not None else []
            with fits.open(path, memmap=False, lazy_load_hdus=True) as h:
                result = fn(h)
        if (t := truncation()) is not None:
            raise SpectrumReadError(path, f"truncated FITS file ({t})")
        return result
    except SpectrumReadError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as exc:
        msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
        if (t := truncation()) is not None:
            raise SpectrumReadError(path, f"truncated FITS file ({t}; {msg})") from exc
        if any(s in msg.lower() for s in ("truncat", "end card", "empty or corrupt")):
            raise SpectrumReadError(path, f"truncated or corrupt FITS file ({msg})") from exc
        raise SpectrumReadError(path, f"corrupt FITS file ({msg})") from exc


def _hdus(h: fits.HDUList) -> Iterator[tuple[int, Any]]:
    """(position, HDU) for every HDU, reading headers lazily (stops at the end of the file)."""
    i = 0
    while True:
        try:
            hdu = h[i]
        except IndexError:
            return
        yield i, hdu
        i += 1


def _find_hdu(h: fits.HDUList, names: Iterable[str]) -> Any | None:
    """The first HDU whose EXTNAME equals one of ``names`` (case-insensitive), or None."""
    wanted = [n.upper() for n in names]
    found: dict[str, Any] = {}
    for _, hdu in _hdus(h):
        nm = (hdu.name or "").strip().upper()
        if nm in wanted and nm not in found:
            found[nm] = hdu
            if nm == wanted[0]:
                break
    for n in wanted:
        if n in found:
            return found[n]
    return None


def _require_hdu(h: fits.HDUList, path: Path, names: tuple[str, ...]) -> Any:
    hdu = _find_hdu(h, names)
    if hdu is None:
        raise SpectrumReadError(path, f"missing HDU {' / '.join(names)}")
    return hdu


def _hdu_names(h: fits.HDUList) -> list[str]:
    return [(hdu.name or "").strip().upper() for _, hdu in _hdus(h)]


@dataclass(frozen=True)
class _Field:
    name: str
    code: str  #: TFORM letter
    repeat: int
    offset: int  #: byte offset in the row
    scaled: bool  #: TSCAL or TZERO present


@dataclass(frozen=True)
class _TableInfo:
    rowlen: int
    nrows: int
    fields: tuple[_Field, ...]
    consistent: bool  #: the TFORMs add up to NAXIS1


_CARD = re.compile(r"^(TTYPE|TFORM|TSCAL|TZERO|NAXIS1|NAXIS2|TFIELDS)(\d*)\s*=\s*('(?:[^']|'')*'|[^/]*)")


_TABLE_INFO: weakref.WeakKeyDictionary[Any, _TableInfo] = weakref.WeakKeyDictionary()


def _table_info(hdu: Any) -> _TableInfo:
    """Column layout of a binary table from its raw header cards.

    Reading the header bytes directly avoids parsing every card value through astropy, which
    dominates the cost of wide tables such as SPECOBJ (~150 columns).
    """
    if hdu in _TABLE_INFO:
        return _TABLE_INFO[hdu]
    cards: dict[tuple[str, int], str] = {}
    try:
        info = hdu.fileinfo()
        fobj = info["file"]
        fobj.seek(info["hdrLoc"])
        raw = fobj.read(info["datLoc"] - info["hdrLoc"])
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        for k in range(0, len(text) - 79, 80):
            m = _CARD.match(text[k : k + 80])
            if m:
                v = m.group(3).strip()
                v = v[1:-1].replace("''", "'").rstrip() if v.startswith("'") else v
                cards[(m.group(1), int(m.group(2) or 0))] = v
    except (AttributeError, KeyError, TypeError, OSError):
        cards = {}
    if not cards:
        hd = hdu.header
        for i in range(1, int(hd.get("TFIELDS", 0)) + 1):
            for kw in ("TTYPE", "TFORM", "TSCAL", "TZERO"):
                if f"{kw}{i}" in hd:
                    cards[(kw, i)] = str(hd[f"{kw}{i}"])
        for kw in ("NAXIS1", "NAXIS2", "TFIELDS"):
            cards[(kw, 0)] = str(hd.get(kw, 0))
    nfields = int(cards.get(("TFIELDS", 0), "0") or 0)
    fields: list[_Field] = []
    offset = 0
    consistent = True
    for i in range(1, nfields + 1):
        m = _TFORM.match(cards.get(("TFORM", i), ""))
        if m is None:
            consistent = False
            break
        rep = int(m.group(1)) if m.group(1) else 1
        code = m.group(2)
        nbytes = (rep + 7) // 8 if code == "X" else _TFORM_SIZE[code] * rep
        fields.append(
            _Field(
                name=cards.get(("TTYPE", i), "").strip(),
                code=code,
                repeat=rep,
                offset=offset,
                scaled=("TSCAL", i) in cards or ("TZERO", i) in cards,
            )
        )
        offset += nbytes
    rowlen = int(cards.get(("NAXIS1", 0), "0") or 0)
    out = _TableInfo(
        rowlen=rowlen,
        nrows=int(cards.get(("NAXIS2", 0), "0") or 0),
        fields=tuple(fields),
        consistent=consistent and offset == rowlen,
    )
    _TABLE_INFO[hdu] = out
    return out


def _columns(hdu: Any) -> dict[str, str]:
    """Upper-case name -> actual TTYPE of each column of a table HDU (header only)."""
    out: dict[str, str] = {}
    for f in _table_info(hdu).fields:
        if f.name:
            out.setdefault(f.name.upper(), f.name)
    return out


def _pick(cols: dict[str, str], aliases: Iterable[str]) -> str | None:
    for a in aliases:
        if a.upper() in cols:
            return cols[a.upper()]
    return None


def _native(a: Any, dtype: Any = None) -> np.ndarray:
    arr = np.asarray(a)
    if dtype is not None:
        return np.ascontiguousarray(arr, dtype=dtype)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _read_fields(path: Path, hdu: Any, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read only ``names`` (actual TTYPEs) of a binary table, native byte order.

    Builds the record layout from the TFORMs and reads the raw table bytes once, which avoids
    astropy's per-column setup of wide tables (SPECOBJ has ~150 columns). Falls back to
    ``hdu.data.field`` for scaled columns, bit or variable-length arrays, or odd layouts.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    ti = _table_info(hdu)
    layout = {f.name: f for f in ti.fields if f.name in names}
    simple = (
        ti.consistent and set(layout) == set(names) and not any(f.scaled or f.code in "XPQ" for f in layout.values())
    )
    if not simple:
        data = hdu.data
        return {n: _native(data.field(n)) for n in names}
    info = hdu.fileinfo()
    fobj = info["file"]
    fobj.seek(info["datLoc"])
    nbytes = ti.rowlen * ti.nrows
    buf = fobj.read(nbytes)
    if len(buf) < nbytes:
        raise SpectrumReadError(
            path, f"truncated FITS file (HDU {hdu.name} data cut short: {len(buf)} of {nbytes} bytes)"
        )

    def fmt(f: _Field) -> str:
        if f.code == "A":
            return f"S{f.repeat}"
        base = _TFORM_DTYPE[f.code]
        return base if f.repeat == 1 else f"({f.repeat},){base}"

    dt = np.dtype(
        {
            "names": names,
            "formats": [fmt(layout[n]) for n in names],
            "offsets": [layout[n].offset for n in names],
            "itemsize": ti.rowlen,
        }
    )
    rec = np.frombuffer(buf, dtype=dt, count=ti.nrows)
    out = {}
    for n in names:
        v = _native(rec[n])
        out[n] = v == b"T" if layout[n].code == "L" else v
    return out


def _read_image(path: Path, hdu: Any, label: str) -> np.ndarray:
    data = hdu.data
    if data is None:
        raise SpectrumReadError(path, f"HDU {label} has no data")
    return _native(data)


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes | np.bytes_):
        v = v.decode("ascii", "replace")
    s = str(v).strip()
    return s or None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _clean(
    flux: np.ndarray, ivar: np.ndarray, *others: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """float32 copies; ivar 0 where flux or ivar is non-finite or ivar < 0; non-finite values -> 0."""
    f = np.array(flux, dtype=np.float32)
    iv = np.array(ivar, dtype=np.float32)
    bad = ~np.isfinite(f) | ~np.isfinite(iv) | (iv < 0)
    f[~np.isfinite(f)] = 0.0
    iv[bad] = 0.0
    outs: list[np.ndarray | None] = []
    for o in others:
        if o is None:
            outs.append(None)
        else:
            a = np.array(o, dtype=np.float32)
            a[~np.isfinite(a)] = 0.0
            outs.append(a)
    return f, iv, outs


def _check_wave(path: Path, wave: np.ndarray, what: str = "") -> None:
    if wave.ndim != 1 or wave.size < 2:
        raise SpectrumReadError(path, f"wavelength array{what} has fewer than 2 pixels")
    if not np.all(np.isfinite(wave)) or not np.all(np.diff(wave) > 0):
        raise SpectrumReadError(path, f"wavelength not increasing{what}")
