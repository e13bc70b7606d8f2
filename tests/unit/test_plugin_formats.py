"""Plug-in tables: a toy cutout format and a toy export format, registered only inside the test."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from lenscat.errors import LenscatError
from lenscat.images.cutout import Cutout
from lenscat.images.formats import format_names, get_format, registered_format
from lenscat.images.rows import check_rows
from lenscat.images.store import close_stores, open_store
from lenscat.images.types import CutoutStore


class ToyStore:
    """Every row is a (2, 4, 4) image filled with its row number."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __len__(self) -> int:
        return 3

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = check_rows(rows, self.path, len(self))
        return np.broadcast_to(idx[:, None, None, None], (idx.size, 2, 4, 4)).astype(np.float32)

    def get_one(self, row: int) -> Cutout:
        return Cutout(self.get([row])[0], ["g", "r"], 0.2 * u.arcsec, None, "nanomaggy", str(self.path))

    def iter_batches(
        self, rows: Sequence[int] | np.ndarray | None = None, batch_size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        idx = np.arange(len(self)) if rows is None else np.unique(check_rows(rows, self.path, len(self)))
        for i in range(0, idx.size, batch_size):
            yield idx[i : i + batch_size], self.get(idx[i : i + batch_size])

    def close(self) -> None:
        pass


def test_builtin_cutout_formats() -> None:
    assert {"hdf5-stein", "fits"} <= set(format_names())
    assert get_format("hdf5").name == "hdf5-stein" and get_format("hdf5-stein").row_digests
    assert get_format("fits").single_object and get_format("fits").member_files
    with pytest.raises(LenscatError, match="unknown cutout format 'toy'"):
        get_format("toy")


def test_toy_cutout_format_is_found_by_the_table(tmp_path: Path) -> None:
    with registered_format("toy", ToyStore, description="test only") as fmt:
        assert "toy" in format_names() and get_format("toy") is fmt
        store = open_store(tmp_path / "x.toy", "toy")
        assert isinstance(store, ToyStore) and isinstance(store, CutoutStore)
        assert open_store(tmp_path / "x.toy", "toy") is store  # cached like the built-in stores
        assert store.get([2, 0])[:, 0, 0, 0].tolist() == [2.0, 0.0]
        with pytest.raises(LenscatError, match="outside the file's 3 images"):
            store.get([3])
    close_stores()
    assert "toy" not in format_names()
    with pytest.raises(LenscatError, match="unknown cutout format"):
        open_store(tmp_path / "x.toy", "toy")


def _write_toy(table: Table, path: str) -> None:
    Path(path).write_text("\n".join(str(v) for v in table["source_id"]) + "\n")


def test_toy_export_format_is_written_and_offered_by_the_cli(tmp_path: Path) -> None:
    import lenscat.cli.export as cli_export
    from lenscat.export import formats

    formats.register_export_format("toy", _write_toy, suffixes=(".toy",), media_type="text/plain")
    try:
        assert "toy" in formats.export_format_names() and formats.MEDIA_TYPES["toy"] == "text/plain"
        assert formats.export_format(tmp_path / "c.toy") == "toy"
        assert formats.FILE_SUFFIXES["toy"] == ".toy"
        path = formats.write_candidates(Table({"source_id": [3, 1]}), tmp_path / "c.toy")
        assert path.read_text() == "3\n1\n"
        with pytest.raises(LenscatError, match="the extension says csv but the format is toy"):
            formats.export_format(tmp_path / "c.csv", "toy")
        fresh = importlib.reload(cli_export)  # the command as a new process would build it
        option = next(p for p in fresh.export_cmd.params if p.name == "fmt")
        assert "toy" in option.type.choices
        help_text = CliRunner().invoke(fresh.export_cmd, ["--help"]).output
        assert "toy" in help_text
    finally:
        formats.unregister_export_format("toy")
        importlib.reload(cli_export)
    assert "toy" not in formats.export_format_names() and "toy" not in formats.MEDIA_TYPES
    option = next(p for p in cli_export.export_cmd.params if p.name == "fmt")
    assert list(option.type.choices) == ["fits", "votable", "ecsv", "csv"]  # type: ignore[attr-defined]
