"""Helpers shared by the benchmark scripts (run as ``python bench/NAME.py``; not part of lenscat)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` of ``values``."""
    return float(np.percentile(np.asarray(values), q))


def ratio(a: float, b: float) -> float:
    """``a / b`` (nan when ``b`` is 0)."""
    return a / b if b else float("nan")


def speedup(baseline_time: float, lenscat_time: float) -> str:
    """``baseline / lenscat`` as ``1.23x`` (``12x`` from 10 up)."""
    x = ratio(baseline_time, lenscat_time)
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def goal(ok: bool, text: str) -> str:
    """``TEXT: met`` or ``TEXT: NOT met``."""
    return f"{text}: {'met' if ok else 'NOT met'}"


def format_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...], markdown: bool) -> str:
    """Rows as a markdown or a plain aligned table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def loadavg() -> tuple[float, ...] | None:
    """The 1/5/15-minute load average, rounded (None where the OS has none)."""
    return tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(*, with_torch: bool = False) -> dict[str, Any]:
    """CPU, memory, OS, Python (and torch) of this machine, and the load average now."""
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "machine": platform.machine(),
        "ram_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }
    if with_torch:
        import torch

        info.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        )
    return info


def ingest_uniform_sky(
    n: int, seed: int, home: Path, survey: str
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Ingest ``n`` sources uniform on the sphere (``seed``) as ``survey`` into the configured database,
    VACUUM ANALYZE them, print the ingest time; return their ra, dec [deg] and the random generator
    (to draw on from where the positions left it)."""
    from astropy.table import Table
    from sqlalchemy import text

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.db.session import get_engine

    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    src = home / "sources.fits"
    Table({"objid": np.arange(n), "ra": ra, "dec": dec}).write(src)
    t0 = time.perf_counter()
    ingest_sources(src, survey)
    print(f"sources ingested: {n:,} in {time.perf_counter() - t0:.1f} s", flush=True)
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE lenscat.sources"))
    return ra, dec, rng


def own_embedded_home(home: str | Path) -> Path:
    """Point lenscat at a throw-away embedded server under ``home`` (its own ``LENSCAT_HOME``), ignoring
    any ``LENSCAT_DATABASE_URL`` (said when one was set); returns ``home``."""
    if os.environ.pop("LENSCAT_DATABASE_URL", None):
        print("note: LENSCAT_DATABASE_URL ignored; the benchmark uses its own embedded server")
    os.environ["LENSCAT_HOME"] = str(home)
    return Path(home)
