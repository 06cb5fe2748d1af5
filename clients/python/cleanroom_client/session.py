"""One query over gRPC (PROTOCOL.md section 3): ``RunSession`` as the querying member, and
``PlanQuery`` for the plan of a query when no plan file is given.

The protobuf modules are generated from ``cleanroom/v1/cleanroom.proto`` at run time with
``grpc_tools.protoc`` (package ``grpcio-tools``) into a temporary directory: the copy installed
with this package (``cleanroom_client/proto``, kept identical to the repository's ``proto/`` by
``tests/test_interop.py``), or the directory ``$CLEANROOM_PROTO_DIR`` names.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import ipaddress
import json
import os
import pathlib
import queue
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import grpc

from . import plan as plans
from .psi import Domain, Receiver, decode, encode

REFUSAL_METADATA_KEY = "cleanroom-refusal-bin"
MAX_GRPC_MESSAGE_BYTES = 8 * 1024 * 1024

_PROTO_LOCK = threading.Lock()
_PROTO = None


def default_proto_dir() -> pathlib.Path:
    """``$CLEANROOM_PROTO_DIR``, else the ``.proto`` installed with this package."""
    env = os.environ.get("CLEANROOM_PROTO_DIR")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parent / "proto"


def load_proto(proto_dir: Optional[str] = None):
    """``(cleanroom_pb2, cleanroom_pb2_grpc)``, compiled from the .proto on first use."""
    global _PROTO
    with _PROTO_LOCK:
        if _PROTO is not None:
            return _PROTO
        from grpc_tools import protoc

        src = pathlib.Path(proto_dir) if proto_dir else default_proto_dir()
        out = tempfile.mkdtemp(prefix="cleanroom-proto-")
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{src}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                "cleanroom/v1/cleanroom.proto",
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {src}/cleanroom/v1/cleanroom.proto")
        sys.path.insert(0, out)
        _PROTO = (
            importlib.import_module("cleanroom.v1.cleanroom_pb2"),
            importlib.import_module("cleanroom.v1.cleanroom_pb2_grpc"),
        )
        return _PROTO


class QueryError(Exception):
    """A query that produced no result. ``code`` is the gRPC status code when the server ended
    the call, ``reasons`` the refusal reasons (``[(code, message)]``) of a refused query."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, reasons=()):
        super().__init__(message)
        self.code = code
        self.reasons = list(reasons)

    @property
    def is_refusal(self) -> bool:
        return bool(self.reasons) or self.code in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        )


@dataclass
class QueryOutcome:
    result: dict
    session_id: str
    released_rows: int
    suppressed_rows: int
    rows: int


def _channel(server: str, ca: Optional[bytes], insecure: bool) -> grpc.Channel:
    url = urlsplit(server)
    if not url.hostname or not url.port:
        raise QueryError(f"server {server!r}: expected http(s)://host:port")
    target = f"{url.hostname}:{url.port}"
    if ":" in url.hostname:
        target = f"[{url.hostname}]:{url.port}"
    options = [
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ]
    if url.scheme == "https":
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.secure_channel(target, creds, options=options)
    if url.scheme != "http":
        raise QueryError(f"server {server!r}: expected http:// or https://")
    try:
        loopback = url.hostname == "localhost" or ipaddress.ip_address(url.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not insecure:
        raise QueryError("plaintext http:// only to loopback; use https:// (or --insecure)")
    return grpc.insecure_channel(target, options=options)


def _remote_error(e: grpc.RpcError) -> QueryError:
    pb2, _ = load_proto()
    reasons = []
    for key, value in e.trailing_metadata() or ():
        if key == REFUSAL_METADATA_KEY:
            refusal = pb2.QueryRefusal.FromString(value)
            reasons = [(r.code, r.message) for r in refusal.reasons]
    return QueryError(f"the server answered {e.code().name}: {e.details()}", e.code(), reasons)


def _authorization(token: str):
    return (("authorization", f"Bearer {token}"),)


def fetch_plan(
    server: str,
    token: str,
    sql: str,
    *,
    ca: Optional[bytes] = None,
    insecure: bool = False,
    timeout: Optional[float] = None,
) -> dict:
    """The plan the server would run ``sql`` under for the member ``token`` authenticates
    (``PlanQuery``, PROTOCOL.md 3.3): the ``"plan"`` object of ``cleanroom check --format
    json``'s document. A refused query raises ``QueryError`` with the server's reasons."""
    pb2, pb2_grpc = load_proto()
    channel = _channel(server, ca, insecure)
    try:
        stub = pb2_grpc.CleanRoomServiceStub(channel)
        response = stub.PlanQuery(pb2.PlanQueryRequest(sql=sql), metadata=_authorization(token), timeout=timeout)
    except grpc.RpcError as e:
        raise _remote_error(e) from None
    finally:
        channel.close()
    try:
        doc = json.loads(response.plan_json)
    except ValueError as e:
        raise QueryError(f"the server's plan is not JSON: {e}") from None
    plan = doc.get("plan") if isinstance(doc, dict) else None
    if not isinstance(plan, dict) or doc.get("allowed") is not True:
        raise QueryError("the server's answer to PlanQuery is not an allowed plan")
    if plan.get("sql") != sql:
        raise QueryError("the server's plan is for another query")
    return plan


def collaboration_sha256(text: bytes) -> bytes:
    """The collaboration file's digest both sides compare (PROTOCOL.md 3.2): SHA-256 of its
    text, a leading byte-order mark removed and every CRLF read as LF."""
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    return hashlib.sha256(text.replace(b"\r\n", b"\n")).digest()


def plan_sha256(plan: dict) -> bytes:
    """SHA-256 of the plan's canonical JSON (PROTOCOL.md 3.2): keys sorted, no white space,
    non-ASCII characters as UTF-8."""
    canonical = json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def agreement(pb2, collaboration: bytes, plan: dict):
    """This client's view of the session's terms: what the server compares with its own."""
    return pb2.Agreement(
        collaboration_sha256=collaboration_sha256(collaboration),
        domain=plan["domain"],
        matcher_normalization=plan["matcher"]["normalization"],
        receiver_normalization=plan["receiver"]["normalization"],
        plan_sha256=plan_sha256(plan),
    )


def run_query(
    server: str,
    token: str,
    plan: dict,
    data: dict,
    *,
    collaboration: bytes,
    ca: Optional[bytes] = None,
    insecure: bool = False,
    timeout: Optional[float] = None,
) -> QueryOutcome:
    """Runs the plan's query against ``server``; ``data`` maps the member's tables to CSV paths,
    ``collaboration`` is this member's copy of the collaboration file (its bytes)."""
    if plan.get("protocol") not in ("cardinality", "intersection_sum"):
        raise QueryError(f"this client runs cardinality and intersection-sum, not {plan.get('protocol')!r}")
    if plan.get("privacy") is not None:
        raise QueryError("this client does not run differentially private (noisy) plans")
    pb2, pb2_grpc = load_proto()
    own = plan["receiver"]["table"]
    if own not in data:
        raise QueryError(f"the query uses your table {own!r}: give --data {own}=PATH")
    table = plans.ReceiverTable.from_csv(plan, data[own])
    value_columns = len(plan["receiver"]["value_columns"])
    receiver = Receiver(
        Domain(plan["collaboration_id"], plan["domain"]),
        table.groups,
        value_columns,
        matcher_groups=None if plan.get("grouped_by") == "matcher" else 1,
    )

    requests: "queue.Queue" = queue.Queue()

    def request_stream():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    def psi_request(payload: bytes):
        return pb2.RunSessionRequest(psi=pb2.PsiMessage(payload=payload))

    ours = agreement(pb2, collaboration, plan)
    requests.put(
        pb2.RunSessionRequest(
            start=pb2.SessionStart(
                collaboration_id=plan["collaboration_id"],
                member=plan["querier"],
                sql=plan["sql"],
                table=pb2.TableDescriptor(
                    name=own, columns=table.header, rows=table.rows, skipped_rows=table.skipped
                ),
                agreement=ours,
            )
        )
    )
    channel = _channel(server, ca, insecure)
    stub = pb2_grpc.CleanRoomServiceStub(channel)
    call = stub.RunSession(
        request_stream(), metadata=_authorization(token), timeout=timeout
    )
    try:
        responses = iter(call)
        first = next(responses, None)
        if first is None or first.WhichOneof("message") != "accepted":
            raise QueryError("the session did not open with an acceptance")
        accepted = first.accepted
        if not accepted.HasField("agreement") or accepted.agreement != ours:
            raise QueryError(
                "the server's terms differ from ours (collaboration file, hash domain, "
                "normalizations or plan): are both collaboration files identical?"
            )
        if accepted.HasField("job"):
            # PROTOCOL.md 3.6: this client runs every session as one protocol run.
            raise QueryError(
                f"the server runs this session as a job of {accepted.job.buckets} buckets, "
                "which this client does not implement (its table is over the server's "
                "bucket_rows): use the cleanroom binary"
            )
        checks = [
            ("matcher table", plan["matcher"]["table"], accepted.matcher_table),
            ("release threshold", plan["min_release"], accepted.min_release),
            ("value columns", value_columns, accepted.value_columns),
        ]
        for what, ours, theirs in checks:
            if ours != theirs:
                raise QueryError(
                    f"the server's plan differs from ours: {what} {ours!r} here, {theirs!r} "
                    "on the server (are both collaboration files identical?)"
                )

        def send_pending():
            while (msg := receiver.poll()) is not None:
                requests.put(psi_request(encode(msg)))

        send_pending()
        for response in responses:
            if response.WhichOneof("message") != "psi":
                raise QueryError("a session message before the protocol finished")
            receiver.handle(decode(response.psi.payload))
            send_pending()
            if receiver.finished:
                break
        if not receiver.finished:
            raise QueryError("the server ended the session before the protocol finished")
        requests.put(None)  # half-close: nothing more to send
        last = next(responses, None)
        if last is None or last.WhichOneof("message") != "summary":
            raise QueryError("the session did not end with a summary")
        if next(responses, None) is not None:
            raise QueryError("messages after the summary")
        summary = last.summary
        # The session is over on the wire: only now decrypt (PROTOCOL.md 3.2, step 6).
        outcome = receiver.open()
        return QueryOutcome(
            result=plans.result(plan, outcome),
            session_id=summary.session_id,
            released_rows=summary.released_rows,
            suppressed_rows=summary.suppressed_rows,
            rows=table.rows,
        )
    except grpc.RpcError as e:
        raise _remote_error(e) from None
    except BaseException:
        call.cancel()
        raise
    finally:
        requests.put(None)
        channel.close()
