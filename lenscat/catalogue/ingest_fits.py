"""Register FITS cutouts (with a WCS) as catalogue sources with a cutout reference.

Real cutouts of known lenses come as FITS: one file per band (Pan-STARRS ``NAME_PS1_g.fits``), one
file with an image HDU per band (Euclid Q1), or a single band in ``SCI`` (HST). Each object becomes
a source of the named survey (objid from the file name, position from the WCS at the cutout
centre) whose cutout is that file or set of files; ``lenscat embed`` resamples it to the encoder's
pixel scale and bands. Re-registering the same files changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.catalogue.surveys import ensure_survey
from lenscat.errors import InputFileError
from lenscat.images.fits import read_fits_cutout
from lenscat.images.formats.fits import NAME as FITS_FORMAT

_BAND_SUFFIX = re.compile(r"^(?P<stem>.+?)[_\-.](?P<band>[ugrizyYJHK])$")


def group_band_files(paths: Sequence[str | Path]) -> dict[str, list[Path]]:
    """Group files into objects: ``X_g.fits``, ``X_r.fits`` ... -> ``X``; other files stand alone."""
    groups: dict[str, list[Path]] = {}
    for p in sorted(Path(x).expanduser().resolve() for x in paths):
        stem = p.name
        for suffix in (".fits.fz", ".fits.gz", ".fits", ".fit", ".fz"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        m = _BAND_SUFFIX.match(stem)
        key = m.group("stem") if m else stem
        groups.setdefault(key, []).append(p)
    return groups


@dataclass
class CutoutIngest:
    """One registered object."""

    objid: str
    source_id: int
    ra: float
    dec: float
    bands: list[str]
    files: list[str]


def ingest_fits_cutouts(paths: Sequence[str | Path], survey: str, *, session: Session) -> list[CutoutIngest]:
    """Register FITS cutouts as sources of ``survey`` with their cutout reference (idempotent).

    Raises InputFileError (naming the file) for an unreadable file or a cutout without a WCS;
    nothing of the call is written then (the caller's transaction rolls back).
    """
    out: list[CutoutIngest] = []
    survey_id = ensure_survey(survey, [], session=session).survey_id
    for objid, files in group_band_files(paths).items():
        cut = read_fits_cutout(files)
        if cut.wcs is None:
            raise InputFileError(f"{files[0]}: no celestial WCS; cannot place the cutout on the sky")
        h, w = cut.data.shape[-2:]
        centre = cut.wcs.pixel_to_world((w - 1) / 2, (h - 1) / 2).icrs
        digest = hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
        file_id = session.execute(
            text(
                """
                INSERT INTO lenscat.cutout_files (path, format, sha256, n_images, image_shape, member_paths,
                                                  bands, pixel_scale_arcsec)
                VALUES (:p, :fmt, :sha, 1, :shape, :members, :bands, :scale)
                ON CONFLICT ON CONSTRAINT uq_cutout_files_path DO UPDATE
                SET sha256 = EXCLUDED.sha256, image_shape = EXCLUDED.image_shape,
                    member_paths = EXCLUDED.member_paths, bands = EXCLUDED.bands,
                    pixel_scale_arcsec = EXCLUDED.pixel_scale_arcsec
                RETURNING file_id
                """
            ),
            {
                "p": str(files[0]),
                "fmt": FITS_FORMAT,
                "sha": digest,
                "shape": list(cut.data.shape),
                "members": [str(f) for f in files],
                "bands": cut.bands,
                "scale": float(cut.pixel_scale.value),
            },
        ).scalar_one()
        source_id = session.execute(
            text(
                """
                INSERT INTO lenscat.sources (survey_id, objid, ra, dec, cutout_file_id, cutout_row)
                VALUES (:sv, :objid, :ra, :dec, :fid, 0)
                ON CONFLICT ON CONSTRAINT uq_sources_survey_objid DO UPDATE
                SET ra = EXCLUDED.ra, dec = EXCLUDED.dec, cutout_file_id = EXCLUDED.cutout_file_id,
                    cutout_row = 0, updated_at = now()
                WHERE (lenscat.sources.ra, lenscat.sources.dec, lenscat.sources.cutout_file_id)
                      IS DISTINCT FROM (EXCLUDED.ra, EXCLUDED.dec, EXCLUDED.cutout_file_id)
                RETURNING source_id
                """
            ),
            {"sv": survey_id, "objid": objid, "ra": float(centre.ra.deg), "dec": float(centre.dec.deg), "fid": file_id},
        ).scalar()
        if source_id is None:
            source_id = session.execute(
                text("SELECT source_id FROM lenscat.sources WHERE survey_id = :sv AND objid = :o"),
                {"sv": survey_id, "o": objid},
            ).scalar_one()
        out.append(
            CutoutIngest(
                objid, int(source_id), float(centre.ra.deg), float(centre.dec.deg), cut.bands, [str(f) for f in files]
            )
        )
    return out
