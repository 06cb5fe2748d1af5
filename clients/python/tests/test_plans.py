"""The SQL-to-plan vectors of tests/vectors/plans.json (PROTOCOL.md section 4.6): the client
turns each aggregation plan's released groups into result rows as the section states.

The expected rows are made here by the section's rules, not by the plan's indices: a dimension
output is the component of the group key at its column's position in the grouped side's
``group_columns``; a count, sum or average reads the value column with the output's column and
the function's kind. So a plan whose ``key_index`` or value indices broke those rules fails, as
does a client that read them wrongly. (The client implements no list protocol; list plans are
checked by the Rust test that writes the file.)
"""

import json
import pathlib

from cleanroom_client import plan as plans
from cleanroom_client.psi import GroupResult, Outcome

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "tests" / "vectors"
KINDS = {"count": ["non_null"], "sum": ["integer"], "avg": ["integer", "non_null"]}


def aggregate_cases():
    doc = json.loads((VECTORS / "plans.json").read_text(encoding="utf-8"))
    return [c for c in doc["cases"] if "plan" in c and c["plan"]["protocol"] != "list"]


def value_column(plan, column, kind):
    """The index of the value column that holds ``column`` read as ``kind``: exactly one."""
    found = [
        i
        for i, v in enumerate(plan["receiver"]["value_columns"])
        if v["column"] == column and v["kind"] == kind
    ]
    assert len(found) == 1, (column, kind, plan["receiver"]["value_columns"])
    return found[0]


def expected_row(plan, key, intersection, sums):
    grouped_by = plan["grouped_by"]
    group_columns = plan[grouped_by]["group_columns"] if grouped_by else []
    value_columns = plan["receiver"]["value_columns"]
    row = []
    for out in plan["outputs"]:
        kind = out["kind"]
        if kind == "dimension":
            row.append(key[group_columns.index(out["column"])])
        elif kind == "count_distinct":
            row.append(intersection)
        elif kind == "count":
            row.append(sums[value_column(plan, out["column"], "non_null")])
        elif kind == "sum":
            i = value_column(plan, out["column"], "integer")
            scale = value_columns[i]["scale"]
            row.append(plans.decimal_text(sums[i], scale) if scale else sums[i])
        elif kind == "avg":
            total = sums[value_column(plan, out["column"], "integer")]
            count = sums[value_column(plan, out["column"], "non_null")]
            scale = value_columns[value_column(plan, out["column"], "integer")]["scale"]
            row.append(total / 10**scale / count)
        else:
            raise AssertionError(f"unknown output kind {kind}")
    return row


def test_the_vectors_hold_aggregation_plans():
    assert len(aggregate_cases()) >= 10


def test_outputs_are_read_as_section_4_6_states():
    for case in aggregate_cases():
        plan = case["plan"]
        grouped_by = plan["grouped_by"]
        arity = len(plan[grouped_by]["group_columns"]) if grouped_by else 0
        width = len(plan["receiver"]["value_columns"])
        # Two released groups with distinct key components and distinct sums per value column.
        groups, expected = [], []
        for g in range(2 if grouped_by else 1):
            key = [f"g{g}c{c}" for c in range(arity)]
            label = json.dumps(key, separators=(",", ":")) if grouped_by else ""
            sums = [1000 * (g + 1) + 10 * (v + 1) for v in range(width)]
            intersection = 7 + g
            groups.append(
                GroupResult(
                    matcher_group=label if grouped_by == "matcher" else "",
                    receiver_group=label if grouped_by == "receiver" else "",
                    intersection_size=intersection,
                    sums=sums,
                )
            )
            expected.append(expected_row(plan, key, intersection, sums))
        got = plans.result(plan, Outcome(groups=groups, suppressed_groups=3))
        assert got["columns"] == [o["name"] for o in plan["outputs"]], case["name"]
        assert sorted(map(repr, got["rows"])) == sorted(map(repr, expected)), case["name"]
        assert got["suppressed_rows"] == 3
