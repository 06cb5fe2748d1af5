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
