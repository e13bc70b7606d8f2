"""What the TAP service writes: result tables (VOTable, CSV, JSON), errors, and the VOSI documents.

Result VOTables are written by :mod:`astropy.io.votable` (TABLEDATA), with each published column's
unit, UCD and description (TAP_SCHEMA.columns, from the column comments). As DALI 1.1 says, the
RESOURCE carries ``<INFO name="QUERY_STATUS" value="OK"/>`` before the table, and a result cut at
MAXREC or the hard limit carries ``<INFO name="QUERY_STATUS" value="OVERFLOW"/>`` after it; an
error is a VOTable with ``QUERY_STATUS`` ``ERROR`` and a one-line message.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile

from lenscat.tap.types import ColumnMeta, TapResult

_OVERFLOW = '<INFO name="QUERY_STATUS" value="OVERFLOW"/>'


def _cell(value: Any) -> Any:
    """A database value as a VOTable/CSV/JSON scalar (dates ISO 8601, arrays and others as text)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return " ".join("" if v is None else str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    try:
        return float(value)  # Decimal
    except (TypeError, ValueError):
        return str(value)


def _kind(values: list[Any]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return "char"
    if kinds == {bool}:
        return "boolean"
    if kinds <= {int}:
        return "long"
    if kinds <= {int, float}:
        return "double"
    return "char"


def to_votable(result: TapResult) -> bytes:
    """The result as a VOTable 1.4 (TABLEDATA) with units, UCDs and descriptions."""
    vot = VOTableFile(version="1.4")
    resource = Resource(type="results")
    vot.resources.append(resource)
    resource.infos.append(Info(name="QUERY_STATUS", value="OK"))
    table = TableElement(vot, name="result")
    resource.tables.append(table)
    columns = [[_cell(r[i]) for r in result.rows] for i in range(len(result.columns))]
    names: list[str] = []
    for i, name in enumerate(result.columns):
        unique = name if name not in names else f"{name}_{i}"
        names.append(unique)
        kind = _kind(columns[i])
        meta = result.meta.get(name)
        attrs: dict[str, Any] = {"name": unique}
        if kind == "char":
            attrs.update(datatype="unicodeChar", arraysize="*")
        else:
            attrs["datatype"] = kind
        if meta is not None:
            if meta.unit:
                attrs["unit"] = meta.unit
            if meta.ucd:
                attrs["ucd"] = meta.ucd
        field = Field(vot, **attrs)
        if meta is not None and meta.description:
            field.description = meta.description
        table.fields.append(field)
    table.create_arrays(nrows=len(result.rows))
    for i, name in enumerate(names):
        kind = table.fields[i].datatype
        values = columns[i]
        mask = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
        if kind == "unicodeChar":
            data: Any = np.array(["" if v is None else str(v) for v in values], dtype=object)
        elif kind == "boolean":
            data = np.array([bool(v) if v is not None else False for v in values], dtype=bool)
        elif kind == "long":
            data = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
        else:
            data = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        table.array[name] = data
        table.array.mask[name] = mask
    out = io.BytesIO()
    vot.to_xml(out, tabledata_format="tabledata")
    xml = out.getvalue()
    if result.overflow:
        xml = xml.replace(b"</TABLE>", b"</TABLE>\n  " + _OVERFLOW.encode(), 1)
    return xml


def to_csv(result: TapResult) -> bytes:
    """The result as CSV with a header line (no units: use the VOTable for metadata)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _cell(v) for v in row])
    return out.getvalue().encode()


def to_json(result: TapResult) -> bytes:
    """The result as JSON: columns with unit, UCD and description, rows, and the overflow flag."""
    cols = []
    for name in result.columns:
        m = result.meta.get(name)
        cols.append(
            {
                "name": name,
                "unit": m.unit if m else None,
                "ucd": m.ucd if m else None,
                "description": m.description if m else None,
            }
        )
    doc = {
        "columns": cols,
        "rows": [[_json_value(_cell(v)) for v in r] for r in result.rows],
        "query_status": "OVERFLOW" if result.overflow else "OK",
    }
    return json.dumps(doc).encode()


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def error_votable(message: str) -> bytes:
    """A VOTable saying QUERY_STATUS ERROR with a one-line message (DALI 1.1 section 4.4)."""
    line = " ".join(message.split())
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
        '  <RESOURCE type="results">\n'
        f'    <INFO name="QUERY_STATUS" value="ERROR">{escape(line)}</INFO>\n'
        "  </RESOURCE>\n"
        "</VOTABLE>\n"
    ).encode()


# ------------------------------------------------------------------------------------------ VOSI
def tableset_xml(tables: list[dict[str, Any]], columns: list[ColumnMeta]) -> bytes:
    """VOSI tables (VODataService 1.1 tableset): schemas, tables, columns with units and UCDs."""
    by_table: dict[str, list[ColumnMeta]] = {}
    for c in columns:
        by_table.setdefault(c.table_name, []).append(c)
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
    ]
    schemas: dict[str, list[dict[str, Any]]] = {}
    for t in tables:
        schemas.setdefault(str(t["schema_name"]), []).append(t)
    for schema, ts in schemas.items():
        parts.append(f"  <schema><name>{escape(schema)}</name>")
        for t in ts:
            parts.append(
                f'    <table type="{escape(str(t["table_type"]))}"><name>{escape(str(t["table_name"]))}</name>'
            )
            if t.get("description"):
                parts.append(f"      <description>{escape(str(t['description']))}</description>")
            for c in by_table.get(str(t["table_name"]), []):
                parts.append(f"      <column><name>{escape(c.column_name)}</name>")
                if c.description:
                    parts.append(f"        <description>{escape(c.description)}</description>")
                if c.unit:
                    parts.append(f"        <unit>{escape(c.unit)}</unit>")
                if c.ucd:
                    parts.append(f"        <ucd>{escape(c.ucd)}</ucd>")
                arraysize = ' arraysize="*"' if c.datatype == "char" else ""
                parts.append(f'        <dataType xsi:type="vs:VOTableType"{arraysize}>{escape(c.datatype)}</dataType>')
                parts.append("      </column>")
            parts.append("    </table>")
        parts.append("  </schema>")
    parts.append("</vosi:tableset>")
    return ("\n".join(parts) + "\n").encode()


def capabilities_xml(base: str, *, default_maxrec: int, max_rec: int, job_seconds: int, timeout_s: int) -> bytes:
    """VOSI capabilities of the TAP service at ``base`` (``…/tap``), TAPRegExt 1.0."""
    b = escape(base)

    def vosi(std: str, path: str) -> str:
        return (
            f'  <capability standardID="ivo://ivoa.net/std/VOSI#{std}">\n'
            f'    <interface xsi:type="vs:ParamHTTP"><accessURL use="full">{b}/{path}</accessURL></interface>\n'
            "  </capability>"
        )

    features = "".join(f"<feature><form>{f}</form></feature>" for f in ("POINT", "CIRCLE", "CONTAINS", "DISTANCE"))
    text = f"""<?xml version="1.0" encoding="utf-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
    xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">
  <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">
    <interface xsi:type="vs:ParamHTTP" role="std" version="1.1">
      <accessURL use="base">{b}</accessURL>
    </interface>
    <language>
      <name>ADQL</name>
      <version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>
      <description>ADQL 2.0 (queryparser-python3), geometry on the zone sky index</description>
      <languageFeatures type="ivo://ivoa.net/std/TAPRegExt#features-adqlgeo">{features}</languageFeatures>
    </language>
    <outputFormat ivo-id="ivo://ivoa.net/std/TAPRegExt#output-votable-td">
      <mime>application/x-votable+xml</mime><alias>votable</alias>
    </outputFormat>
    <outputFormat><mime>text/csv</mime><alias>csv</alias></outputFormat>
    <outputFormat><mime>application/json</mime><alias>json</alias></outputFormat>
    <retentionPeriod><default>{job_seconds}</default><hard>{job_seconds}</hard></retentionPeriod>
    <executionDuration><default>{timeout_s}</default><hard>{timeout_s}</hard></executionDuration>
    <outputLimit><default unit="row">{default_maxrec}</default><hard unit="row">{max_rec}</hard></outputLimit>
  </capability>
{vosi("capabilities", "capabilities")}
{vosi("availability", "availability")}
{vosi("tables", "tables")}
</vosi:capabilities>
"""
    return text.encode()


def availability_xml(available: bool, note: str) -> bytes:
    """VOSI availability."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<avail:availability xmlns:avail="http://www.ivoa.net/xml/VOSIAvailability/v1.0">\n'
        f"  <avail:available>{'true' if available else 'false'}</avail:available>\n"
        f"  <avail:note>{escape(note)}</avail:note>\n"
        "</avail:availability>\n"
    ).encode()


def attr(value: str) -> str:
    """An XML attribute value, quoted."""
    return quoteattr(value)
