import io
import json

import astropy.units as u
import numpy as np
from astropy.table import Table

from lenscat.io.output import write_rows, write_table


def test_json_lines_one_object_per_row():
    out = io.StringIO()
    write_rows(["a", "b"], [(1, float("nan")), (2, [1, 2])], "json", out)
    lines = out.getvalue().splitlines()
    assert [json.loads(x) for x in lines] == [{"a": 1, "b": None}, {"a": 2, "b": [1, 2]}]


def test_csv_and_table_with_units():
    t = Table({"ra": np.array([1.5]) * u.deg, "name": ["x"]})
    out = io.StringIO()
    write_table(t, "csv", out)
    assert out.getvalue().splitlines() == ["ra,name", "1.5,x"]
    out = io.StringIO()
    write_table(t, "table", out)
    assert out.getvalue().splitlines()[0].startswith("ra [deg]")
    assert "(1 row)" in out.getvalue()
