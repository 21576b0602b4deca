"""Jobs on the wire: job tickets in method requests, job events, and the names of their queues."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from func_amqp.errors import Code, ProtocolError
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import (
    FINAL_JOB_STATES,
    ExceptionResponse,
    JobEvent,
    JobState,
    JobTicket,
    MethodRequest,
    MethodResponse,
    Opcode,
    ProgressIndication,
)

MAX = 1024 * 1024
DEADLINE = 1_900_000_000.5
OWNER = "alice.build-host.example.org"
TICKET = JobTicket("web01-test-add-1700000000.25", OWNER)

EVENTS = [
    JobEvent("j1", "web01", JobState.SENT, 1_700_000_000.5),
    JobEvent("j1", "web01", JobState.ACCEPTED, 1_700_000_001.0, attempt=2, detail="waiting for a free slot"),
    JobEvent("j1", "web01", JobState.STARTED, 1_700_000_002.0, detail="redelivered (delivery 3)", attempt=3),
    JobEvent("j1", "web01", JobState.PROGRESS, 1_700_000_003.0, progress=ProgressIndication("build", 3, 10, "3 of 10")),
    JobEvent("j1", "web01", JobState.PROGRESS, 1_700_000_003.5, progress=ProgressIndication("prepare")),
    JobEvent("j1", "web01", JobState.SUCCEEDED, 1_700_000_004.0, result=MethodResponse({"a": [1, 2.5, None, True], "b": {}})),
    JobEvent("j1", "web01", JobState.SUCCEEDED, 1_700_000_004.0, result=MethodResponse(None)),
    JobEvent("j1", "web01", JobState.FAILED, 1_700_000_005.0, result=ExceptionResponse(7, "boom", "builtins.ValueError", "Traceback ...")),
    JobEvent("j1", "web01", JobState.CANCELLED, 1_700_000_006.0, result=ExceptionResponse(int(Code.CANCELLED), "cancelled")),
    JobEvent("j1", "@builders", JobState.DEAD_LETTERED, 1_700_000_007.0, attempt=4, detail="given up after 3 deliveries"),
    JobEvent("j1", "web01", JobState.NEVER_REACHED, 1_700_000_008.0, detail="no job queue"),
    JobEvent("é" * codec.MAX_JOB_ID_LENGTH, "web01", JobState.EXPIRED, 0.0),
]


def good_values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"kind": "job", "job_id": "j1", "minion": "web01", "state": "started", "at": 1.5, "attempt": 1, "detail": ""}
    values.update(overrides)
    return values


def indication(values: Any) -> Envelope:
    """A ``_data_indication`` envelope as a peer might send it."""
    return Envelope(
        body=json.dumps({"_values": values}).encode("utf-8"),
        content_type=names.CONTENT_TYPE,
        headers={names.H_OPCODE: Opcode.DATA_INDICATION.value, names.H_PROTOCOL: names.PROTOCOL_VERSION},
    )


def job_request(job: Any) -> Envelope:
    body = {
        "_object_id": {"_object_name": "func:module:test"},
        "_method_name": "add",
        "_arguments": {"args": [1, 2]},
        "_job": job,
    }
    return Envelope(
        body=json.dumps(body).encode("utf-8"),
        content_type=names.CONTENT_TYPE,
        headers={
            names.H_OPCODE: Opcode.METHOD_REQUEST.value,
            names.H_PROTOCOL: names.PROTOCOL_VERSION,
            names.H_DEADLINE: int(DEADLINE * 1000),
        },
    )


# --- job tickets in method requests ------------------------------------------------------


def test_job_request_carries_its_ticket_in_body_and_owner_header() -> None:
    request = MethodRequest("test", "add", [1, 2], DEADLINE, target="web01", job=TICKET)
    env = codec.encode(request)
    assert json.loads(env.body)["_job"] == {"id": TICKET.job_id, "owner": OWNER}
    assert env.headers[names.H_OWNER] == env.headers["x-func-amqp-owner"] == OWNER
    assert env.headers[names.H_TARGET] == "web01"
    decoded = codec.decode(env, MAX)
    assert decoded == request
    assert decoded.job == TICKET


def test_plain_request_has_no_ticket_and_no_owner_header() -> None:
    env = codec.encode(MethodRequest("test", "add", [1, 2], DEADLINE))
    assert "_job" not in json.loads(env.body)
    assert names.H_OWNER not in env.headers
    assert codec.decode(env, MAX).job is None


def test_pool_job_request_round_trips() -> None:
    request = MethodRequest("mock", "build", ["x.src.rpm"], DEADLINE, target=names.pool_target("builders"), job=TICKET)
    assert codec.decode(codec.encode(request), MAX) == request


def test_the_signed_body_owner_wins_over_the_routing_header() -> None:
    """The header only routes; the owner a minion reports to is the one in the signed body."""
    env = codec.encode(MethodRequest("test", "add", [], DEADLINE, job=TICKET))
    env.headers[names.H_OWNER] = "mallory.example.org"
    assert codec.decode(env, MAX).job.owner == OWNER


def test_ticket_with_the_longest_job_id_is_accepted() -> None:
    job_id = "x" * codec.MAX_JOB_ID_LENGTH
    decoded = codec.decode(job_request({"id": job_id, "owner": OWNER}), MAX)
    assert decoded.job == JobTicket(job_id, OWNER)


@pytest.mark.parametrize(
    "job, match",
    [
        ("web01-test-add-1", "_job must be a map"),
        ([], "_job must be a map"),
        (None, "_job must be a map"),
        ({"owner": OWNER}, "job id"),
        ({"id": "", "owner": OWNER}, "job id"),
        ({"id": "x" * (codec.MAX_JOB_ID_LENGTH + 1), "owner": OWNER}, "job id"),
        ({"id": "a\nb", "owner": OWNER}, "job id"),
        ({"id": "a\x00b", "owner": OWNER}, "job id"),
        ({"id": 17, "owner": OWNER}, "job id"),
        ({"id": "j1"}, "owner"),
        ({"id": "j1", "owner": ""}, "owner"),
        ({"id": "j1", "owner": "Alice.Example"}, "owner"),
        ({"id": "j1", "owner": "alice example"}, "owner"),
        ({"id": "j1", "owner": "-alice"}, "owner"),
        ({"id": "j1", "owner": "alice."}, "owner"),
        ({"id": "j1", "owner": "alice/../x"}, "owner"),
        ({"id": "j1", "owner": "a" * 300}, "owner"),
        ({"id": "j1", "owner": 5}, "owner"),
        ({"id": "j1", "owner": ["alice"]}, "owner"),
    ],
)
def test_bad_job_tickets_are_protocol_errors(job: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        codec.decode(job_request(job), MAX)
    assert info.value.code is Code.BAD_REQUEST


# --- job events ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.state.value)
def test_job_events_round_trip_on_the_wire(event: JobEvent) -> None:
    env = codec.encode(event, agent="web01", owner=OWNER)
    assert env.headers[names.H_OPCODE] == Opcode.DATA_INDICATION.value
    assert env.headers[names.H_ROLE] == names.ROLE_INDICATION
    assert env.headers[names.H_OWNER] == OWNER
    assert names.H_DEADLINE not in env.headers
    assert json.loads(env.body)["_values"]["kind"] == codec.KIND_JOB == "job"
    assert codec.decode(env, MAX) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.state.value)
def test_job_event_values_round_trip(event: JobEvent) -> None:
    values = codec.job_event_values(event)
    assert values["kind"] == "job"
    assert values["state"] == event.state.value
    assert values["attempt"] == event.attempt
    assert ("result" in values) == (event.result is not None)
    assert ("progress" in values) == (event.progress is not None)
    again = json.loads(json.dumps(values))  # how stores and ledgers keep it
    assert codec.job_event_from_values(again) == event


def test_job_event_values_carry_the_result_as_opcode_and_body() -> None:
    values = codec.job_event_values(JobEvent("j1", "m1", JobState.SUCCEEDED, 1.0, result=MethodResponse([1, 2])))
    assert values["result"] == {"opcode": "_method_response", "body": {"_arguments": {"result": [1, 2]}}}
    failed = codec.job_event_values(JobEvent("j1", "m1", JobState.FAILED, 1.0, result=ExceptionResponse(7, "boom")))
    assert failed["result"]["opcode"] == "_exception"
    assert failed["result"]["body"]["_values"]["error_code"] == 7


def test_bytes_results_travel_in_job_events() -> None:
    event = JobEvent("j1", "m1", JobState.SUCCEEDED, 1.0, result=MethodResponse([b"\x00\xff", "x"]))
    assert codec.decode(codec.encode(event, owner=OWNER), MAX) == event


def test_encoding_an_event_without_owner_sets_no_owner_header() -> None:
    assert names.H_OWNER not in codec.encode(EVENTS[0]).headers


def test_missing_attempt_and_detail_default() -> None:
    values = good_values()
    del values["attempt"], values["detail"]
    event = codec.job_event_from_values(values)
    assert event.attempt == 1
    assert event.detail == ""
    assert not event.redelivered


def test_redelivered_means_a_later_attempt() -> None:
    assert not JobEvent("j", "m", JobState.STARTED, 0.0, attempt=1).redelivered
    assert JobEvent("j", "m", JobState.STARTED, 0.0, attempt=2).redelivered


BAD_EVENT_VALUES = [
    ("unknown state", {"state": "running"}, "unknown job state 'running'"),
    ("state upper case", {"state": "STARTED"}, "unknown job state"),
    ("state missing", {"state": None}, "unknown job state"),
    ("state a list", {"state": ["started"]}, "unknown job state"),
    ("state a map", {"state": {"a": 1}}, "unknown job state"),
    ("attempt 0", {"attempt": 0}, "attempt must be a positive integer"),
    ("attempt negative", {"attempt": -1}, "attempt must be a positive integer"),
    ("attempt bool", {"attempt": True}, "attempt must be a positive integer"),
    ("attempt str", {"attempt": "2"}, "attempt must be a positive integer"),
    ("attempt float", {"attempt": 2.0}, "attempt must be a positive integer"),
    ("attempt null", {"attempt": None}, "attempt must be a positive integer"),
    ("job id empty", {"job_id": ""}, "job id"),
    ("job id too long", {"job_id": "x" * (codec.MAX_JOB_ID_LENGTH + 1)}, "job id"),
    ("job id newline", {"job_id": "j\n1"}, "job id"),
    ("job id escape", {"job_id": "j\x1b[2J"}, "job id"),
    ("job id number", {"job_id": 1}, "job id"),
    ("job id missing", {"job_id": None}, "job id"),
    ("minion empty", {"minion": ""}, "minion"),
    ("minion number", {"minion": 3}, "minion"),
    ("at a string", {"at": "now"}, "at must be a number"),
    ("at bool", {"at": True}, "at must be a number"),
    ("at huge", {"at": 10**400}, "at must be a finite number"),
    ("detail not text", {"detail": ["x"]}, "detail must be a string"),
    ("result a request", {"result": {"opcode": "_method_request", "body": {}}}, "job result"),
    ("result a query response", {"result": {"opcode": "_query_response", "body": []}}, "job result"),
    ("result an indication", {"result": {"opcode": "_data_indication", "body": {"_values": {"kind": "log", "lines": []}}}}, "job result"),
    ("result unknown opcode", {"result": {"opcode": "_bogus", "body": {}}}, "job result"),
    ("result no opcode", {"result": {"body": {"_arguments": {"result": 1}}}}, "job result"),
    ("result opcode a list", {"result": {"opcode": ["_method_response"], "body": {}}}, "job result"),
    ("result not a map", {"result": "ok"}, "result must be a map"),
    ("result null", {"result": None}, "result must be a map"),
    ("result body missing", {"result": {"opcode": "_method_response"}}, "body must be a map"),
    ("result arguments not a map", {"result": {"opcode": "_method_response", "body": {"_arguments": []}}}, "_arguments must be a map"),
    ("exception code a string", {"result": {"opcode": "_exception", "body": {"_values": {"error_code": "7"}}}}, "error_code"),
    ("exception code bool", {"result": {"opcode": "_exception", "body": {"_values": {"error_code": True}}}}, "error_code"),
    ("exception text not a string", {"result": {"opcode": "_exception", "body": {"_values": {"error_code": 7, "error_text": 1}}}}, "error_text"),
    ("progress not a map", {"progress": "half"}, "progress must be a map"),
    ("progress null", {"progress": None}, "progress must be a map"),
    ("progress a list", {"progress": [1, 2]}, "progress must be a map"),
    ("progress phase not text", {"progress": {"phase": 3}}, "phase must be a string"),
    ("progress current a string", {"progress": {"phase": "a", "current": "3"}}, "current must be an integer"),
    ("progress current bool", {"progress": {"phase": "a", "current": True}}, "current must be an integer"),
    ("progress total a float", {"progress": {"phase": "a", "total": 1.5}}, "total must be an integer"),
    ("progress message not text", {"progress": {"phase": "a", "message": None}}, "message must be a string"),
]


@pytest.mark.parametrize("overrides, match", [case[1:] for case in BAD_EVENT_VALUES], ids=[case[0] for case in BAD_EVENT_VALUES])
def test_bad_job_event_values_are_protocol_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(match)):
        codec.job_event_from_values(good_values(**overrides))


@pytest.mark.parametrize("overrides, match", [case[1:] for case in BAD_EVENT_VALUES], ids=[case[0] for case in BAD_EVENT_VALUES])
def test_bad_job_events_on_the_wire_are_protocol_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(match)) as info:
        codec.decode(indication(good_values(**overrides)), MAX)
    assert info.value.code is Code.BAD_REQUEST


def test_the_longest_job_id_is_accepted_in_an_event() -> None:
    job_id = "x" * codec.MAX_JOB_ID_LENGTH
    assert codec.job_event_from_values(good_values(job_id=job_id)).job_id == job_id


@pytest.mark.parametrize("values", ["started", ["j1", "web01"], None, 7])
def test_job_event_values_that_are_not_a_map_on_the_wire(values: Any) -> None:
    with pytest.raises(ProtocolError, match="_values must be a map"):
        codec.decode(indication(values), MAX)


@pytest.mark.parametrize("values", ["started", ["j1", "web01"], None])
def test_job_event_from_values_refuses_a_non_map(values: Any) -> None:
    """JobLedger.final() hands it whatever a ledger line holds under "final"."""
    with pytest.raises(ProtocolError):
        codec.job_event_from_values(values)


# --- job results ---------------------------------------------------------------------------


def test_job_result_from_values_gives_both_reply_kinds() -> None:
    assert codec.job_result_from_values({"opcode": "_method_response", "body": {"_arguments": {"result": 5}}}) == MethodResponse(5)
    error = {"opcode": "_exception", "body": {"_values": {"error_code": 7, "error_text": "boom", "exception_type": "E", "traceback": "T"}}}
    assert codec.job_result_from_values(error) == ExceptionResponse(7, "boom", "E", "T")


@pytest.mark.parametrize(
    "carried",
    [
        None,
        "x",
        [],
        {},
        {"opcode": "_method_request", "body": {}},
        {"opcode": "_agent_heartbeat_indication", "body": {"_values": {"name": "m1"}}},
        {"opcode": "_cancel_request", "body": {"_call_id": "x"}},
        {"opcode": "_exception", "body": None},
        {"opcode": "_exception", "body": {"_values": {"error_code": 7, "traceback": 1}}},
    ],
)
def test_bad_job_results_are_protocol_errors(carried: Any) -> None:
    with pytest.raises(ProtocolError):
        codec.job_result_from_values(carried)


# --- job states ----------------------------------------------------------------------------


def test_final_job_states() -> None:
    assert FINAL_JOB_STATES == {
        JobState.NEVER_REACHED,
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.EXPIRED,
        JobState.CANCELLED,
        JobState.DEAD_LETTERED,
    }
    assert isinstance(FINAL_JOB_STATES, frozenset)


@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.value)
def test_job_state_final_matches_the_set(state: JobState) -> None:
    assert state.final is (state in FINAL_JOB_STATES)
    assert state.final is (state not in {JobState.SENT, JobState.ACCEPTED, JobState.STARTED, JobState.PROGRESS})
    assert JobState(state.value) is state


# --- names --------------------------------------------------------------------------------

QUEUE_SUFFIX = re.compile(r"[A-Za-z0-9_.:-]+")


def test_job_queue_names() -> None:
    assert names.job_queue("web01.example.org") == "func.jobs.web01.example.org"
    assert names.job_events_queue(OWNER) == "func.job-events." + OWNER
    assert names.pool_target("builders") == "@builders"
    assert names.pool_queue("builders:arch:x86_64") == "func.pool.builders:arch:x86_64"


@pytest.mark.parametrize("tags", [None, {}])
def test_pool_key_without_tags_is_the_pool(tags: dict[str, str] | None) -> None:
    assert names.pool_key("builders", tags) == "builders"


def test_pool_key_sorts_tags_and_separates_with_colons() -> None:
    assert names.pool_key("builders", {"distro": "fedora-40", "arch": "x86_64"}) == "builders:arch:x86_64:distro:fedora-40"
    assert names.pool_key("builders", {"arch": "x86_64", "distro": "fedora-40"}) == "builders:arch:x86_64:distro:fedora-40"
    assert names.pool_key("b", {"z": "1", "a": "2", "m": "3"}) == "b:a:2:m:3:z:1"


@pytest.mark.parametrize(
    "pool, tags",
    [
        ("builders", None),
        ("b.1_x-y", {"arch": "x86_64"}),
        ("0", {"distro": "fedora-40", "arch": "aarch64", "os.v": "el_9", "gpu": "none"}),
    ],
)
def test_pool_key_is_a_queue_name_suffix(pool: str, tags: dict[str, str] | None) -> None:
    for text in [pool, *(tags or {}), *(tags or {}).values()]:
        assert names.valid_tag(text)
    key = names.pool_key(pool, tags)
    assert QUEUE_SUFFIX.fullmatch(key)
    assert "=" not in key and ";" not in key


def test_a_pool_key_too_long_for_an_amqp_queue_name_is_refused() -> None:
    longest = "a" * 63
    tags = {f"{i}" + "k" * 62: "v" * 63 for i in range(names.MAX_TAGS)}
    assert names.valid_tag(longest) and all(names.valid_tag(t) for kv in tags.items() for t in kv)
    with pytest.raises(ValueError, match="AMQP allows 255"):
        names.pool_key(longest, tags)
    fitting = names.pool_key("a" * 40, {"arch": "x" * 40, "distro": "y" * 40})
    assert len(names.pool_queue(fitting).encode()) <= 255


@pytest.mark.parametrize("text", ["a", "0", "x86_64", "fedora-40", "el.9", "a" * 63, "9-._"])
def test_valid_tags(text: str) -> None:
    assert names.valid_tag(text)


@pytest.mark.parametrize(
    "text",
    ["", "A", "Builders", "-a", ".a", "_a", "a:b", "a=b", "a;b", "a b", "a/b", "a" * 64, "a\n", "\na", "ä", "a*", "a#"],
)
def test_invalid_tags(text: str) -> None:
    assert not names.valid_tag(text)
