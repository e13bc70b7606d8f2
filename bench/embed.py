#!/usr/bin/env python
"""Benchmark: encoder inference throughput (images/s) from an HDF5 cutout file.

One run measures, per architecture (``resnet-small`` and ``resnet50`` from
:func:`lenscat.models.resnet.build_encoder`, freshly initialised: throughput does not depend on the
weights), device (CPU, and CUDA when ``torch.cuda.is_available()``) and batch size (64, 128, 256,
512), lenscat's path against a plain h5py + torch baseline on the same file and in the same
process:

* **read only**: the images read from a Stein-layout HDF5 file (root dataset ``images``, float32
  ``(N, 3, 152, 152)`` nanomaggies, one image per chunk) in batches: lenscat's
  ``HDF5CutoutStore.iter_batches(rows, batch_size)`` (which calls ``get``; when
  :mod:`lenscat.images.store` is not importable, an h5py reader defined here, reported as such) vs
  ``dataset[lo:hi]`` with h5py;
* **inference only**: images already in memory: ``lenscat.models.inference.encode(encoder, images,
  batch_size=..., device=...)`` (lenscat's preprocessing: NaN -> 0, 96-pixel centre crop, per-band
  arcsinh stretch, clipping; eval mode, no gradients; L2 normalisation) vs a plain forward pass
  of the same encoder on the numpy centre crop (``torch.inference_mode``, no stretch, no
  normalisation);
* **end to end**: read + preprocessing + forward: ``lenscat.models.inference.iter_encode`` over the
  cutout store (the library's streaming path: it reads the next batch on a thread while the
  current one runs) vs a sequential h5py read + crop + forward loop.

Each (encoder, batch size) runs the six measures in turn, ``--repeats`` times over (lenscat and
baseline alternate, so load from other processes hits both sides alike), and keeps the best rate
of each. The HDF5 file is written once before timing; reads therefore come from the OS page cache (the
file is far smaller than RAM), which is the best case for the reading side. torch uses one
thread per core (``torch.set_num_threads(os.cpu_count())``).

Usage::

    python bench/embed.py [--quick] [--n-small 2048] [--n-large 512] [--out results.json|.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import format_table, loadavg, machine_info

BATCH_SIZES = (64, 128, 256, 512)
STAMP = 152  # Stein et al. (2022) cutout side, pixels
BANDS = 3
SKY_NOISE = (0.0024, 0.0034, 0.0099)  # nanomaggies per pixel, g r z (DECaLS DR9 typical)


# --------------------------------------------------------------------------------------------
# data


def write_cutouts(path: Path, n: int, *, seed: int, chunk: int = 256) -> float:
    """Write ``n`` synthetic g, r, z cutouts in the Stein layout; returns the seconds taken.

    Each image is Gaussian sky noise at the DECaLS level plus a centred elliptical galaxy
    (exponential-like profile) and a few point sources; the root dataset ``images`` is float32
    ``(n, 3, 152, 152)``, chunked one image per chunk, uncompressed.
    """
    import h5py

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:STAMP, 0:STAMP].astype(np.float32) - (STAMP - 1) / 2
    noise = np.asarray(SKY_NOISE, dtype=np.float32)[None, :, None, None]
    t0 = time.perf_counter()
    with h5py.File(path, "w") as fh:
        dset = fh.create_dataset("images", shape=(n, BANDS, STAMP, STAMP), dtype="f4", chunks=(1, BANDS, STAMP, STAMP))
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            m = hi - lo
            img = rng.standard_normal((m, BANDS, STAMP, STAMP), dtype=np.float32) * noise
            q = rng.uniform(0.4, 1.0, m).astype(np.float32)[:, None, None]
            pa = rng.uniform(0, np.pi, m).astype(np.float32)[:, None, None]
            re = rng.uniform(2.0, 8.0, m).astype(np.float32)[:, None, None]
            u = xx * np.cos(pa) + yy * np.sin(pa)
            v = (-xx * np.sin(pa) + yy * np.cos(pa)) / q
            prof = np.exp(-np.sqrt(u**2 + v**2) / re)
            amp = rng.lognormal(-2.0, 1.0, (m, BANDS)).astype(np.float32)
            img += amp[:, :, None, None] * prof[:, None]
            for _ in range(3):  # point sources
                px, py = rng.integers(5, STAMP - 5, (2, m))
                img[np.arange(m), :, py, px] += rng.lognormal(-1.5, 1.0, (m, 1)).astype(np.float32)
            dset[lo:hi] = img
    return time.perf_counter() - t0


class H5Source:
    """Fallback :class:`lenscat.models.data.ImageSource` over the HDF5 file (h5py directly).

    Used only when :mod:`lenscat.images.store` is not importable; sorted reads, contiguous runs as
    slices.
    """

    def __init__(self, path: Path) -> None:
        import h5py

        self._fh = h5py.File(path, "r")
        self._dset = self._fh["images"]

    def __len__(self) -> int:
        """Number of images."""
        return int(self._dset.shape[0])

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Images at ``indices`` (float32), in the order given."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and np.all(np.diff(idx) == 1):
            return np.asarray(self._dset[int(idx[0]) : int(idx[-1]) + 1], dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        out = np.asarray(self._dset[idx[order]], dtype=np.float32)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return out[back]

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def open_store(path: Path) -> tuple[Any, str]:
    """lenscat's cutout store for ``path`` (or the fallback) and a description of which one."""
    try:
        from lenscat.images.store import HDF5CutoutStore
    except ImportError as exc:
        return H5Source(path), f"bench H5Source (h5py; lenscat.images.store not importable: {exc})"
    return HDF5CutoutStore(path), "lenscat.images.store.HDF5CutoutStore"


def close_store(store: Any) -> None:
    """Close a store if it can be closed."""
    close = getattr(store, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------------------------
# helpers


def log(msg: str) -> None:
    """Print with a timestamp and flush."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: str) -> None:
    """Wait for queued CUDA work (no-op on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], int], repeats: int, device: str) -> tuple[float, list[float]]:
    """Best images/s over ``repeats`` calls of ``fn`` (which returns the images processed), and all."""
    rates = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        n = fn()
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates), rates


def batches(n: int, bs: int) -> Iterator[tuple[int, int]]:
    """(lo, hi) of consecutive batches of ``bs`` over ``range(n)``."""
    for lo in range(0, n, bs):
        yield lo, min(n, lo + bs)


# --------------------------------------------------------------------------------------------
# the measurements


def bench_arch(arch: str, path: Path, n: int, device: str, batch_sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    """Read-only, inference-only and end-to-end rates, lenscat vs baseline, per batch size."""
    import h5py
    import torch

    from lenscat.models.inference import encode, iter_encode
    from lenscat.models.resnet import build_encoder

    torch.manual_seed(0)
    enc = build_encoder(arch).eval()
    pre = enc.preprocessing
    n_params = sum(p.numel() for p in enc.parameters())
    store, store_kind = open_store(path)
    fh = h5py.File(path, "r")
    dset = fh["images"]
    rows = np.arange(n, dtype=np.int64)
    oy = (STAMP - pre.crop) // 2
    crop = slice(oy, oy + pre.crop)
    dev = torch.device(device)
    plain = build_encoder(arch).eval().to(dev)
    plain.load_state_dict(enc.state_dict())
    if device == "cuda":
        # Module.to accepts memory_format (documented), but torch's overloads omit it
        plain = plain.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    log(
        f"  {arch}: {n_params / 1e6:.2f} M parameters, output {enc.output_dim}-d, input {pre.crop} px "
        f"({pre.stretch}); {n} images; store: {store_kind}"
    )
    images = np.asarray(dset[:n])  # in memory, for the inference-only measures

    def lib_read(bs: int) -> int:
        if hasattr(store, "iter_batches"):
            return sum(len(img) for _, img in store.iter_batches(rows, bs))
        return sum(len(store.get(rows[lo:hi])) for lo, hi in batches(n, bs))

    def base_read(bs: int) -> int:
        k = 0
        for lo, hi in batches(n, bs):
            k += len(dset[lo:hi])
        return k

    def lib_infer(bs: int) -> int:
        return len(encode(enc, images, batch_size=bs, device=device))

    def plain_forward(x: np.ndarray) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(x[:, :, crop, crop])).to(dev, non_blocking=True)
        if device == "cuda":
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return plain(t)

    def base_infer(bs: int) -> int:
        k = 0
        for lo, hi in batches(n, bs):
            k += len(plain_forward(images[lo:hi]))
        return k

    def lib_e2e(bs: int) -> int:
        return sum(len(v) for _, v in iter_encode(enc, store, rows, batch_size=bs, device=device))

    def base_e2e(bs: int) -> int:
        k = 0
        for lo, hi in batches(n, bs):
            k += len(plain_forward(dset[lo:hi]).cpu())
        return k

    # agreement check: lenscat's streaming path equals encode() on the same images
    a = encode(enc, images[:8], batch_size=8, device=device)
    b = np.concatenate([v for _, v in iter_encode(enc, store, rows[:8], batch_size=4, device=device)])
    max_diff = float(np.abs(a - b).max())
    # warm-up (allocators, oneDNN primitives) at the smallest and largest batch size
    for bs in (min(batch_sizes), max(batch_sizes)):
        k = min(n, bs)
        encode(enc, images[:k], batch_size=bs, device=device)
        plain_forward(images[:k])

    out: dict[str, Any] = {
        "arch": arch,
        "device": device,
        "images": n,
        "params": n_params,
        "store": store_kind,
        "crop": pre.crop,
        "stretch": pre.stretch,
        "iter_encode_vs_encode_max_diff": max_diff,
        "by_batch": {},
    }
    measures = (
        ("lib_read", lib_read),
        ("base_read", base_read),
        ("lib_infer", lib_infer),
        ("base_infer", base_infer),
        ("lib_e2e", lib_e2e),
        ("base_e2e", base_e2e),
    )
    for bs in batch_sizes:
        r: dict[str, Any] = {key + "_all": [] for key, _ in measures}
        # interleaved: lenscat and baseline alternate, and every measure is repeated after all the
        # others, so a burst of load from other processes does not fall on one side only
        for _ in range(repeats):
            for key, fn in measures:
                r[key + "_all"] += timed(lambda fn=fn, bs=bs: fn(bs), 1, device)[1]  # type: ignore[misc]
        for key, _ in measures:
            r[key] = max(r[key + "_all"])
        r["loadavg"] = loadavg()
        out["by_batch"][bs] = r
        log(
            f"  {arch} {device} batch {bs}: read {r['lib_read']:,.0f} (h5py {r['base_read']:,.0f}); "
            f"inference {r['lib_infer']:,.1f} (plain {r['base_infer']:,.1f}); "
            f"end-to-end {r['lib_e2e']:,.1f} (plain {r['base_e2e']:,.1f}) images/s; load {r['loadavg']}"
        )
    fh.close()
    close_store(store)
    return out


# --------------------------------------------------------------------------------------------
# report


def results_table(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """(architecture, device, batch, read, inference, end-to-end) rows with lenscat/baseline ratios."""
    rows: list[tuple[str, ...]] = []
    for a in res["runs"]:
        for bs, r in a["by_batch"].items():

            def cell(lib: float, base: float) -> str:
                return (
                    f"{lib:,.1f} / {base:,.1f} ({lib / base:.2f})"
                    if lib < 1000
                    else f"{lib:,.0f} / {base:,.0f} ({lib / base:.2f})"
                )

            rows.append(
                (
                    a["arch"],
                    a["device"],
                    str(bs),
                    cell(r["lib_read"], r["base_read"]),
                    cell(r["lib_infer"], r["base_infer"]),
                    cell(r["lib_e2e"], r["base_e2e"]),
                )
            )
    return rows


HEADER = (
    "encoder",
    "device",
    "batch",
    "read only: lenscat / h5py (ratio)",
    "inference only: encode / plain forward (ratio)",
    "end to end: iter_encode / h5py + forward (ratio)",
)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the HDF5 file, time every (encoder, device, batch) and report."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-small", type=int, default=2048, help="images for resnet-small (default 2048)")
    ap.add_argument("--n-large", type=int, default=512, help="images for resnet50 on the CPU (default 512)")
    ap.add_argument("--n-cuda", type=int, default=8192, help="images per encoder on CUDA (default 8192)")
    ap.add_argument("--archs", default="resnet-small,resnet50", help="comma-separated architectures")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=list(BATCH_SIZES))
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per measure (the best is kept)")
    ap.add_argument("--repeats-large", type=int, default=1, help="timed passes for resnet50 on the CPU")
    ap.add_argument("--quick", action="store_true", help="256 / 64 images, batch sizes 64 and 128, one pass")
    ap.add_argument("--dir", default=None, help="where to write the HDF5 file (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, help="write results as .json or .md")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_small, args.n_large, args.n_cuda = 256, 64, 512
        args.batch_sizes, args.repeats, args.repeats_large = [64, 128], 1, 1

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    archs = [a for a in args.archs.split(",") if a]
    info = machine_info(with_torch=True)
    print(
        f"lenscat embedding benchmark, {info['date_utc']}: {info['cpu_count']} CPUs ({info['cpu']}), "
        f"{info['ram_gb']} GB RAM, Python {info['python']}, torch {info['torch']} "
        f"({info['torch_threads']} threads), CUDA: {info['cuda']}; load {info['loadavg_start']}",
        flush=True,
    )
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lenscat-bench-embed-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "cutouts.h5"
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    try:
        n_file = max([args.n_small, args.n_large] + ([args.n_cuda] if "cuda" in devices else []))
        secs = write_cutouts(path, n_file, seed=args.seed)
        results["file"] = {"images": n_file, "bytes": path.stat().st_size, "write_s": secs}
        log(f"wrote {n_file:,} cutouts ({path.stat().st_size / 2**20:,.0f} MiB) in {secs:.1f} s")
        for device in devices:
            for arch in archs:
                small = arch == "resnet-small"
                n = args.n_cuda if device == "cuda" else (args.n_small if small else args.n_large)
                reps = args.repeats if small or device == "cuda" else args.repeats_large
                results["runs"].append(bench_arch(arch, path, n, device, args.batch_sizes, reps))
        info["loadavg_end"] = loadavg()
        rows = results_table(results)
        print()
        print(format_table(rows, HEADER, markdown=False))
        print(
            f"\nimages/s; ratio = lenscat / baseline. Load average at start {info['loadavg_start']}, "
            f"at end {info['loadavg_end']}"
        )
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if args.out.suffix == ".json":
                args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            else:
                args.out.write_text(format_table(rows, HEADER, markdown=True) + "\n")
            print(f"results written to {args.out}")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
