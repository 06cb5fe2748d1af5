"""The Python client against the Rust server: `cleanroom serve` on loopback, then the same
queries through `cleanroom query` and through this client, whose results must be identical
(released rows, their order, and the number of suppressed rows).

The binary is $CLEANROOM_BIN, or target/debug/cleanroom of this repository.
"""

import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import grpc
import pytest

from cleanroom_client import session
from cleanroom_client.plan import load_plan

ROOT = pathlib.Path(__file__).resolve().parents[3]
CLIENT = ROOT / "clients" / "python"
BIN = pathlib.Path(os.environ.get("CLEANROOM_BIN", ROOT / "target" / "debug" / "cleanroom"))
TOKENS = {"publisher": "publisher-interop-token", "advertiser": "advertiser-interop-token"}

COLLABORATION = """
[collaboration]
id = "interop-test"
name = "Python client interoperability"
# Declared NULL spellings: "N/A" and "-" are NULL, the literal "NULL" is an identifier like any
# other. The client must read them from the plan (receiver.source), with the delimiter below.
null_values = ["", "N/A", "-"]

[[member]]
name = "publisher"
abilities = []
token_sha256 = "{publisher}"

[[member]]
name = "advertiser"
abilities = ["query", "receive_results"]
token_sha256 = "{advertiser}"

[[table]]
name = "impressions"
owner = "publisher"
columns = ["email", "campaign", "region"]
identifier = {{ column = "email", normalize = "email" }}

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["campaign", "region"]
aggregate_columns = {{ email = ["COUNT_DISTINCT"] }}
min_threshold = 3

[[table]]
name = "conversions"
owner = "advertiser"
columns = ["email", "product", "channel", "amount", "quantity"]
identifier = {{ column = "email", normalize = "email" }}
delimiter = ";"

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["product", "channel"]
aggregate_columns = {{ email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG", "COUNT"], quantity = ["SUM"] }}
min_threshold = 2
"""

QUERIES = {
    "cardinality": "SELECT COUNT(DISTINCT c.email) AS buyers "
    "FROM impressions i JOIN conversions c ON i.email = c.email",
    "sum_by_campaign": "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers, "
    "SUM(c.amount) AS revenue, SUM(c.quantity) AS units "
    "FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY i.campaign",
    "by_product_filtered": "SELECT c.product, COUNT(DISTINCT c.email) AS buyers, "
    "SUM(c.amount) AS revenue, AVG(c.amount) AS avg_amount, COUNT(c.amount) AS paid "
    "FROM impressions i JOIN conversions c ON i.email = c.email "
    "WHERE c.channel = 'web' AND i.region IN ('EU', 'US') "
    "GROUP BY c.product ORDER BY revenue DESC LIMIT 4",
    "count_by_region": "SELECT i.region, COUNT(DISTINCT c.email) AS buyers "
    "FROM impressions i JOIN conversions c ON i.email = c.email "
    "WHERE c.product <> 'eggs' AND c.channel = 'store' GROUP BY i.region",
}


def noisy_email(rng, n):
    base = f"user{n}@example.com"
    return rng.choice([base, base.upper(), f"  {base} ", f"User{n}@Example.COM"])


def write_data(directory: pathlib.Path):
    """Deterministic data with normalization noise, duplicates, empty identifiers, NULL values,
    values above 16 bits, and small groups that fall under the thresholds."""
    rng = random.Random(20240611)
    with open(directory / "impressions.csv", "w", encoding="utf-8", newline="") as f:
        f.write("email,campaign,region\n")
        for _ in range(500):
            n = rng.randrange(300)
            campaign = "rare" if n % 50 == 7 else rng.choice(["spring", "summer", "autumn"])
            email = "" if rng.random() < 0.02 else noisy_email(rng, n)
            f.write(f'"{email}",{campaign},{rng.choice(["EU", "US", "APAC"])}\n')
        # Two buyers only saw the "rare" campaign: under its threshold of 3.
        f.write("user200@example.com,rare,EU\nuser201@example.com,rare,US\n")
        # Not a NULL spelling in this collaboration: the identifier "null", on both sides.
        f.write("NULL,spring,EU\nN/A,spring,EU\n")
    with open(directory / "conversions.csv", "w", encoding="utf-8", newline="") as f:
        f.write("email;product;channel;amount;quantity\n")
        for _ in range(300):
            n = rng.randrange(150, 450)
            product = "truffles" if n % 40 == 3 else rng.choice(["apples", "bread", "cheese", "dates", "eggs"])
            amount = rng.choice(["", "N/A", " - ", str(rng.randrange(500)), str(rng.randrange(500)), str(70_000 + n)])
            email = "N/A" if rng.random() < 0.02 else noisy_email(rng, n)
            f.write(f'"{email}";{product};{rng.choice(["web", "store"])};{amount};{rng.randrange(1, 4)}\n')
        f.write("USER200@example.com;apples;web;12;1\nuser201@example.com;bread;store;;2\n")
        f.write("null;apples;web;7;1\n")


def cleanroom(*args, **kwargs):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assert BIN.is_file(), f"{BIN} not found: build it with `cargo build --bin cleanroom` or set CLEANROOM_BIN"
    d = tmp_path_factory.mktemp("interop")
    hashes = {m: hashlib.sha256(t.encode()).hexdigest() for m, t in TOKENS.items()}
    (d / "collab.toml").write_text(COLLABORATION.format(**hashes), encoding="utf-8")
    (d / "advertiser.token").write_text(TOKENS["advertiser"] + "\n", encoding="utf-8")
    write_data(d)
    log = open(d / "serve.log", "w+", encoding="utf-8")
    server = subprocess.Popen(
        [
            str(BIN), "serve", "--config", str(d / "collab.toml"), "--member", "publisher",
            "--data", f"impressions={d / 'impressions.csv'}", "--listen", "127.0.0.1:0",
            "--state", str(d / "state.db"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            assert server.poll() is None, (d / "serve.log").read_text()
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", (d / "serve.log").read_text())
            url = m.group(1) if m else time.sleep(0.05)
        assert url, "cleanroom serve did not start: " + (d / "serve.log").read_text()
        yield d, url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def plan_of(d, sql):
    out = cleanroom("check", "--config", str(d / "collab.toml"), "--member", "advertiser", "--format", "json", sql)
    assert out.returncode == 0, out.stdout + out.stderr
    path = d / f"plan-{hashlib.sha256(sql.encode()).hexdigest()[:12]}.json"
    path.write_text(out.stdout, encoding="utf-8")
    return path


def rust_query(d, url, sql):
    out = cleanroom(
        "query", "--config", str(d / "collab.toml"), "--member", "advertiser",
        "--data", f"conversions={d / 'conversions.csv'}", "--server", url,
        "--format", "json", "--quiet", sql,
        env={**os.environ, "CLEANROOM_TOKEN": TOKENS["advertiser"]},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_same_result_as_cleanroom_query(setup, name):
    d, url = setup
    sql = QUERIES[name]
    plan = load_plan(plan_of(d, sql))
    expected = rust_query(d, url, sql)
    outcome = session.run_query(url, TOKENS["advertiser"], plan, {"conversions": str(d / "conversions.csv")},
        collaboration=(d / "collab.toml").read_bytes(), timeout=60,
    )
    assert outcome.result == expected
    assert outcome.suppressed_rows == expected["suppressed_rows"]
    assert outcome.released_rows == len(expected["rows"]) or plan["limit"] is not None
    # The data is built so that every query releases rows; the grouped ones also suppress some.
    assert expected["rows"], expected
    if name in ("sum_by_campaign", "by_product_filtered"):
        assert expected["suppressed_rows"] > 0, expected


def test_command_line(setup):
    d, url = setup
    sql = QUERIES["sum_by_campaign"]
    plan = plan_of(d, sql)
    out = subprocess.run(
        [sys.executable, "-m", "cleanroom_client", "--server", url, "--plan", str(plan),
         "--config", str(d / "collab.toml"), "--data", f"conversions={d / 'conversions.csv'}", "--token-file", str(d / "advertiser.token"),
         "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == rust_query(d, url, sql)


def test_wrong_token_is_refused(setup):
    d, url = setup
    plan = load_plan(plan_of(d, QUERIES["cardinality"]))
    with pytest.raises(session.QueryError) as e:
        session.run_query(url, "not-a-member-token", plan, {"conversions": str(d / "conversions.csv")},
            collaboration=(d / "collab.toml").read_bytes(), timeout=30,
        )
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert e.value.is_refusal


def test_server_refusal_carries_reasons(setup):
    d, url = setup
    plan = load_plan(plan_of(d, QUERIES["cardinality"]))
    # A query the server's rules refuse (a non-aggregated column), under a plan that looks
    # valid to this client: the reasons come back in the trailing metadata.
    plan = dict(plan, sql="SELECT c.email FROM impressions i JOIN conversions c ON i.email = c.email")
    with pytest.raises(session.QueryError) as e:
        session.run_query(url, TOKENS["advertiser"], plan, {"conversions": str(d / "conversions.csv")},
            collaboration=(d / "collab.toml").read_bytes(), timeout=30,
        )
    assert e.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert e.value.reasons and all(code for code, _ in e.value.reasons)


@pytest.mark.parametrize("change", ["normalization", "collaboration_id"])
def test_different_terms_are_refused_before_any_blinded_value(setup, tmp_path, change):
    """A client whose collaboration file differs from the server's (another normalization, or
    another collaboration id hashed into its points) is refused at the session start, with the
    terms that differ named, instead of computing a wrong result."""
    d, url = setup
    text = (d / "collab.toml").read_text(encoding="utf-8")
    plan = load_plan(plan_of(d, QUERIES["cardinality"]))
    if change == "normalization":
        changed = text.replace('normalize = "email"', 'normalize = "none"')
        plan["matcher"]["normalization"] = plan["receiver"]["normalization"] = "none"
        named = "normalization"
    else:
        # The start names the server's collaboration, as PROTOCOL.md's second client did, but
        # this member's file (and so the id it would hash into its points) is another.
        changed = text.replace(f'id = "{plan["collaboration_id"]}"', 'id = "elsewhere"', 1)
        named = "collaboration file"
    assert changed != text
    with pytest.raises(session.QueryError) as e:
        session.run_query(
            url, TOKENS["advertiser"], plan, {"conversions": str(d / "conversions.csv")},
            collaboration=changed.encode("utf-8"), timeout=30,
        )
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION, e.value
    assert named in str(e.value), e.value


@pytest.mark.parametrize(
    "plan",
    [{"protocol": "list"}, {"protocol": "intersection_sum", "privacy": {"epsilon": 500000}}],
)
def test_unsupported_plans_are_refused_before_connecting(plan):
    with pytest.raises(session.QueryError):
        session.run_query("http://127.0.0.1:9", "token", plan, {}, collaboration=b"")


def test_the_stock_reflection_client_describes_the_service(setup):
    # grpcio-reflection's descriptor database speaks grpc.reflection.v1alpha only.
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    _, url = setup
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"cleanroom.v1.CleanRoomService", "grpc.health.v1.Health"} <= services, services
        service = DescriptorPool(database).FindServiceByName("cleanroom.v1.CleanRoomService")
        assert {m.name for m in service.methods} == {"RunSession", "GetServerInfo", "ListAuditEntries", "PlanQuery", "FetchResult"}


def test_the_server_plans_a_query_as_cleanroom_check_does(setup):
    d, url = setup
    for sql in QUERIES.values():
        assert session.fetch_plan(url, TOKENS["advertiser"], sql, timeout=30) == load_plan(plan_of(d, sql))
    # A refusal comes with the rules' reason codes, as a session's would.
    with pytest.raises(session.QueryError) as e:
        session.fetch_plan(
            url, TOKENS["advertiser"], "SELECT c.email FROM impressions i JOIN conversions c ON i.email = c.email"
        )
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.is_refusal and e.value.reasons and all(code for code, _ in e.value.reasons)
    with pytest.raises(session.QueryError) as e:
        session.fetch_plan(url, "not-a-member-token", QUERIES["cardinality"])
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_packaged_proto_and_dependencies_match_the_repository():
    packaged = CLIENT / "cleanroom_client" / "proto" / "cleanroom" / "v1" / "cleanroom.proto"
    assert packaged.read_bytes() == (ROOT / "proto" / "cleanroom" / "v1" / "cleanroom.proto").read_bytes(), (
        "copy proto/cleanroom/v1/cleanroom.proto to clients/python/cleanroom_client/proto/cleanroom/v1/"
    )
    pinned = sorted(
        line.strip() for line in (CLIENT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    pyproject = (CLIENT / "pyproject.toml").read_text()
    declared = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M).group(1)
    assert sorted(re.findall(r'"([^"]+)"', declared)) == pinned


def test_the_installed_client_runs_a_query_without_a_plan(setup, tmp_path):
    """`pip install` of this package into the running environment (the virtual environment
    ci.sh makes), then its `cleanroom-client` command, from elsewhere and without the source
    tree on the path, with `--sql` only: the server plans the query."""
    d, url = setup
    # From a copy, so that the build writes nothing into the source tree.
    source = tmp_path / "cleanroom-client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "tests", "*.egg-info", "build"))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLEANROOM_PROTO_DIR")}
    where = subprocess.run(
        [sys.executable, "-c", "import cleanroom_client; print(cleanroom_client.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert where.returncode == 0, where.stderr
    assert "site-packages" in where.stdout and str(CLIENT) not in where.stdout, where.stdout
    sql = QUERIES["by_product_filtered"]
    out = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "cleanroom-client"), "--server", url, "--sql", sql,
         "--config", str(d / "collab.toml"), "--data", f"conversions={d / 'conversions.csv'}", "--token-file", str(d / "advertiser.token"),
         "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == rust_query(d, url, sql)
    assert result["rows"] and result["suppressed_rows"] > 0, result
