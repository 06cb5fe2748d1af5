"""Reading the querier's CSV file: a byte-order mark, NULL spellings, decimal amounts."""

from cleanroom_client.plan import DataError, ReceiverTable, decimal_text


def _plan(scale=0):
    return {
        "receiver": {
            "table": "conversions",
            "identifier": "email",
            "normalization": "email",
            "group_columns": [],
            "value_columns": [{"column": "amount", "kind": "integer", "scale": scale}],
            "filter": None,
        }
    }


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffemail,amount\r\na@x.org,3\r\n".encode("utf-8"))
    table = ReceiverTable.from_csv(_plan(), str(path))
    assert table.header == ["email", "amount"]
    assert table.groups == [("", [("a@x.org", [3])])]


def test_null_spellings_are_never_matched(tmp_path):
    path = tmp_path / "nulls.csv"
    path.write_text("email,amount\nNULL,1\nnull,2\n\\N,3\n,4\nb@x.org,5\n", encoding="utf-8")
    table = ReceiverTable.from_csv(_plan(), str(path))
    assert (table.rows, table.skipped) == (5, 4)
    assert table.groups == [("", [("b@x.org", [5])])]


def test_decimal_amounts_are_exact_at_their_scale(tmp_path):
    path = tmp_path / "dec.csv"
    path.write_text("email,amount\na@x.org,12.5\nb@x.org,0.05\nc@x.org,\n", encoding="utf-8")
    table = ReceiverTable.from_csv(_plan(scale=2), str(path))
    assert table.groups == [("", [("a@x.org", [1250]), ("b@x.org", [5]), ("c@x.org", [0])])]
    assert decimal_text(1255, 2) == "12.55" and decimal_text(5, 2) == "0.05"
    path.write_text("email,amount\na@x.org,12.505\n", encoding="utf-8")
    try:
        ReceiverTable.from_csv(_plan(scale=2), str(path))
    except DataError as e:
        assert "at most 2 digits" in str(e)
    else:
        raise AssertionError("12.505 at scale 2 must be refused")


def test_the_plans_source_decides_nulls_and_dialect(tmp_path):
    # The plan `cleanroom check` prints for a collaboration with `null_values = ["N/A"]` and a
    # table entry `delimiter = ";"`, `quote = "'"`: "NULL" is then an identifier like any other,
    # and "N/A" (also with spaces around it) is NULL.
    plan = _plan()
    plan["receiver"]["source"] = {
        "format": None,
        "delimiter": ";",
        "quote": "'",
        "has_header": True,
        "null_values": ["", "N/A"],
    }
    path = tmp_path / "declared.csv"
    path.write_text(
        "email;amount\nN/A;1\nNULL;2\nb@x.org; N/A \n'c;@x.org';4\n;5\n", encoding="utf-8"
    )
    table = ReceiverTable.from_csv(plan, str(path))
    assert (table.rows, table.skipped) == (5, 2)
    assert table.groups == [("", [("b@x.org", [0]), ("c;@x.org", [4]), ("null", [2])])]
    # Without a source, the default spellings: "NULL" is NULL, "N/A" is an identifier.
    path.write_text("email,amount\nN/A,1\nNULL,2\n", encoding="utf-8")
    table = ReceiverTable.from_csv(_plan(), str(path))
    assert (table.rows, table.skipped) == (2, 1)
    assert table.groups == [("", [("n/a", [1])])]


def test_a_headerless_source_names_columns_by_position(tmp_path):
    plan = {
        "receiver": {
            "table": "t",
            "identifier": "column_1",
            "normalization": "none",
            "group_columns": [],
            "value_columns": [{"column": "column_2", "kind": "integer", "scale": 0}],
            "filter": None,
            "source": {"format": "csv", "delimiter": "\t", "quote": '"', "has_header": False, "null_values": [""]},
        }
    }
    path = tmp_path / "nohead.tsv"
    path.write_text("\nu1\t5\nu2\t6\nu1\t1\n", encoding="utf-8")
    table = ReceiverTable.from_csv(plan, str(path))
    assert table.header == ["column_1", "column_2"]
    assert table.groups == [("", [("u1", [6]), ("u2", [6])])]
    plan["receiver"]["source"]["format"] = "parquet"
    try:
        ReceiverTable.from_csv(plan, str(path))
    except DataError as e:
        assert "CSV files only" in str(e)
    else:
        raise AssertionError("a Parquet source must be refused")
