#!/usr/bin/env python
"""Benchmark: the spectroscopic search -- FITS -> packed ETL, matched filter, ResNet, in-DB scans.

One run measures, on the same data and in the same process (2 CPU cores):

(a) ETL: copies of the real test spectra (``tests/data/spectra/sdss/spec-*.fits`` and the DESI
    coadd with its redrock file) under distinct names and keys (SPECOBJ PLATE/FIBERID, DESI
    TARGETID rewritten with astropy, so every spectrum is inserted), ingested end to end by
    :func:`lenscat.spectra.ingest.ingest_spectra` (2 reader processes: read, put on the window and
    veto grids, continuum fit where the file has no model, HDF5 store, database rows, source
    linking), against reading every file with plain ``astropy.io.fits`` in one process without a
    database (COADD flux/loglam/ivar and the SPECOBJ row; DESI: the B/R/Z arms, the FIBERMAP row
    and the redrock row);
(b) matched filter: :func:`lenscat.spectra.matched_filter.scan_batch`, ``snr_max`` and
    ``scan_batch_with_max`` over synthetic BOSS spectra (:func:`lenscat.spectra.synth_training.make_training_set`,
    1 in 16 with a Lya line) read from a :class:`~lenscat.spectra.pack.PackStore` (the read timed
    alone and together with the search), against the classic loop: per spectrum, residual, masks,
    robust ivar rescaling and, per kernel of the same bank, ``scipy.ndimage.correlate1d`` sums
    ``S/N = sum(r ivar k) / sqrt(sum(ivar k^2))`` with the same coverage cut (BELLS GALLERY recipe),
    on a subset; the two are compared (best S/N per spectrum, hit pixels) as a sanity print;
(c) ResNet: :func:`lenscat.models.specnet_inference.predict` of a default (untrained) ``SpecResNet`` at batch
    1,024 on 2 torch threads, with and without :func:`~lenscat.models.specnet_inputs.prepare_inputs`, on
    the same rows, against Li et al. (2018)'s quoted ~230 spectra/s;
(d) in-DB scans: :func:`lenscat.spectra.scan.scan_spectra` over the ETL's spectra for a
    matched-filter and a ResNet detector version (store reads, detection, a skew-normal line fit
    and the vetoes for each candidate, hit and scan rows written and committed).

Usage::

    python bench/spectra.py [--quick] [--files N] [--rows N] [--baseline-rows N] [--out FILE] [--record]

It runs its own embedded PostgreSQL under a temporary ``LENSCAT_HOME`` and removes it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import goal, loadavg, machine_info, speedup

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "spectra"
LI2018_RATE = 230.0  # spectra/s, Li et al. (2018)
MF_GOAL = 20_000.0
RESNET_GOAL = 1_000.0


# --------------------------------------------------------------------------------------------- ETL
def make_copies(dst: Path, n_files: int, desi_fraction: float) -> list[Path]:
    """``n_files`` spectrum files in ``dst``: SDSS spec-* copies and DESI coadds, each with a new key."""
    from astropy.io import fits

    sdss = sorted((DATA / "sdss").glob("spec-*.fits"))
    coadd = DATA / "desi" / "coadd-4-80613-thru20210324.fits"
    redrock = DATA / "desi" / "redrock-4-80613-thru20210324.fits"
    n_desi = int(round(n_files * desi_fraction))
    out: list[Path] = []
    srcs = [fits.open(p, memmap=False) for p in sdss]
    try:
        for i in range(n_files - n_desi):
            h = srcs[i % len(srcs)]
            obj = h["SPECOBJ"].data
            plate, fiber, mjd = 7000 + i // 900, 1 + i % 900, int(obj["MJD"][0])
            obj["PLATE"][0], obj["FIBERID"][0] = plate, fiber
            p = dst / f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits"
            h.writeto(p, overwrite=True)
            out.append(p)
    finally:
        for h in srcs:
            h.close()
    with fits.open(coadd, memmap=False) as hc, fits.open(redrock, memmap=False) as hr:
        tid0 = int(hc["FIBERMAP"].data["TARGETID"][0])
        for i in range(n_desi):
            sub = dst / f"desi{i:05d}"
            sub.mkdir()
            tid = tid0 + 1000 * (i + 1)
            hc["FIBERMAP"].data["TARGETID"][0] = tid
            hr["REDSHIFTS"].data["TARGETID"][0] = tid
            hc.writeto(sub / coadd.name)
            hr.writeto(sub / redrock.name)
            out.append(sub / coadd.name)
    return out


def astropy_read(paths: list[Path]) -> tuple[float, int]:
    """Baseline: plain astropy reads of every file (arrays and the object row); (seconds, spectra)."""
    from astropy.io import fits

    n = 0
    t0 = time.perf_counter()
    for p in paths:
        with fits.open(p) as h:
            if "COADD" in h:
                d = h["COADD"].data
                _ = (np.array(d["flux"]), np.array(d["loglam"]), np.array(d["ivar"]))
                row = h["SPECOBJ"].data[0]
                _ = (int(row["PLATE"]), int(row["MJD"]), int(row["FIBERID"]), float(row["Z"]), str(row["CLASS"]))
                n += 1
            else:
                arrays = [np.array(h[f"{a}_{k}"].data) for a in "BRZ" for k in ("WAVELENGTH", "FLUX", "IVAR")]
                fm = h["FIBERMAP"].data
                _ = (arrays, int(fm["TARGETID"][0]), float(fm["TARGET_RA"][0]), float(fm["TARGET_DEC"][0]))
                with fits.open(p.with_name(p.name.replace("coadd-", "redrock-"))) as hz:
                    _ = float(hz["REDSHIFTS"].data["Z"][0])
                n += len(fm)
    return time.perf_counter() - t0, n


def bench_etl(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """(a) ingest_spectra end to end vs plain astropy reads."""
    from lenscat.spectra.ingest import ingest_spectra

    src = work / "files"
    src.mkdir()
    t0 = time.perf_counter()
    paths = make_copies(src, args.files, args.desi_fraction)
    print(
        f"\n(a) ETL: wrote {len(paths)} files ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB) "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    t_base, n_base = astropy_read(paths)
    t0 = time.perf_counter()
    summary = ingest_spectra([src], pack="bench", workers=2, progress=False)
    t_ing = time.perf_counter() - t0
    n_ing = summary.spectra_inserted + summary.spectra_updated
    out = {
        "files": len(paths),
        "spectra": n_ing,
        "inserted": summary.spectra_inserted,
        "failed": summary.files_failed,
        "ingest_s": t_ing,
        "ingest_rate": n_ing / t_ing,
        "astropy_s": t_base,
        "astropy_rate": n_base / t_base,
    }
    print(
        f"ingest_spectra (2 workers, DB): {n_ing} spectra ({summary.spectra_inserted} inserted, "
        f"{summary.files_failed} failed) in {t_ing:.1f} s = {out['ingest_rate']:,.0f} spectra/s; "
        f"astropy read only: {out['astropy_rate']:,.0f} spectra/s; ratio "
        f"{out['ingest_rate'] / out['astropy_rate']:.3f}",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------------- matched filter
def classic_matched_filter(
    flux: np.ndarray, ivar: np.ndarray, cont: np.ndarray, z: np.ndarray, wave: np.ndarray, cfg: Any
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Baseline: the BELLS GALLERY matched filter, one spectrum at a time with correlate1d.

    Same masks, robust ivar rescaling, kernel bank and coverage cut as lenscat's; returns the best
    S/N of each spectrum (NaN if not searchable) and the pixels of its local maxima above threshold.
    """
    from scipy.ndimage import correlate1d, maximum_filter1d

    from lenscat.spectra.masks import galaxy_line_mask, sky_line_mask

    sky = sky_line_mask(wave, half_width_kms=cfg.sky_half_width_kms)
    bank = []
    for s in cfg.sigmas_px:
        h = int(np.ceil(cfg.truncate * s))
        k = np.exp(-0.5 * (np.arange(-h, h + 1) / s) ** 2)
        hc = max(1, int(round(cfg.coverage_nsigma * s)))
        need = int(np.ceil(cfg.min_coverage * (2 * hc + 1) - 1e-9))
        bank.append((k, k * k, np.ones(2 * hc + 1), need))
    best = np.full(len(flux), np.nan)
    peaks: list[np.ndarray] = []
    for i in range(len(flux)):
        r = flux[i].astype(np.float64) - cont[i]
        iv = ivar[i].astype(np.float64)
        good = np.isfinite(r) & np.isfinite(iv) & (iv > 0) & ~sky
        good &= ~galaxy_line_mask(
            wave, float(z[i]), half_width_kms=cfg.galaxy_half_width_kms, extended=cfg.galaxy_extended
        )
        if good.sum() < cfg.min_good_pixels:
            peaks.append(np.zeros(0, dtype=np.int64))
            continue
        r = np.where(good, r, 0.0)
        w = np.where(good, iv, 0.0)
        s = np.median(np.abs(r[good]) * np.sqrt(w[good])) / 0.6744897501960817
        if not s > 0:
            peaks.append(np.zeros(0, dtype=np.int64))
            continue
        w /= s * s
        g = good.astype(np.float64)
        m = np.full(r.size, -np.inf)
        for k, k2, box, need in bank:
            num = correlate1d(r * w, k, mode="constant")
            den = correlate1d(w, k2, mode="constant")
            cnt = correlate1d(g, box, mode="constant")
            ok = (cnt >= need - 0.5) & (den > 0)
            m = np.maximum(m, np.where(ok, num / np.sqrt(np.where(ok, den, 1.0)), -np.inf))
        best[i] = m.max() if np.isfinite(m).any() else np.nan
        size = 2 * cfg.merge_px + 1
        pk = (m >= cfg.threshold) & (m == maximum_filter1d(m, size=size, mode="constant", cval=-np.inf))
        peaks.append(np.flatnonzero(pk))
    return best, peaks


def write_store(path: Path, synth: Any) -> Any:
    """A PackStore with the window rows of a synthetic set (the veto datasets stay empty: unread)."""
    from lenscat.spectra.pack import PackStore

    store = PackStore(path)
    n = len(synth)
    with store.writer() as fh:
        arrays = {
            "flux": synth.flux,
            "ivar": synth.ivar,
            "continuum": synth.continuum,
            "sky": np.zeros_like(synth.flux),
            "z": synth.z,
            "continuum_source": np.zeros(n, np.uint8),
        }
        for name, arr in arrays.items():
            fh[name].resize(n, axis=0)
            fh[name][:] = arr
    return store


def best_of(fn: Any, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` calls (seconds) and the last result."""
    ts, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), res


def bench_mf(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], Any]:
    """(b) matched filter from the packed store vs the classic correlate1d loop."""
    from lenscat.spectra.grid import WINDOW
    from lenscat.spectra.matched_filter import (
        MatchedFilterConfig,
        scan_batch,
        scan_batch_with_max,
        snr_max,
    )
    from lenscat.spectra.synth_training import make_training_set

    n = args.rows
    t0 = time.perf_counter()
    synth = make_training_set(n, seed=args.seed, keep_truth=False)
    store = write_store(work / "mf.h5", synth)
    print(
        f"\n(b) matched filter: {n:,} synthetic spectra ({int(synth.labels.sum())} with a line) made and "
        f"packed in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    allrows = np.arange(n)
    t_read, rows = best_of(lambda: store.read(allrows, sky=False), args.repeats)  # as scan.py reads
    cfg = MatchedFilterConfig()
    wave = WINDOW.wave
    a = (rows.flux, rows.ivar, rows.continuum, rows.z)
    scan_batch(*(x[:512] for x in a), wave=wave, config=cfg)  # warm-up (kernel bank, FFT plans)
    t_scan, hits = best_of(lambda: scan_batch(*a, wave=wave, config=cfg), args.repeats)
    t_max, best = best_of(lambda: snr_max(*a, wave=wave, config=cfg), args.repeats)
    t_both, (hits2, best2) = best_of(lambda: scan_batch_with_max(*a, wave=wave, config=cfg), args.repeats)

    def read_and_scan() -> int:
        k = 0
        for i in range(0, n, 4096):  # scan.py's batch size
            r = store.read(allrows[i : i + 4096], sky=False)
            h, _ = scan_batch_with_max(r.flux, r.ivar, r.continuum, r.z, wave=wave, config=cfg)
            k += len(h)
        return k

    t_e2e, n_e2e = best_of(read_and_scan, args.repeats)
    assert n_e2e == len(hits2) == len(hits) and np.array_equal(best, best2, equal_nan=True)
    nb = min(args.baseline_rows, n)
    t0 = time.perf_counter()
    flux_b, ivar_b, cont_b, z_b = (x[:nb] for x in a)
    cbest, cpeaks = classic_matched_filter(flux_b, ivar_b, cont_b, z_b, wave, cfg)
    t_classic = time.perf_counter() - t0
    out = {
        "rows": n,
        "lines": int(synth.labels.sum()),
        "hits": len(hits),
        "read_rate": n / t_read,
        "scan_rate": n / t_scan,
        "max_rate": n / t_max,
        "both_rate": n / t_both,
        "e2e_rate": n / t_e2e,
        "classic_rows": nb,
        "classic_rate": nb / t_classic,
    }
    pos = synth.labels.astype(bool)
    found = np.zeros(n, bool)
    found[hits.row[np.abs(hits.pixel - synth.line_pixel[hits.row]) <= 3]] = True
    out["completeness"] = float(found[pos].mean())
    print(
        f"PackStore.read: {out['read_rate']:,.0f} spectra/s; scan_batch {out['scan_rate']:,.0f}/s, snr_max "
        f"{out['max_rate']:,.0f}/s, scan_batch_with_max {out['both_rate']:,.0f}/s; read + scan_batch_with_max "
        f"in 4,096-row batches {out['e2e_rate']:,.0f}/s; classic correlate1d loop ({nb:,} spectra) "
        f"{out['classic_rate']:,.0f}/s -> speed-up {out['both_rate'] / out['classic_rate']:.0f}x",
        flush=True,
    )
    print(f"{len(hits)} hits; {out['completeness']:.1%} of the injected lines found within 3 px", flush=True)
    # sanity: the same best S/N and the same peaks as the classic loop
    both = np.isfinite(cbest) & np.isfinite(best[:nb])
    rel = np.abs(cbest[both] - best[:nb][both]) / np.maximum(np.abs(cbest[both]), 1e-9)
    out["classic_max_rel_diff"] = float(rel.max()) if rel.size else float("nan")
    out["classic_nan_agree"] = bool(np.array_equal(np.isnan(cbest), np.isnan(best[:nb])))
    sel = hits.row < nb
    near = [bool(np.any(np.abs(cpeaks[r] - px) <= 1)) for r, px in zip(hits.row[sel], hits.pixel[sel], strict=True)]
    out["classic_peak_agree"] = float(np.mean(near)) if near else float("nan")
    print(
        f"sanity vs classic on {nb:,} spectra: best S/N max relative difference {out['classic_max_rel_diff']:.1e} "
        f"(NaN rows agree: {out['classic_nan_agree']}); {out['classic_peak_agree']:.1%} of lenscat's "
        f"{int(sel.sum())} hits there have a classic peak within 1 px",
        flush=True,
    )
    for r in np.unique(hits.row[sel])[:4]:
        print(
            f"  spectrum {r}: lenscat hits at px {hits.pixel[hits.row == r].tolist()} (S/N "
            f"{np.round(hits.snr[hits.row == r], 2).tolist()}), classic peaks at px {cpeaks[r].tolist()}; "
            f"best S/N {best[r]:.3f} vs {cbest[r]:.3f}",
            flush=True,
        )
    return out, rows


# ------------------------------------------------------------------------------------------ ResNet
def bench_resnet(args: argparse.Namespace, rows: Any) -> dict[str, Any]:
    """(c) SpecResNet inference with and without input preparation."""
    import torch

    from lenscat.models.specnet import SpecResNet
    from lenscat.models.specnet_inference import predict
    from lenscat.models.specnet_inputs import prepare_inputs
    from lenscat.spectra.grid import WINDOW
    from lenscat.spectra.masks import specnet_pixel_mask

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    n = min(args.resnet_rows, len(rows))
    a = (rows.flux[:n], rows.ivar[:n], rows.continuum[:n], rows.z[:n])
    model = SpecResNet()
    mask = specnet_pixel_mask
    predict(
        model, prepare_inputs(*(x[:1024] for x in a), wave=WINDOW.wave, pixel_mask=mask), batch_size=1024, device="cpu"
    )
    t_prep, x = best_of(lambda: prepare_inputs(*a, wave=WINDOW.wave, pixel_mask=mask), args.repeats)
    t_pred, _ = best_of(lambda: predict(model, x, batch_size=1024, device="cpu"), args.repeats)
    t_both, _ = best_of(
        lambda: predict(model, prepare_inputs(*a, wave=WINDOW.wave, pixel_mask=mask), batch_size=1024, device="cpu"),
        args.repeats,
    )
    out = {
        "rows": n,
        "threads": torch.get_num_threads(),
        "prepare_rate": n / t_prep,
        "predict_rate": n / t_pred,
        "both_rate": n / t_both,
    }
    print(
        f"\n(c) ResNet ({n:,} spectra, batch 1,024, {out['threads']} threads): predict {out['predict_rate']:,.0f} "
        f"spectra/s; prepare_inputs {out['prepare_rate']:,.0f}/s; prepare + predict {out['both_rate']:,.0f}/s "
        f"({out['both_rate'] / LI2018_RATE:.1f}x Li et al.'s ~230/s)",
        flush=True,
    )
    return out


# ------------------------------------------------------------------------------------ in-DB scans
def bench_scan(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """(d) scan_spectra over the ETL's spectra for both detector kinds."""
    from sqlalchemy import text

    from lenscat.db.session import session_scope
    from lenscat.models.specnet import SpecResNet, save_specnet
    from lenscat.models.specnet_inference import predict
    from lenscat.models.specnet_inputs import prepare_inputs
    from lenscat.registry.versions import register_model, store_checkpoint
    from lenscat.spectra.grid import WINDOW
    from lenscat.spectra.ingest import pack_store
    from lenscat.spectra.masks import specnet_pixel_mask
    from lenscat.spectra.scan import register_matched_filter, scan_spectra

    out: dict[str, Any] = {}
    with session_scope() as s:
        ids = np.array(s.execute(text("SELECT spectrum_id FROM lenscat.spectra ORDER BY 1")).scalars().all())
        pid, prow = s.execute(
            text("SELECT pack_id, array_agg(pack_row ORDER BY pack_row) FROM lenscat.spectra GROUP BY pack_id")
        ).one()
        store = pack_store(int(pid), session=s)
    out["spectra"] = int(ids.size)
    # a ResNet detector whose threshold passes ~1 % of these spectra (as a trained one at its operating point)
    torch_model = SpecResNet()
    rows = store.read(np.asarray(prow))
    x = prepare_inputs(rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave, pixel_mask=specnet_pixel_mask)
    prob, _ = predict(torch_model, x, device="cpu")
    thr = float(np.quantile(prob, 0.99))
    ck = work / "specnet.pt"
    save_specnet(torch_model, ck, hparams={"threshold": thr})
    stored, sha = store_checkpoint(ck)
    with session_scope() as s:
        mf, _ = register_matched_filter("bench-mf", sample="all", session=s)
        rn, _ = register_model(
            "detector",
            "bench-specnet",
            architecture="specnet",
            output_dim=1,
            checkpoint_path=stored,
            checkpoint_sha256=sha,
            origin="initialised",
            hparams={"threshold": thr, "sample": "all"},
            session=s,
        )
    for label, model in (("matched-filter", mf), ("specnet", rn)):
        t0 = time.perf_counter()
        with session_scope() as s:
            n = scan_spectra(model, ids, session=s, device="cpu")
        dt = time.perf_counter() - t0
        with session_scope() as s:
            nh = int(
                s.execute(
                    text("SELECT count(*) FROM lenscat.spectral_hits WHERE model_id = :m"), {"m": model.model_id}
                ).scalar_one()
            )
        out[f"{label}_rate"] = n / dt
        out[f"{label}_hits"] = nh
        print(
            f"(d) scan_spectra {label}: {n:,} spectra in {dt:.2f} s = {n / dt:,.0f} spectra/s, {nh} hits "
            "line-fitted and written",
            flush=True,
        )
    return out


# ------------------------------------------------------------------------------------------ report
def report(r: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown section for docs/benchmarks.md."""
    e, m, c, d = r["etl"], r["mf"], r["resnet"], r["scan"]
    rows = [
        (
            "(a) ETL: FITS -> packed store + DB",
            f"{e['ingest_rate']:,.0f} (`ingest_spectra`, 2 workers)",
            f"{e['astropy_rate']:,.0f} (astropy read only, 1 process)",
            f"{e['ingest_rate'] / e['astropy_rate']:.2f}x",
        ),
        ("(b) `PackStore.read`", f"{m['read_rate']:,.0f}", "", ""),
        (
            "(b) `scan_batch`",
            f"{m['scan_rate']:,.0f}",
            f"{m['classic_rate']:,.0f} (classic correlate1d loop)",
            speedup(1 / m["classic_rate"], 1 / m["scan_rate"]),
        ),
        ("(b) `snr_max`", f"{m['max_rate']:,.0f}", "", ""),
        (
            "(b) `scan_batch_with_max` (hits + best S/N)",
            f"{m['both_rate']:,.0f}",
            f"{m['classic_rate']:,.0f} (classic, which gives both)",
            speedup(1 / m["classic_rate"], 1 / m["both_rate"]),
        ),
        ("(b) read + `scan_batch_with_max`, 4,096-row batches", f"{m['e2e_rate']:,.0f}", "", ""),
        (
            "(c) `predict` (batch 1,024)",
            f"{c['predict_rate']:,.0f}",
            f"{LI2018_RATE:.0f} (Li et al. 2018)",
            f"{c['predict_rate'] / LI2018_RATE:.1f}x",
        ),
        (
            "(c) `prepare_inputs` + `predict`",
            f"{c['both_rate']:,.0f}",
            f"{LI2018_RATE:.0f} (Li et al. 2018)",
            f"{c['both_rate'] / LI2018_RATE:.1f}x",
        ),
        (
            "(d) `scan_spectra`, matched filter",
            f"{d['matched-filter_rate']:,.0f} ({d['matched-filter_hits']} hits)",
            "",
            "",
        ),
        ("(d) `scan_spectra`, ResNet", f"{d['specnet_rate']:,.0f} ({d['specnet_hits']} hits)", "", ""),
    ]
    table = "\n".join(
        ["| measure | lenscat spectra/s | baseline spectra/s | ratio |", "|---|---|---|---|"]
        + [f"| {' | '.join(x)} |" for x in rows]
    )
    goals = [
        goal(
            m["both_rate"] >= MF_GOAL,
            f"matched filter >= 20,000 spectra/s (`scan_batch_with_max`: {m['both_rate']:,.0f})",
        ),
        goal(
            m["e2e_rate"] >= MF_GOAL,
            f"matched filter from the packed store >= 20,000 spectra/s (read + search: {m['e2e_rate']:,.0f})",
        ),
        goal(
            c["predict_rate"] >= RESNET_GOAL,
            f"ResNet inference >= 1,000 spectra/s (`predict`: {c['predict_rate']:,.0f})",
        ),
        goal(
            c["both_rate"] >= RESNET_GOAL, f"ResNet with input preparation >= 1,000 spectra/s ({c['both_rate']:,.0f})"
        ),
    ]
    cmd = (
        "python bench/spectra.py"
        + (" --quick" if args.quick else "")
        + (f" --files {args.files} --rows {args.rows}" if not args.quick else "")
    )
    return (
        f"""## Spectroscopic search (issue 5)

**Date:** {info["date_utc"]}. **Machine:** {info["cpu_count"]}-core {info["cpu"]}, {info["ram_gb"]} GB RAM,
Python {info["python"]}, torch {info["torch"]} ({c["threads"]} threads for the ResNet), embedded PostgreSQL;
load average {info["loadavg_start"]} at the start, {info["loadavg_end"]} at the end.

**Command:** `{cmd}` (its own embedded server in a temporary `LENSCAT_HOME`).

**Data.** (a) {e["files"]:,} files ({round(args.desi_fraction * 100)} % DESI coadds with their redrock file, the
rest copies of the four SDSS `spec-*` test files), keys rewritten so that all {e["spectra"]:,} spectra are
inserted. (b)-(c) {m["rows"]:,} synthetic BOSS early-type spectra (`make_training_set`, seed {args.seed},
{m["lines"]:,} with a Lyα line) in a `PackStore`; the classic loop runs on the first {m["classic_rows"]:,}.
(d) the spectra of (a).

**What is timed** (best of {args.repeats} passes where repeated). (a) `ingest_spectra` end to end (2 reader
processes: FITS read, window and veto grids, continuum fit where the file has no model, HDF5 append,
database rows, source linking, commits) against plain `astropy.io.fits` reads of every file in one
process, no database. (b) `scan_batch` / `snr_max` / `scan_batch_with_max` on 2 threads over all rows
in memory, the store read alone, and read + `scan_batch_with_max` in scan.py's 4,096-row batches;
baseline: per spectrum the same masks, robust ivar rescaling, kernel bank (σ = 1, 1.6, 2.5, 4 px) and
coverage cut with `scipy.ndimage.correlate1d` (BELLS GALLERY recipe). (c) `predict` of a default
`SpecResNet` (untrained; speed does not depend on the weights) at batch 1,024, with and without
`prepare_inputs`. (d) `scan_spectra` (store read, detection, skew-normal fit and vetoes of each
candidate, hit and scan rows) for a matched-filter version and a ResNet version whose threshold passes
~1 % of the spectra.

{table}

Sanity check against the classic loop ({m["classic_rows"]:,} spectra): best S/N per spectrum equal to
{m["classic_max_rel_diff"]:.1e} (relative), {m["classic_peak_agree"]:.0%} of lenscat's hits there at a classic
peak (±1 px); {m["completeness"]:.1%} of the injected lines found (±3 px, S/N ≥ 6) among {m["hits"]:,} hits.

"""
        + "\n".join(f"* {g}" for g in goals)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run of about a minute)")
    ap.add_argument("--files", type=int, default=None, help="spectrum files for the ETL (default 1,000)")
    ap.add_argument("--desi-fraction", type=float, default=0.2, help="share of DESI coadds among them")
    ap.add_argument("--rows", type=int, default=None, help="synthetic spectra for (b) and (c) (default 20,000)")
    ap.add_argument("--baseline-rows", type=int, default=None, help="spectra for the classic loop (default 2,000)")
    ap.add_argument("--resnet-rows", type=int, default=None, help="spectra for the ResNet (default: --rows)")
    ap.add_argument("--repeats", type=int, default=None, help="passes per measure (default 3; quick 1)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, help="write the results as .json or .md")
    ap.add_argument("--record", action="store_true", help="append the markdown section to docs/benchmarks.md")
    args = ap.parse_args(argv)
    q = args.quick
    args.files = args.files or (60 if q else 1000)
    args.rows = args.rows or (3000 if q else 20_000)
    args.baseline_rows = args.baseline_rows or (300 if q else 2000)
    args.resnet_rows = args.resnet_rows or args.rows
    args.repeats = args.repeats or (1 if q else 3)
    home = tempfile.mkdtemp(prefix="lenscat-bench-")
    os.chmod(home, 0o755)
    os.environ.pop("LENSCAT_DATABASE_URL", None)
    os.environ["LENSCAT_HOME"] = home
    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine

    info = machine_info(with_torch=True)
    info["date_utc"] = (
        subprocess.run(
            ["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or info["date_utc"]
    )
    print(
        f"lenscat spectra benchmark {info['date_utc']}: {info['cpu_count']} cores ({info['cpu']}), "
        f"{info['ram_gb']} GB, Python {info['python']}, torch {info['torch']}, load {info['loadavg_start']}",
        flush=True,
    )
    results: dict[str, Any] = {}
    work = Path(home) / "bench"
    work.mkdir()
    try:
        ensure_schema()
        results["etl"] = bench_etl(args, work)
        results["mf"], rows = bench_mf(args, work)
        results["resnet"] = bench_resnet(args, rows)
        results["scan"] = bench_scan(args, work)
    finally:
        dispose_engine()
        stop_embedded()
        shutil.rmtree(home, ignore_errors=True)
    info["loadavg_end"] = loadavg()
    md = report(results, info, args)
    print("\n" + md)
    if args.out:
        args.out.write_text(
            json.dumps({"machine": info, "results": results}, indent=1, default=str)
            if args.out.suffix == ".json"
            else md
        )
    if args.record:
        doc = ROOT / "docs" / "benchmarks.md"
        doc.write_text(doc.read_text().rstrip("\n") + "\n\n" + md)
        print(f"appended to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
