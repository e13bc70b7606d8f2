"""Image galleries of candidates: a labelled grid of RGB cutouts, north up, as PNG or PDF.

:func:`write_gallery` draws a candidate table (:func:`lenscat.export.catalogue.candidate_table`);
cutouts are read through :func:`lenscat.images.store.open_store`, so every registered cutout format
(:mod:`lenscat.images.formats`) can be drawn.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.images.formats import get_format
from lenscat.images.rgb import rgb_image
from lenscat.images.store import open_store

__all__ = ["GalleryResult", "write_gallery"]


# ------------------------------------------------------------------------------------ gallery
@dataclass
class GalleryResult:
    """What :func:`write_gallery` drew.

    Attributes
    ----------
    path
        The PNG or PDF written.
    n_panels
        Panels drawn (at most ``max_images``).
    n_images
        Panels with a cutout image.
    n_blank
        Labelled blank panels: no cutout registered, or the cutout file could not be read.
    n_left_out
        Candidates beyond ``max_images`` (not drawn).
    n_pages
        Pages (1 for a PNG).
    blank_source_ids
        Source ids of the blank panels.
    problems
        One line per unreadable cutout file.
    """

    path: Path
    n_panels: int
    n_images: int
    n_blank: int
    n_left_out: int
    n_pages: int
    blank_source_ids: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


_GRADE_COLOURS = {"A": "#1a9850", "B": "#91cf60", "C": "#fdae61", "N": "#d73027"}
_TILE_IN, _LABEL_IN, _GAP_IN, _HEADER_IN = 1.6, 0.42, 0.12, 0.45  # gallery layout [inch]


def _cutout_images(
    source_ids: list[int], *, session: Session, crop_arcsec: float | None, stretch: str
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """RGB (H, W, 3) uint8 images, north up, of the sources that have a readable cutout; reasons for the rest."""
    rows = session.execute(
        text(
            """
            SELECT s.source_id, s.cutout_row, f.path, f.format, f.member_paths, f.bands AS file_bands,
                   f.pixel_scale_arcsec AS file_scale, v.bands AS survey_bands, v.pixel_scale_arcsec AS survey_scale
            FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id)
            LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
        ),
        {"ids": [int(i) for i in source_ids]},
    ).all()
    by_id = {int(r.source_id): r for r in rows}
    images: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    groups: dict[tuple[str, str, tuple[str, ...]], list[Any]] = {}
    for sid in source_ids:
        r = by_id.get(int(sid))
        if r is None or r.path is None:
            reasons[int(sid)] = "no cutout"
            continue
        groups.setdefault((r.path, r.format, tuple(r.member_paths or ())), []).append(r)
    for (path, fmt, members), group in groups.items():
        try:
            store = open_store(path, fmt, member_paths=list(members) or None)
            if get_format(fmt).single_object:
                cut = store.get_one(0)
                planes = [(cut.data, list(cut.bands), float(cut.pixel_scale.to_value(u.arcsec)))] * len(group)
            else:
                data = store.get([int(r.cutout_row) for r in group])
                bands = list(group[0].file_bands or store.bands or group[0].survey_bands or ["g", "r", "z"])
                scale = group[0].file_scale or group[0].survey_scale or 0.262
                planes = [(data[k], bands, float(scale)) for k in range(len(group))]
        except (LenscatError, OSError, ValueError, KeyError) as exc:
            for r in group:
                reasons[int(r.source_id)] = f"cutout unreadable: {path}: {exc}"
            continue
        for r, (arr, bands, scale) in zip(group, planes, strict=True):
            img = rgb_image(arr, bands, stretch=stretch)
            if crop_arcsec:
                n = max(4, int(round(crop_arcsec / max(scale, 1e-6))))
                h, w = img.shape[:2]
                y0, x0 = max(0, (h - n) // 2), max(0, (w - n) // 2)
                img = img[y0 : y0 + n, x0 : x0 + n]
            images[int(r.source_id)] = np.ascontiguousarray(img[::-1])  # FITS orientation -> north up
    return images, reasons


def _label(row: Any) -> str:
    """Three caption lines: object id; grade, mean grade and votes; score and literature status."""
    objid = str(row["objid"])
    first = objid if len(objid) <= 22 else objid[:21] + "~"
    second = f"{row['consensus_grade']}  mean {float(row['mean_grade']):.2f}  n={int(row['n_votes'])}"
    score = row["best_score"]
    missing = score is np.ma.masked or not np.isfinite(float(score))
    third = "no score" if missing else f"score {float(score):.3f}"
    if "literature_status" in row.colnames:
        third += f"  {row['literature_status']}"
    return f"{first}\n{second}\n{third}"


def write_gallery(
    table: Table,
    path: str | Path,
    *,
    session: Session,
    ncols: int = 8,
    max_images: int = 200,
    rows_per_page: int = 8,
    crop_arcsec: float | None = None,
    stretch: str = "asinh",
    progress: bool = False,
) -> GalleryResult:
    """Draw the candidates as a labelled grid of RGB cutouts, in table order: a PNG or a PDF.

    Parameters
    ----------
    table
        A candidate table (:func:`candidate_table`): needs ``source_id``, ``objid``,
        ``consensus_grade``, ``mean_grade``, ``n_votes`` and ``best_score``.
    path
        ``.png`` (one image) or ``.pdf`` (``ncols`` x ``rows_per_page`` panels per page); replaced
        atomically.
    session
        Database session (to find each source's cutout).
    ncols
        Panels per row.
    max_images
        Draw at most this many candidates (the first ones of the table); the rest are counted in
        :attr:`GalleryResult.n_left_out`.
    rows_per_page
        Rows per PDF page.
    crop_arcsec
        Show the central ``crop_arcsec`` x ``crop_arcsec`` of each cutout (default: all of it).
    stretch
        ``'asinh'`` (Legacy Surveys viewer) or ``'lupton'``; see :func:`lenscat.images.rgb.rgb_image`.
    progress
        Show a progress bar on stderr.

    Returns
    -------
    GalleryResult
        Panels drawn; a source without a (readable) cutout gets a labelled grey panel and is counted
        in ``n_blank``.

    Raises
    ------
    LenscatError
        For an empty table, a path that is neither .png nor .pdf, or bad ``ncols``/``max_images``.
    """
    from matplotlib.figure import Figure
    from tqdm import tqdm

    dest = Path(path).expanduser()
    kind = dest.suffix.lower().lstrip(".")
    if kind not in ("png", "pdf"):
        raise LenscatError(f"{path}: a gallery is a .png or .pdf file")
    if ncols < 1 or max_images < 1 or rows_per_page < 1:
        raise LenscatError("ncols, max_images and rows_per_page must be at least 1")
    if len(table) == 0:
        raise LenscatError("no candidates to draw in a gallery")
    for need in ("source_id", "objid", "consensus_grade", "mean_grade", "n_votes", "best_score"):
        if need not in table.colnames:
            raise LenscatError(f"write_gallery needs a candidate table; column {need!r} is missing")
    shown = table[: int(max_images)]
    ids = [int(i) for i in shown["source_id"]]
    images, reasons = _cutout_images(ids, session=session, crop_arcsec=crop_arcsec, stretch=stretch)
    ncols = min(int(ncols), len(shown))
    per_page = ncols * int(rows_per_page) if kind == "pdf" else len(shown)
    pages = [list(range(k, min(k + per_page, len(shown)))) for k in range(0, len(shown), per_page)]
    grades = table.meta.get("GRADES", ",".join(sorted(set(np.asarray(table["consensus_grade"], dtype=str)))))
    title = f"lenscat candidates, grade {grades}: {len(shown)} of {len(table)}"
    figures = []
    bar = tqdm(total=len(shown), unit="img", desc="gallery", disable=not progress, leave=False)
    try:
        for p, members in enumerate(pages):
            nrows = -(-len(members) // ncols)
            width = ncols * (_TILE_IN + _GAP_IN) + _GAP_IN
            height = _HEADER_IN + nrows * (_LABEL_IN + _TILE_IN + _GAP_IN) + _GAP_IN
            fig = Figure(figsize=(width, height))
            page = f" (page {p + 1} of {len(pages)})" if len(pages) > 1 else ""
            fig.text(0.5, 1 - 0.35 * _HEADER_IN / height, title + page, ha="center", va="center", fontsize=9, wrap=True)
            fig.text(
                0.5,
                1 - 0.75 * _HEADER_IN / height,
                "frame: A dark green, B light green, C orange, N red",
                ha="center",
                va="center",
                fontsize=6.5,
                color="#444444",
                wrap=True,
            )
            for k, i in enumerate(members):
                r, c = divmod(k, ncols)
                left = _GAP_IN + c * (_TILE_IN + _GAP_IN)
                top = height - _HEADER_IN - r * (_LABEL_IN + _TILE_IN + _GAP_IN)
                ax = fig.add_axes(
                    (left / width, (top - _LABEL_IN - _TILE_IN) / height, _TILE_IN / width, _TILE_IN / height)
                )
                row = shown[i]
                sid = int(row["source_id"])
                img = images.get(sid)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(_GRADE_COLOURS.get(str(row["consensus_grade"]), "black"))
                    spine.set_linewidth(2.0)
                if img is None:
                    ax.imshow(np.full((64, 64, 3), 205, dtype=np.uint8))
                    ax.text(
                        32,
                        32,
                        reasons.get(sid, "no cutout").split(":")[0],
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="#444444",
                    )
                else:
                    ax.imshow(img, interpolation="nearest")
                fig.text(
                    left / width,
                    (top - 0.03) / height,
                    _label(row),
                    ha="left",
                    va="top",
                    fontsize=6.5,
                    family="monospace",
                )
                bar.update(1)
            figures.append(fig)
    finally:
        bar.close()
    _save_figures(figures, dest, kind)
    blank = [i for i in ids if i not in images]
    problems = sorted({reasons[i] for i in blank if reasons[i] != "no cutout"})
    return GalleryResult(
        path=dest,
        n_panels=len(shown),
        n_images=len(shown) - len(blank),
        n_blank=len(blank),
        n_left_out=len(table) - len(shown),
        n_pages=len(pages),
        blank_source_ids=blank,
        problems=problems,
    )


def _save_figures(figures: list[Any], dest: Path, kind: str) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=f".part.{kind}")
        os.close(fd)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write here ({exc.strerror or exc})") from exc
    try:
        if kind == "pdf":
            from matplotlib.backends.backend_pdf import PdfPages

            with PdfPages(tmp, metadata={"Title": "lenscat candidates", "Creator": "lenscat"}) as pdf:
                for fig in figures:
                    pdf.savefig(fig)
        else:
            figures[0].savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write the gallery ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
