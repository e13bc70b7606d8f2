"""ADQL -> PostgreSQL for the TAP service, with ADQL geometry mapped onto the zone sky index.

Parsing and the translation of everything but geometry are ``queryparser-python3``'s
(:class:`queryparser.adql.ADQLQueryTranslator`, the ANTLR grammar of ADQL 2.1 kept by the AIP/
Gaia archive people). Its PostgreSQL output speaks pgSphere (``spoint``, ``scircle``, ``@``,
``<->``), which lenscat's server does not have; this module swaps its two geometry visitors for
ones that write lenscat's own SQL:

* ``DISTANCE(POINT(a, b), POINT(c, d))`` (or ``DISTANCE(a, b, c, d)``) -> ``lenscat_angsep(a, b, c, d)``
  [deg];
* ``CONTAINS(POINT(ra, dec), CIRCLE(ra0, dec0, r)) = 1`` -> the ids of the cone from the zone index
  (``t.source_id IN (SELECT public.tap_cone_source_ids(ra0, dec0, r))``) when ``ra``/``dec`` are the
  position columns of a published view whose rows come from ``lenscat.sources``,
  ``lenscat.literature_lenses`` or ``lenscat.spectra`` (:data:`CONE_KEYS`), else the exact
  separation ``lenscat_angsep(ra0, dec0, ra, dec) <= r``; ``= 0`` is the separation's complement.

Other geometry (``BOX``, ``POLYGON``, ``INTERSECTS``, ``AREA``, geometry values in the select list)
is refused with a one-line :class:`~lenscat.errors.InvalidParameter` naming ``query``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from queryparser.adql import ADQLQueryTranslator
from queryparser.adql.ADQLParser import ADQLParser
from queryparser.adql.adqltranslator import (
    ADQLFunctionsTranslationVisitor,
    ADQLGeometryTranslationVisitor,
    _remove_children,
)
from queryparser.exceptions import QueryError, QuerySyntaxError

from lenscat.errors import InvalidParameter

#: Published view -> (its id column, the cone function over the table its ra/dec come from).
CONE_KEYS: dict[str, tuple[str, str]] = {
    "sources": ("source_id", "tap_cone_source_ids"),
    "candidates": ("source_id", "tap_cone_source_ids"),
    "literature_lenses": ("lens_id", "tap_cone_lens_ids"),
    "spectral_hits": ("spectrum_id", "tap_cone_spectrum_ids"),
}

_GEOM = "lenscatgeom"
_GEOM_RE = re.compile(rf"{_GEOM}\d+")
_FROM_RE = re.compile(
    r"\b(?:FROM|JOIN)\s+(?:(\w+)\s*\.\s*)?(\w+)(?:\s+(?:AS\s+)?(?!(?:WHERE|JOIN|ON|INNER|LEFT|RIGHT|FULL|CROSS|"
    r"NATURAL|GROUP|ORDER|HAVING|LIMIT|OFFSET|UNION|USING)\b)(\w+))?",
    re.IGNORECASE,
)


@dataclass
class Translation:
    """An ADQL query as PostgreSQL.

    Attributes
    ----------
    sql
        The PostgreSQL statement (no trailing ``;``), ``TOP n`` as ``LIMIT n``.
    tables
        The tables named in FROM/JOIN, lower case, schema-qualified for ``tap_schema``.
    top
        ``TOP n`` of the outer query, None without one.
    indexed_cones
        How many CONTAINS predicates went through the sky index.
    """

    sql: str
    tables: list[str] = field(default_factory=list)
    top: int | None = None
    indexed_cones: int = 0


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class _Geometry(ADQLGeometryTranslationVisitor):
    """Points and circles become placeholders; their parts are kept for :class:`_Functions`."""

    def __init__(self) -> None:
        super().__init__("postgresql")
        self.shapes: dict[str, tuple[str, ...]] = {}

    def _keep(self, ctx: Any, shape: tuple[str, ...]) -> str:
        name = f"{_GEOM}{len(self.shapes)}"
        self.shapes[name] = shape
        _remove_children(ctx)
        self.contexts[ctx] = name
        return name

    def _coords(self, ctx: Any) -> list[str]:
        """The two coordinates of a POINT(['ICRS',] a, b) (or of a circle centre's coordinates)."""
        for child in ctx.children:
            if isinstance(child, ADQLParser.CoordinatesContext):
                return [self._sql_of(c) for c in child.children if c.getText() != ","]
        raise QueryError("POINT takes a longitude and a latitude")

    @staticmethod
    def _sql_of(ctx: Any) -> str:
        """The query's own text of a parse-tree node (spaces kept)."""
        stream = ctx.start.getInputStream()
        return str(stream.getText(ctx.start.start, ctx.stop.stop)).strip()

    def visitPoint(self, ctx: Any) -> None:
        coords = self._coords(ctx)
        if len(coords) != 2:
            raise QueryError("POINT takes a longitude and a latitude")
        self._keep(ctx, ("point", coords[0], coords[1]))

    def visitCircle(self, ctx: Any) -> None:
        centre = next((c for c in ctx.children if isinstance(c, ADQLParser.Circle_centerContext)), None)
        radius = next((c for c in ctx.children if isinstance(c, ADQLParser.RadiusContext)), None)
        if centre is None or radius is None:
            raise QueryError("CIRCLE takes a centre and a radius")
        if any(isinstance(c, ADQLParser.CoordinatesContext) for c in centre.children):
            coords = self._coords(centre)
        else:
            inner = centre
            while inner.getChildCount() == 1 and not isinstance(inner, ADQLParser.PointContext):
                inner = inner.children[0]
            if not isinstance(inner, ADQLParser.PointContext):
                raise QueryError("CIRCLE takes a centre (a POINT or two coordinates) and a radius")
            coords = self._coords(inner)
        if len(coords) != 2:
            raise QueryError("CIRCLE takes a centre (a POINT or two coordinates) and a radius")
        self._keep(ctx, ("circle", coords[0], coords[1], self._sql_of(radius)))

    def visitBox(self, ctx: Any) -> None:
        raise QueryError("BOX is not supported here; use CONTAINS(POINT(ra, dec), CIRCLE(ra0, dec0, r)) = 1")

    def visitPolygon(self, ctx: Any) -> None:
        raise QueryError("POLYGON is not supported here; use CONTAINS(POINT(ra, dec), CIRCLE(ra0, dec0, r)) = 1")


class _Functions(ADQLFunctionsTranslationVisitor):
    """CONTAINS and DISTANCE onto lenscat's SQL functions and cone index."""

    def __init__(self, geometry: _Geometry, aliases: dict[str, str]) -> None:
        super().__init__(geometry.contexts, "postgresql")
        self.shapes = geometry.shapes
        self.aliases = aliases
        self.indexed = 0

    def _shape(self, ctx: Any, index: int) -> tuple[str, ...]:
        node = ctx.children[index]
        while not isinstance(node, (ADQLParser.PointContext, ADQLParser.CircleContext)):
            if node.getChildCount() != 1 or not hasattr(node, "children"):
                raise QueryError("CONTAINS and DISTANCE take POINT and CIRCLE values written in the query")
            node = node.children[0]
        shape = self.shapes.get(self.contexts.get(node, ""))
        if shape is None:
            raise QueryError("CONTAINS and DISTANCE take POINT and CIRCLE values written in the query")
        return shape

    def _contains_sql(self, ctx: Any, inside: bool) -> str:
        point, circle = self._shape(ctx, 2), self._shape(ctx, 4)
        if point[0] != "point" or circle[0] != "circle":
            raise QueryError("CONTAINS takes a POINT inside a CIRCLE")
        ra, dec = point[1], point[2]
        ra0, dec0, r = circle[1], circle[2], circle[3]
        exact = f"lenscat_angsep({ra0}, {dec0}, {ra}, {dec}) {'<=' if inside else '>'} {r}"
        if not inside or None in (_number(ra0), _number(dec0), _number(r)):
            return f"({exact})"
        prefix, _, col = ra.rpartition(".")
        dprefix, _, dcol = dec.rpartition(".")
        if col.lower() != "ra" or dcol.lower() != "dec" or prefix.lower() != dprefix.lower():
            return f"({exact})"
        view = self.aliases.get(prefix.lower()) if prefix else (next(iter(self.aliases.values()), None))
        if prefix == "" and len(set(self.aliases.values())) != 1:
            return f"({exact})"
        if view not in CONE_KEYS:
            return f"({exact})"
        key, function = CONE_KEYS[view]
        self.indexed += 1
        qualified = f"{prefix}.{key}" if prefix else key
        return f"({qualified} IN (SELECT public.{function}({ra0}, {dec0}, {r})))"

    def visitContains_predicate(self, ctx: Any) -> None:
        left, right = ctx.children[0].getText(), ctx.children[2].getText()
        if left in ("0", "1"):
            flag, contains, reverse = left, ctx.children[2], False
        elif right in ("0", "1"):
            flag, contains, reverse = right, ctx.children[0], True
        else:
            raise QueryError("CONTAINS compares to 1 or 0 only")
        while not isinstance(contains, ADQLParser.ContainsContext):
            contains = contains.children[0]
        text = self._contains_sql(contains, inside=flag == "1")
        _remove_children(ctx, reverse=reverse)
        self.contexts[ctx] = text

    def visitContains(self, ctx: Any) -> None:
        raise QueryError("CONTAINS must be compared to 1 or 0 (CONTAINS(...) = 1)")

    def visitComparison_predicate(self, ctx: Any) -> Any:
        return self.visitChildren(ctx)

    def visitDistance(self, ctx: Any, dwithin_radius: Any = None) -> None:
        if isinstance(ctx.children[2], ADQLParser.Coord_valueContext):
            a, b = self._shape(ctx, 2), self._shape(ctx, 4)
            if a[0] != "point" or b[0] != "point":
                raise QueryError("DISTANCE takes two POINTs")
            args = (a[1], a[2], b[1], b[2])
        else:
            args = tuple(ctx.children[i].getText() for i in (2, 4, 6, 8))
        text = "lenscat_angsep({}, {}, {}, {})".format(*args)
        for _ in range(ctx.getChildCount() - 1):
            ctx.removeLastChild()
        self.contexts[ctx] = text

    def visitArea(self, ctx: Any) -> None:
        raise QueryError("AREA is not supported here")

    def visitIntersects_predicate(self, ctx: Any) -> None:
        raise QueryError("INTERSECTS is not supported here; use CONTAINS(POINT, CIRCLE) = 1")


def _aliases(adql: str) -> tuple[dict[str, str], list[str]]:
    """FROM/JOIN tables: alias (and bare name) -> view name, and the tables in order."""
    aliases: dict[str, str] = {}
    tables: list[str] = []
    for schema, name, alias in _FROM_RE.findall(adql):
        low = name.lower()
        full = f"{schema.lower()}.{low}" if schema and schema.lower() != "public" else low
        tables.append(full)
        aliases[low] = low
        if alias:
            aliases[alias.lower()] = low
    return aliases, tables


def translate(adql: str) -> Translation:
    """Translate one ADQL query into PostgreSQL on lenscat's functions.

    Parameters
    ----------
    adql
        An ADQL 2.x ``SELECT`` statement.

    Returns
    -------
    Translation
        The SQL, the tables it reads and its ``TOP``.

    Raises
    ------
    InvalidParameter
        (``query``) a syntax error, or geometry this service does not translate.

    Notes
    -----
    Parsing with the pure-Python ANTLR runtime costs about 0.1-0.2 s a query, more than the query
    itself. Queries that differ only in their numbers (a cone at another position, another TOP) are
    translated once: the numeric literals (other than 0 and 1, which ADQL's CONTAINS compares with)
    are replaced by numbered placeholders, the template's translation is kept (the last
    :data:`CACHE_SIZE` templates), and the numbers are written back into its SQL, each where its
    placeholder is. A template whose SQL does not carry every placeholder exactly once is translated
    afresh, as is any query whose template fails (so that the error names the user's text).
    """
    if not adql or not adql.strip():
        raise InvalidParameter("query", "{query} is empty: give an ADQL SELECT statement")
    unquoted = _QUOTED_RE.sub("''", adql).strip().rstrip(";")
    if ";" in unquoted:
        raise InvalidParameter("query", "{query} must be one ADQL SELECT statement (a ';' ends it)")
    template, numbers = _templated(adql)
    top_match = _TOP_RE.match(unquoted)
    top = int(top_match.group(1)) if top_match else None
    if numbers is not None:
        with _CACHE_LOCK:
            cached = _CACHE.get(template)
            if cached is not None:
                _CACHE.move_to_end(template)
        if cached is None:
            try:
                cached = _translate(template)
            except InvalidParameter:
                cached = None
            if cached is not None:
                with _CACHE_LOCK:
                    _CACHE[template] = cached
                    while len(_CACHE) > CACHE_SIZE:
                        _CACHE.popitem(last=False)
        if cached is not None:
            sql = _PLACEHOLDER_RE.sub(lambda m: numbers[int(m.group(1))], cached.sql)
            if all(cached.sql.count(_placeholder(i)) == 1 for i in range(len(numbers))):
                return Translation(sql=sql, tables=list(cached.tables), top=top, indexed_cones=cached.indexed_cones)
    done = _translate(adql)
    done.top = top
    return done


#: Templates whose translation is kept.
CACHE_SIZE = 256
_CACHE: OrderedDict[str, Translation] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_PLACEHOLDER = "91734620"
_PLACEHOLDER_RE = re.compile(rf"\b{_PLACEHOLDER}(\d{{4}})\b")
_TOP_RE = re.compile(r"\s*SELECT\s+(?:(?:ALL|DISTINCT)\s+)?TOP\s+(\d+)", re.IGNORECASE)
_QUOTED_RE = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")")
_NUMBER_RE = re.compile(r"(-\s*)?(?<![\w.])(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?![\w.])")


def _placeholder(i: int) -> str:
    return f"{_PLACEHOLDER}{i:04d}"


def _templated(adql: str) -> tuple[str, list[str] | None]:
    """``adql`` with its numbers (but 0 and 1) as placeholders, and the numbers; None when it cannot be."""
    if _PLACEHOLDER in adql:
        return adql, None
    numbers: list[str] = []

    def swap(m: re.Match[str], text: str) -> str:
        sign, number = m.group(1), m.group(2)
        if sign and text[: m.start()].rstrip()[-1:] not in ("", "(", ",", "=", "<", ">", "*", "/", "+", "-"):
            return sign + swap_number(number)  # a binary minus: keep it, template the number
        return swap_number((sign or "") + number if sign else number)

    def swap_number(number: str) -> str:
        if number in ("0", "1") or len(numbers) >= 10_000:
            return number
        numbers.append(number)
        return _placeholder(len(numbers) - 1)

    parts = _QUOTED_RE.split(adql)
    out = [p if i % 2 else _NUMBER_RE.sub(lambda m, p=p: swap(m, p), p) for i, p in enumerate(parts)]
    return "".join(out), numbers


def _translate(adql: str) -> Translation:
    """Translate without the template cache."""
    try:
        translator = ADQLQueryTranslator(adql)  # parses
        geometry = _Geometry()
        geometry.visit(translator.tree)
        aliases, tables = _aliases(adql)
        functions = _Functions(geometry, aliases)
        functions.visit(translator.tree)
        sql = translator.translate(functions)
    except QuerySyntaxError as exc:
        where = ", ".join(f"line {line}, column {col} near {tok!r}" for line, col, tok in exc.syntax_errors[:3])
        where = where.replace("{", "{{").replace("}", "}}")
        raise InvalidParameter("query", f"{{query}} is not valid ADQL ({where})") from exc
    except QueryError as exc:
        msg = str(exc).replace("{", "{{").replace("}", "}}")
        raise InvalidParameter("query", f"{{query}}: {msg}") from exc
    except RecursionError as exc:
        raise InvalidParameter("query", "{query} is nested too deeply") from exc
    if _GEOM_RE.search(sql):
        raise InvalidParameter(
            "query", "{query}: geometry values (POINT, CIRCLE) may only appear inside CONTAINS or DISTANCE"
        )
    sql = sql.strip().rstrip(";").strip()
    return Translation(sql=sql, tables=tables, indexed_cones=functions.indexed)
