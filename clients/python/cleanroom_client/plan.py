"""From a plan and a CSV file to the receiver's items, and from the outcome to result rows
(PROTOCOL.md section 4).

A plan is the JSON that ``cleanroom check --format json`` prints (its ``"plan"`` object), or the
same fields written by hand.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import re
import struct
from typing import Any, Optional

from .psi import MAX_GROUP_KEY_BYTES, MAX_ITEM_VALUE, Outcome, normalize, trim


class DataError(ValueError):
    """The data file does not fit the plan."""


class ResultError(ValueError):
    """The released outcome does not fit the plan (a misbehaving peer)."""


def load_plan(path: str) -> dict:
    """A plan from a JSON file: either ``cleanroom check``'s output or the plan itself."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if "plan" in doc or "allowed" in doc:
        if not doc.get("allowed", False):
            raise ValueError(f"{path}: the query is not allowed: {doc.get('reasons')}")
        return doc["plan"]
    return doc


# ----------------------------------------------------------------------------- text order


# The spellings of NULL a CSV field may have when the plan does not say (cleanroom's default
# `null_values`), compared after trimming: such an identifier is never matched, such a value is
# NULL. A plan's `receiver.source.null_values` replaces them.
NULL_SPELLINGS = frozenset(["", "NULL", "null", "\\N"])


def is_null(cell: str) -> bool:
    """Whether a cell read by `ReceiverTable.from_csv` is NULL: empty after trimming (the reader
    has already turned every declared NULL spelling into the empty cell)."""
    return trim(cell) == ""


class Source:
    """How the receiver's file is read: the plan's ``receiver.source`` (PROTOCOL.md 4.1), or
    cleanroom's defaults for a plan without one (RFC 4180 CSV with a header row, the default
    NULL spellings)."""

    def __init__(self, side: dict):
        source = side.get("source") or {}
        self.format = source.get("format")
        self.delimiter = source.get("delimiter", ",")
        self.quote = source.get("quote", '"')
        self.has_header = source.get("has_header", True)
        spellings = source.get("null_values")
        self.nulls = NULL_SPELLINGS if spellings is None else frozenset([""] + [trim(s) for s in spellings])
        for name, c in (("delimiter", self.delimiter), ("quote", self.quote)):
            if not isinstance(c, str) or len(c) != 1 or c in "\r\n":
                raise DataError(f"the plan's receiver.source.{name} {c!r} is not one character")

    def cell(self, text: str) -> str:
        """The empty cell for a declared NULL spelling, else the text as it is."""
        return "" if trim(text) in self.nulls else text


_INT = re.compile(r"[+-]?[0-9]+\Z")
_DEC = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def _number(text: str):
    t = trim(text)
    if _INT.match(t):
        i = int(t)
        if -(2**127) <= i < 2**127:
            return i
    if _DEC.match(t):
        f = float(t)
        if math.isfinite(f):
            return f
    return None


def _total_key(x: float) -> int:
    """IEEE-754 totalOrder as an integer key."""
    bits = struct.unpack(">q", struct.pack(">d", x))[0]
    return bits ^ 0x7FFFFFFFFFFFFFFF if bits < 0 else bits


def _cmp(a, b) -> int:
    return (a > b) - (a < b)


def _cmp_numbers(x, y) -> int:
    if isinstance(x, int) and isinstance(y, int):
        return _cmp(x, y)
    return _cmp(_total_key(float(x)), _total_key(float(y)))


def compare_text(a: str, b: str) -> int:
    """The text order of PROTOCOL.md 4.2: numerically when both are numbers, else by code point."""
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return _cmp_numbers(x, y)
    return _cmp(a, b)


# ----------------------------------------------------------------------------- filters


def evaluate(f: dict, cell) -> Optional[bool]:
    """A filter on one row with SQL three-valued logic; ``cell(column)`` gives a cell."""
    kind = f["kind"]
    if kind == "and":
        result: Optional[bool] = True
        for g in f["all"]:
            v = evaluate(g, cell)
            if v is False:
                return False
            if v is None:
                result = None
        return result
    if kind == "or":
        result = False
        for g in f["any"]:
            v = evaluate(g, cell)
            if v is True:
                return True
            if v is None:
                result = None
        return result
    if kind == "not":
        v = evaluate(f["filter"], cell)
        return None if v is None else not v
    if kind == "is_null":
        return is_null(cell(f["column"])) != f["negated"]
    x = cell(f["column"])
    if is_null(x):
        return None
    if kind == "compare":
        if f["value"] is None:
            return None
        c = compare_text(x, f["value"])
        return {
            "=": c == 0,
            "<>": c != 0,
            "<": c < 0,
            "<=": c <= 0,
            ">": c > 0,
            ">=": c >= 0,
        }[f["op"]]
    if kind == "in":
        saw_null = False
        for v in f["values"]:
            if v is None:
                saw_null = True
            elif compare_text(x, v) == 0:
                return not f["negated"]
        return None if saw_null else f["negated"]
    if kind == "between":
        above = None if f["low"] is None else compare_text(x, f["low"]) >= 0
        below = None if f["high"] is None else compare_text(x, f["high"]) <= 0
        if above is False or below is False:
            inside: Optional[bool] = False
        elif above and below:
            inside = True
        else:
            inside = None
        return None if inside is None else inside != f["negated"]
    raise ValueError(f"unknown filter kind {kind!r}")


def _filter_columns(f: Optional[dict], out: list) -> list:
    if f is None:
        return out
    if f["kind"] in ("and", "or"):
        for g in f["all" if f["kind"] == "and" else "any"]:
            _filter_columns(g, out)
    elif f["kind"] == "not":
        _filter_columns(f["filter"], out)
    elif f["column"] not in out:
        out.append(f["column"])
    return out


# ----------------------------------------------------------------------------- the table


def group_key(cells: list) -> str:
    """The JSON array of group cells (``None`` for NULL), without insignificant white space."""
    return json.dumps(cells, ensure_ascii=False, separators=(",", ":"))


class ReceiverTable:
    """The receiver's items per group, built from its CSV file as the plan says."""

    def __init__(self, header: list, groups: list, rows: int, skipped: int):
        self.header = header
        self.groups = groups  # [(key, [(identifier, [values])])] in key order
        self.rows = rows  # kept rows (the TableDescriptor's rows), skipped ones included
        self.skipped = skipped

    @classmethod
    def from_csv(cls, plan: dict, path: str) -> "ReceiverTable":
        side = plan["receiver"]
        source = Source(side)
        fmt = source.format or ("parquet" if path.lower().endswith((".parquet", ".pq")) else "csv")
        if fmt != "csv":
            raise DataError(f"{path}: this client reads CSV files only, not {fmt}")
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = csv.reader(f, delimiter=source.delimiter, quotechar=source.quote)
            # Every declared NULL spelling becomes the empty cell, once, here.
            reader = ([source.cell(c) for c in row] for row in records)
            if source.has_header:
                try:
                    header = [h.strip() for h in next(records)]
                except StopIteration:
                    raise DataError(f"{path}: no header") from None
            else:
                first = next((row for row in reader if row), None)
                if first is None:
                    raise DataError(f"{path}: no rows")
                header = [f"column_{i}" for i in range(1, len(first) + 1)]
                reader = itertools.chain([first], reader)

            def find(column: str) -> int:
                hits = [i for i, h in enumerate(header) if h == column]
                if not hits:
                    raise DataError(f"table {side['table']!r}: the header has no column {column!r}")
                if len(hits) > 1:
                    raise DataError(f"table {side['table']!r}: column {column!r} named twice")
                return hits[0]

            ident = find(side["identifier"])
            groups_at = [find(c) for c in side["group_columns"]]
            values_at = [find(v["column"]) for v in side["value_columns"]]
            filter_at = {c: find(c) for c in _filter_columns(side["filter"], [])}
            needed = max([ident, *groups_at, *values_at, *filter_at.values()])
            groups: dict = {}
            kept = skipped = 0
            for number, row in enumerate(reader, start=1):
                if not row:
                    continue  # a blank line is no record
                if side["filter"] is not None:
                    for c, i in filter_at.items():
                        if i >= len(row):
                            raise DataError(f"row {number}: no field for column {c!r}")
                    if evaluate(side["filter"], lambda c: row[filter_at[c]]) is not True:
                        continue
                if needed >= len(row):
                    raise DataError(f"row {number}: only {len(row)} fields")
                key = group_key([None if is_null(row[i]) else row[i] for i in groups_at]) if groups_at else ""
                values = [_value(v, row[i], number) for v, i in zip(side["value_columns"], values_at)]
                if len(key.encode()) > MAX_GROUP_KEY_BYTES:
                    raise DataError(f"row {number}: group key longer than {MAX_GROUP_KEY_BYTES} bytes")
                kept += 1
                identifier = None if is_null(row[ident]) else normalize(side["normalization"], row[ident])
                if identifier is None:
                    skipped += 1
                    continue
                totals = groups.setdefault(key, {}).setdefault(identifier, [0] * len(values))
                for c, v in enumerate(values):
                    totals[c] += v
                    if totals[c] > MAX_ITEM_VALUE:
                        raise DataError(
                            f"row {number}: the values of one identifier add up to more than "
                            f"{MAX_ITEM_VALUE} in column {side['value_columns'][c]['column']!r}"
                        )
        ordered = [(k, sorted(groups[k].items())) for k in sorted(groups, key=lambda k: k.encode())]
        return cls(header, ordered, kept, skipped)


_UINT = re.compile(r"\+?[0-9]+\Z")


def _value(column: dict, cell: str, number: int) -> int:
    if column["kind"] == "non_null":
        return 0 if is_null(cell) else 1
    if is_null(cell):
        return 0
    t = trim(cell)
    scale = column.get("scale", 0)
    if scale:
        # Exact fixed point: at most `scale` digits after the point (trailing zeros aside).
        m = _UDEC.match(t)
        fraction = (m.group(2) or "").rstrip("0") if m else ""
        if not m or len(fraction) > scale:
            raise DataError(
                f"row {number}, column {column['column']!r}: {cell!r} is not a non-negative decimal "
                f"with at most {scale} digits after the point"
            )
        units = int((m.group(1) or "0") + fraction.ljust(scale, "0"))
        if units >= 2**64:
            raise DataError(f"row {number}, column {column['column']!r}: {cell!r} is too large")
        return units
    if not _UINT.match(t) or int(t) >= 2**64:
        raise DataError(f"row {number}, column {column['column']!r}: {cell!r} is not a non-negative integer")
    return int(t)


_UDEC = re.compile(r"\+?(?=\.?[0-9])([0-9]*)(?:\.([0-9]*))?\Z")


def decimal_text(units: int, scale: int) -> str:
    """`units / 10**scale` in plain notation with exactly `scale` decimals, as cleanroom prints it."""
    if scale == 0:
        return str(units)
    digits = str(units).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}"


# ----------------------------------------------------------------------------- results


def _compare_values(a: Any, b: Any, descending: bool, nulls_first: bool) -> int:
    if a is None and b is None:
        return 0
    if a is None:
        return -1 if nulls_first else 1
    if b is None:
        return 1 if nulls_first else -1
    if descending:
        a, b = b, a
    if isinstance(a, str) and isinstance(b, str):
        return compare_text(a, b)
    if isinstance(a, str):
        return 1
    if isinstance(b, str):
        return -1
    return _cmp_numbers(a, b)


def result(plan: dict, outcome: Outcome) -> dict:
    """The result table of PROTOCOL.md 4.5: ``{"columns", "rows", "suppressed_rows"}``."""
    grouped_by = plan["grouped_by"]
    arity = len(plan[grouped_by]["group_columns"]) if grouped_by else 0
    expected_sums = len(plan["receiver"]["value_columns"])
    keyed = []
    for g in outcome.groups:
        key: list = []
        for role, label in (("matcher", g.matcher_group), ("receiver", g.receiver_group)):
            if grouped_by == role:
                try:
                    key = json.loads(label)
                except ValueError:
                    key = None
                if (
                    not isinstance(key, list)
                    or len(key) != arity
                    or not all(k is None or isinstance(k, str) for k in key)
                ):
                    raise ResultError(f"the {role}'s group key {label!r} is not a group key of this plan")
            elif label != "":
                raise ResultError(f"the {role}'s group key {label!r} is not a group key of this plan")
        if len(g.sums) != expected_sums:
            raise ResultError(f"a result group has {len(g.sums)} sums; the plan has {expected_sums}")
        row = []
        for out in plan["outputs"]:
            kind = out["kind"]
            if kind == "dimension":
                row.append(key[out["key_index"]])
            elif kind == "count_distinct":
                row.append(g.intersection_size)
            elif kind == "count":
                row.append(g.sums[out["value_index"]])
            elif kind == "sum":
                scale = plan["receiver"]["value_columns"][out["value_index"]].get("scale", 0)
                total = g.sums[out["value_index"]]
                row.append(decimal_text(total, scale) if scale else total)
            elif kind == "avg":
                n = g.sums[out["count_index"]]
                scale = plan["receiver"]["value_columns"][out["sum_index"]].get("scale", 0)
                row.append(None if n == 0 else g.sums[out["sum_index"]] / 10**scale / n)
            else:
                raise ValueError(f"unknown output kind {kind!r}")
        keyed.append((key, row))

    def by_key(a, b):
        for x, y in zip(a[0], b[0]):
            c = _compare_values(x, y, False, False)
            if c:
                return c
        return 0

    keyed.sort(key=functools.cmp_to_key(by_key))
    rows = [row for _, row in keyed]
    order = plan.get("order_by") or []
    if order:

        def by_order(a, b):
            for k in order:
                c = _compare_values(a[k["output"]], b[k["output"]], k["descending"], k["nulls_first"])
                if c:
                    return c
            return 0

        rows.sort(key=functools.cmp_to_key(by_order))
    if plan.get("limit") is not None:
        rows = rows[: plan["limit"]]
    return {
        "columns": [o["name"] for o in plan["outputs"]],
        "rows": rows,
        "suppressed_rows": outcome.suppressed_groups,
    }
