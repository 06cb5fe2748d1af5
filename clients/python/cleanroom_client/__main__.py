"""``cleanroom-client`` (or ``python -m cleanroom_client``): run a query as the querying member.

    cleanroom-client --server http://127.0.0.1:50051 --sql "SELECT ..." \\
        --data conversions=conversions.csv [--token-file FILE] [--format json|table]

With ``--sql`` the server plans the query (its ``PlanQuery`` call); ``--plan plan.json`` gives
the plan instead, as ``cleanroom check --config collab.toml --member M --format json "SQL"``
prints it. The token comes from ``--token-file`` or ``$CLEANROOM_TOKEN``. Exit status: 0 with a
result, 1 when the query was refused, 2 for any other failure (as ``cleanroom query``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .plan import DataError, ResultError, load_plan
from .psi import ProtocolError
from .session import QueryError, fetch_plan, run_query


def _data(pairs):
    out = {}
    for pair in pairs:
        table, sep, path = pair.partition("=")
        if not sep or not table or not path:
            raise SystemExit(f"--data: expected TABLE=PATH, got {pair!r}")
        if table in out:
            raise SystemExit(f"--data names table {table!r} twice")
        out[table] = path
    return out


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def render_table(result: dict) -> str:
    rows = [[_cell(v) for v in row] for row in result["rows"]]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(result["columns"])]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(result["columns"]), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append(f"suppressed rows (under the threshold): {result['suppressed_rows']}")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cleanroom-client", description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True, help="http(s)://host:port")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--sql", help="the query; the server plans it (PlanQuery)")
    query.add_argument("--plan", help="the plan JSON of `cleanroom check --format json`")
    p.add_argument("--config", required=True, help="your copy of the collaboration file")
    p.add_argument("--data", action="append", required=True, metavar="TABLE=PATH")
    p.add_argument("--token-file")
    p.add_argument("--ca", help="CA certificate (PEM) to trust for https://")
    p.add_argument("--insecure", action="store_true", help="allow http:// to a non-loopback host")
    p.add_argument("--timeout", type=float)
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)

    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    else:
        token = os.environ.get("CLEANROOM_TOKEN", "").strip()
    if not token:
        print("no bearer token: set CLEANROOM_TOKEN or give --token-file", file=sys.stderr)
        return 2
    ca = None
    if args.ca:
        with open(args.ca, "rb") as f:
            ca = f.read()
    try:
        with open(args.config, "rb") as f:
            collaboration = f.read()
        if args.plan:
            plan = load_plan(args.plan)
        else:
            plan = fetch_plan(args.server, token, args.sql, ca=ca, insecure=args.insecure, timeout=args.timeout)
        outcome = run_query(
            args.server,
            token,
            plan,
            _data(args.data),
            collaboration=collaboration,
            ca=ca,
            insecure=args.insecure,
            timeout=args.timeout,
        )
    except QueryError as e:
        print(f"query {'refused' if e.is_refusal else 'failed'}: {e}", file=sys.stderr)
        for code, message in e.reasons:
            print(f"  [{code}] {message}", file=sys.stderr)
        return 1 if e.is_refusal else 2
    except (DataError, ResultError, ProtocolError, ValueError, OSError) as e:
        print(f"query failed: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(outcome.result, ensure_ascii=False))
    else:
        sys.stdout.write(render_table(outcome.result))
    if not args.quiet:
        print(
            f"session {outcome.session_id}: your {outcome.rows} rows; "
            f"{outcome.released_rows} rows released, {outcome.suppressed_rows} suppressed",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
