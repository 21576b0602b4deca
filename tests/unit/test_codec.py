"""The wire codec: every message kind round-trips, every bad input is a ProtocolError."""

from __future__ import annotations

import base64
import json
import math
import random
import time
from typing import Any

import pytest

from func_amqp.errors import Code, ProtocolError
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import (
    AgentHeartbeat,
    AgentInfo,
    AgentLocateRequest,
    AgentLocateResponse,
    ExceptionResponse,
    MethodRequest,
    MethodResponse,
    Opcode,
    QueryRequest,
    QueryResponse,
    QueryTarget,
    CancelRequest,
    LogIndication,
    ProgressIndication,
    SubscribeRequest,
)

MAX = 1024 * 1024
DEADLINE = 1_900_000_000.5
DEADLINE_MS = 1_900_000_000_500  # the header carries integer milliseconds

AGENT = AgentInfo(
    name="web01.example.org",
    version="1.2.3",
    protocol=names.PROTOCOL_VERSION,
    modules=["command", "test"],
    heartbeat_interval=30.0,
    started=1_700_000_000.25,
    stopping=False,
)

MESSAGES = [
    MethodRequest("test", "add", [1, 2], DEADLINE),
    MethodRequest("command", "run", ["ls -l /"], DEADLINE, target="web01"),
    MethodRequest("test", "ping", [], DEADLINE),
    MethodResponse(3),
    MethodResponse(None),
    MethodResponse({"a": [1, 2.5, "x", None, True, False], "b": {"c": {}}}),
    ExceptionResponse(int(Code.METHOD_FAILED), "boom", "builtins.ValueError", "Traceback ..."),
    ExceptionResponse(int(Code.MODULE_NOT_FOUND), "no module foo"),
    QueryRequest(QueryTarget.SCHEMA_ID),
    QueryRequest(QueryTarget.SCHEMA, "test", DEADLINE),
    QueryResponse([]),
    QueryResponse([{"_package_name": "func", "_class_name": "test"}]),
    AgentLocateRequest(),
    AgentLocateRequest(DEADLINE),
    AgentLocateResponse(AGENT),
    AgentHeartbeat(AGENT),
    AgentHeartbeat(AgentInfo("m1", "", 1, [], 5.0, 0.0, True)),
]

EXPECTED_OPCODES = {
    MethodRequest: Opcode.METHOD_REQUEST,
    MethodResponse: Opcode.METHOD_RESPONSE,
    ExceptionResponse: Opcode.EXCEPTION,
    QueryRequest: Opcode.QUERY_REQUEST,
    QueryResponse: Opcode.QUERY_RESPONSE,
    AgentLocateRequest: Opcode.AGENT_LOCATE_REQUEST,
    AgentLocateResponse: Opcode.AGENT_LOCATE_RESPONSE,
    AgentHeartbeat: Opcode.AGENT_HEARTBEAT,
}

EXPECTED_ROLES = {
    Opcode.METHOD_REQUEST: names.ROLE_REQUEST,
    Opcode.QUERY_REQUEST: names.ROLE_REQUEST,
    Opcode.AGENT_LOCATE_REQUEST: names.ROLE_REQUEST,
    Opcode.METHOD_RESPONSE: names.ROLE_RESPONSE,
    Opcode.EXCEPTION: names.ROLE_RESPONSE,
    Opcode.QUERY_RESPONSE: names.ROLE_RESPONSE,
    Opcode.AGENT_LOCATE_RESPONSE: names.ROLE_RESPONSE,
    Opcode.AGENT_HEARTBEAT: names.ROLE_INDICATION,
}


def roundtrip(message: Any) -> Any:
    return codec.decode(codec.encode(message), MAX)


def raw(
    body: Any,
    opcode: Opcode | str | None = Opcode.METHOD_REQUEST,
    *,
    deadline: Any = DEADLINE_MS,
    content_type: str | None = names.CONTENT_TYPE,
    **headers: Any,
) -> Envelope:
    """An envelope as a peer might send it; ``body`` is JSON-encoded unless bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    hdrs: dict[str, Any] = {names.H_PROTOCOL: names.PROTOCOL_VERSION}
    if opcode is not None:
        hdrs[names.H_OPCODE] = opcode.value if isinstance(opcode, Opcode) else opcode
    if deadline is not None:
        hdrs[names.H_DEADLINE] = deadline
    hdrs.update(headers)
    return Envelope(body=data, content_type=content_type, headers=hdrs)


def method_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "_object_id": {"_object_name": "func:module:test"},
        "_method_name": "add",
        "_arguments": {"args": [1, 2]},
    }
    body.update(overrides)
    return body


def agent_body(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "m1",
        "version": "1",
        "protocol": 1,
        "modules": ["test"],
        "heartbeat_interval": 30,
        "started": 1.5,
        "stopping": False,
    }
    values.update(overrides)
    return {"_values": values}


def refused(env: Envelope, code: Code = Code.BAD_REQUEST, match: str | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        codec.decode(env, MAX)
    assert info.value.code is code
    return info.value


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_kind_round_trips(message: Any) -> None:
    decoded = roundtrip(message)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_envelope_properties_and_headers(message: Any) -> None:
    before = time.time()
    env = codec.encode(message, correlation_id="c-1", reply_to="func.reply.x", agent="web01")
    opcode = EXPECTED_OPCODES[type(message)]
    assert env.type == opcode.value
    assert env.app_id == names.APP_ID == "qmf2"
    assert env.content_type == names.CONTENT_TYPE == "application/json"
    assert env.correlation_id == "c-1"
    assert env.reply_to == "func.reply.x"
    assert env.message_id and len(env.message_id) == 32
    int(env.message_id, 16)
    assert env.timestamp is not None and before <= env.timestamp <= time.time()
    assert env.headers[names.H_OPCODE] == opcode.value
    assert env.headers["qmf.opcode"] == opcode.value
    assert env.headers[names.H_ROLE] == EXPECTED_ROLES[opcode]
    assert env.headers["method"] == EXPECTED_ROLES[opcode]
    assert env.headers[names.H_PROTOCOL] == names.PROTOCOL_VERSION
    assert env.headers["x-func-amqp-protocol"] == 1
    assert env.headers[names.H_AGENT] == "web01"
    for value in env.headers.values():
        assert isinstance(value, (str, int, float, bool))
    assert isinstance(env.body, bytes)
    env.body.decode("ascii")  # JSON with non-ASCII escaped: safe for any broker


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_deadline_header_follows_the_message(message: Any) -> None:
    env = codec.encode(message)
    deadline = getattr(message, "deadline", 0.0)
    if deadline:
        assert env.headers[names.H_DEADLINE] == DEADLINE_MS
        assert env.headers["x-func-amqp-deadline"] == DEADLINE_MS
        assert type(env.headers[names.H_DEADLINE]) is int
        assert env.deadline == deadline
    else:
        assert names.H_DEADLINE not in env.headers
        assert env.deadline is None


def test_target_header_only_when_targeted() -> None:
    targeted = codec.encode(MethodRequest("test", "ping", [], DEADLINE, target="web01"))
    assert targeted.headers[names.H_TARGET] == "web01"
    assert targeted.headers["x-func-amqp-target"] == "web01"
    untargeted = codec.encode(MethodRequest("test", "ping", [], DEADLINE))
    assert names.H_TARGET not in untargeted.headers


def test_agent_header_only_when_given() -> None:
    env = codec.encode(MethodResponse(1))
    assert names.H_AGENT not in env.headers
    assert env.correlation_id is None and env.reply_to is None


def test_message_ids_are_unique() -> None:
    ids = {codec.encode(MethodResponse(1)).message_id for _ in range(50)}
    assert len(ids) == 50


def test_method_request_wire_shape_is_qmf() -> None:
    env = codec.encode(MethodRequest("test", "add", [1, 2], DEADLINE))
    assert json.loads(env.body) == {
        "_object_id": {"_object_name": "func:module:test"},
        "_method_name": "add",
        "_arguments": {"args": [1, 2]},
    }


def test_exception_wire_shape() -> None:
    env = codec.encode(ExceptionResponse(7, "boom", "builtins.ValueError", "tb"))
    assert json.loads(env.body) == {
        "_values": {"error_code": 7, "error_text": "boom", "exception_type": "builtins.ValueError", "traceback": "tb"}
    }


def test_schema_query_wire_shape() -> None:
    env = codec.encode(QueryRequest(QueryTarget.SCHEMA, "test"))
    assert json.loads(env.body) == {
        "_what": "SCHEMA",
        "_schema_id": {"_package_name": "func", "_class_name": "test"},
    }
    assert json.loads(codec.encode(QueryRequest(QueryTarget.SCHEMA_ID)).body) == {"_what": "SCHEMA_ID"}


def test_method_request_full_name() -> None:
    assert MethodRequest("test", "add", [], DEADLINE).full_name == "test.add"


def test_target_header_of_another_type_arrives_as_text() -> None:
    decoded = codec.decode(raw(method_body(), **{names.H_TARGET: 42}), MAX)
    assert decoded.target == "42"


def test_decoded_deadline_is_float_seconds() -> None:
    decoded = codec.decode(raw(method_body(), deadline=1_900_000_000_000), MAX)
    assert decoded.deadline == 1_900_000_000.0
    assert isinstance(decoded.deadline, float)


def test_check_envelope_stores_the_deadline() -> None:
    env = raw(method_body(), deadline=123_500)
    assert codec.check_envelope(env, MAX) is Opcode.METHOD_REQUEST
    assert env.deadline == 123.5


@pytest.mark.parametrize("deadline", [time.time() + 30, 1_900_000_000.123456, 1.0009])
def test_deadline_travels_to_the_millisecond(deadline: float) -> None:
    decoded = roundtrip(MethodRequest("test", "ping", [], deadline))
    assert decoded.deadline <= deadline < decoded.deadline + 0.001 + 1e-6


def test_locate_request_deadline_round_trips() -> None:
    assert roundtrip(AgentLocateRequest(1_900_000_000.25)) == AgentLocateRequest(1_900_000_000.25)


def test_requests_without_deadline_decode_with_zero() -> None:
    assert codec.decode(raw({"_what": "SCHEMA_ID"}, Opcode.QUERY_REQUEST, deadline=None), MAX) == QueryRequest(
        QueryTarget.SCHEMA_ID, "", 0.0
    )
    assert codec.decode(raw({}, Opcode.AGENT_LOCATE_REQUEST, deadline=None), MAX) == AgentLocateRequest(0.0)


def test_opcode_from_type_when_the_header_is_missing() -> None:
    env = raw({"_arguments": {"result": 5}}, None)
    env.type = Opcode.METHOD_RESPONSE.value
    assert codec.opcode_of(env) is Opcode.METHOD_RESPONSE
    assert codec.decode(env, MAX) == MethodResponse(5)


def test_header_opcode_wins_over_type() -> None:
    env = raw({"_arguments": {"result": 5}}, Opcode.METHOD_RESPONSE)
    env.type = Opcode.EXCEPTION.value
    assert codec.decode(env, MAX) == MethodResponse(5)


@pytest.mark.parametrize("content_type", [None, "", "application/json"])
def test_accepted_content_types(content_type: str | None) -> None:
    assert codec.decode(raw(method_body(), content_type=content_type), MAX).module == "test"


def test_missing_protocol_header_is_accepted() -> None:
    env = raw(method_body())
    del env.headers[names.H_PROTOCOL]
    assert codec.decode(env, MAX).method == "add"


def test_body_at_the_size_limit_is_accepted() -> None:
    env = codec.encode(MethodResponse("x" * 100))
    assert codec.decode(env, len(env.body)) == MethodResponse("x" * 100)


def test_method_response_without_result_is_none() -> None:
    assert codec.decode(raw({"_arguments": {}}, Opcode.METHOD_RESPONSE), MAX) == MethodResponse(None)


def test_exception_defaults_for_missing_details() -> None:
    decoded = codec.decode(raw({"_values": {"error_code": 4}}, Opcode.EXCEPTION), MAX)
    assert decoded == ExceptionResponse(4, "", "", "")


def test_agent_defaults_for_missing_fields() -> None:
    decoded = codec.decode(raw({"_values": {"name": "m1"}}, Opcode.AGENT_HEARTBEAT), MAX)
    assert decoded == AgentHeartbeat(AgentInfo("m1", "", 0, [], 0.0, 0.0, False))


def test_module_name_at_the_length_limit() -> None:
    module = "m" * (codec.MAX_NAME_LENGTH - len(codec.OBJECT_NAME_PREFIX))
    method = "f" * codec.MAX_NAME_LENGTH
    decoded = roundtrip(MethodRequest(module, method, [], DEADLINE))
    assert decoded.module == module and decoded.method == method


def test_is_request() -> None:
    requests = {
        Opcode.METHOD_REQUEST,
        Opcode.QUERY_REQUEST,
        Opcode.AGENT_LOCATE_REQUEST,
        Opcode.SUBSCRIBE_REQUEST,
        Opcode.CANCEL_REQUEST,
    }
    for opcode in Opcode:
        assert codec.is_request(opcode) is (opcode in requests)


# --- values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\xff\x80binary",
        bytes(range(256)),
        [b"a", {"k": b"b"}, [[b"c"]]],
        {"__bytes__": b"x", "other": 1},
    ],
)
def test_bytes_round_trip(value: Any) -> None:
    assert roundtrip(MethodResponse(value)).result == value


def test_bytes_like_values_arrive_as_bytes() -> None:
    assert roundtrip(MethodResponse(bytearray(b"ab"))).result == b"ab"
    assert roundtrip(MethodResponse(memoryview(b"cd"))).result == b"cd"
    assert type(roundtrip(MethodResponse(bytearray(b"ab"))).result) is bytes


def test_bytes_in_method_arguments() -> None:
    decoded = roundtrip(MethodRequest("test", "echo", [b"\x01\x02", {"blob": b"\xfe"}], DEADLINE))
    assert decoded.args == [b"\x01\x02", {"blob": b"\xfe"}]


def test_bytes_wire_form_is_tagged_base64() -> None:
    env = codec.encode(MethodResponse(b"hi"))
    assert json.loads(env.body) == {"_arguments": {"result": {"__bytes__": base64.b64encode(b"hi").decode()}}}


def test_nested_structures_round_trip() -> None:
    value = {
        "list": [1, [2, [3, [4, {"deep": [None, True, False, -0.5, "é€😀"]}]]]],
        "empty": {"l": [], "d": {}, "s": ""},
        "unicode key é": "line\nbreak\ttab\x00nul",
    }
    assert roundtrip(MethodResponse(value)).result == value


def test_tuples_arrive_as_lists() -> None:
    decoded = roundtrip(MethodResponse((1, (2, 3), [4, (5,)])))
    assert decoded.result == [1, [2, 3], [4, [5]]]
    assert type(decoded.result) is list and type(decoded.result[1]) is list
    request = roundtrip(MethodRequest("test", "add", (1, 2), DEADLINE))  # type: ignore[arg-type]
    assert request.args == [1, 2]


@pytest.mark.parametrize("number", [2**64, -(2**100), 10**300, 0, -1, 1.5e308, 5e-324, -0.0])
def test_numbers_round_trip_exactly(number: int | float) -> None:
    decoded = roundtrip(MethodResponse(number)).result
    assert decoded == number and type(decoded) is type(number)


def test_int_keys_arrive_as_strings() -> None:
    assert roundtrip(MethodResponse({1: "a"})).result == {"1": "a"}


@pytest.mark.parametrize(
    "value",
    [{1, 2}, frozenset({1}), object(), 1j, [1, {"k": {2}}], {"k": object()}, {(1, 2): "tuple key"}],
    ids=["set", "frozenset", "object", "complex", "nested-set", "nested-object", "tuple-key"],
)
def test_values_that_cannot_travel_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        codec.encode(MethodResponse(value))
    with pytest.raises(TypeError):
        codec.encode(MethodRequest("test", "f", [value], DEADLINE))


def test_type_error_names_the_type() -> None:
    with pytest.raises(TypeError, match="set cannot travel"):
        codec.dumps({1})


def test_circular_data_cannot_travel() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(ValueError):
        codec.encode(MethodResponse(value))


@pytest.mark.parametrize(
    "value",
    [
        {"__bytes__": "aGk="},
        {"__bytes__": "not base64!"},
        {"__bytes__": 5},
        [1, {"nested": {"__bytes__": None}}],
        ({"__bytes__": ""},),
    ],
)
def test_maps_that_would_arrive_as_bytes_cannot_travel(value: Any) -> None:
    # Without this refusal {"__bytes__": "aGk="} would silently arrive as b"hi", and the
    # others would make the whole reply undecodable on the overlord.
    with pytest.raises(TypeError, match="__bytes__"):
        codec.encode(MethodResponse(value))


def test_map_with_the_tag_and_other_keys_travels() -> None:
    value = {"__bytes__": "aGk=", "x": 1}
    assert roundtrip(MethodResponse(value)).result == value


def test_string_mentioning_the_tag_travels() -> None:
    value = ['"__bytes__"', {"k": '{"__bytes__": "aGk="}'}]
    assert roundtrip(MethodResponse(value)).result == value


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError, match="not a protocol message"):
        codec.encode({"not": "a message"})  # type: ignore[arg-type]


# --- size, encoding, envelope checks --------------------------------------------------


def test_oversized_body() -> None:
    env = codec.encode(MethodResponse("x" * 100))
    with pytest.raises(ProtocolError, match="bytes, more than") as info:
        codec.decode(env, len(env.body) - 1)
    assert info.value.code is Code.MESSAGE_TOO_LARGE


def test_size_is_checked_before_anything_else() -> None:
    env = Envelope(body=b"\xff" * 100, content_type="text/plain", headers={names.H_OPCODE: "_nope"})
    with pytest.raises(ProtocolError) as info:
        codec.decode(env, 10)
    assert info.value.code is Code.MESSAGE_TOO_LARGE


def test_non_utf8_body() -> None:
    refused(raw(b'{"a": "\xff\xfe"}'), match="not UTF-8")


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"[1,]", b"nul", b'{"a": 1} x', b"\x00"])
def test_invalid_json(body: bytes) -> None:
    refused(raw(body), match="not valid JSON")


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_json(depth: int) -> None:
    refused(raw(b"[" * depth + b"]" * depth), match="not valid JSON")
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    refused(raw(nested, Opcode.METHOD_RESPONSE), match="not valid JSON")


def test_huge_integer_literal_is_refused() -> None:
    refused(raw(b'{"_arguments": {"result": ' + b"9" * 5000 + b"}}", Opcode.METHOD_RESPONSE))


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/json; charset=latin-1", "application/octet-stream"])
def test_wrong_content_type(content_type: str) -> None:
    refused(raw(method_body(), content_type=content_type), match="unsupported content type")


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_unsupported_protocol_version(version: int) -> None:
    refused(raw(method_body(), **{names.H_PROTOCOL: version}), Code.UNSUPPORTED_VERSION, match="not supported")


@pytest.mark.parametrize("version", ["1", 1.0, True, False, "x"])
def test_protocol_version_must_be_an_int(version: Any) -> None:
    refused(raw(method_body(), **{names.H_PROTOCOL: version}), match="must be an integer")


@pytest.mark.parametrize("opcode", ["_bogus", "METHOD_REQUEST", "_method_request ", 7, True, 1.5])
def test_unknown_opcode(opcode: Any) -> None:
    refused(raw(method_body(), opcode), Code.UNKNOWN_OPCODE, match="unknown opcode")


def test_missing_opcode() -> None:
    err = refused(raw(method_body(), None), Code.UNKNOWN_OPCODE)
    assert "unknown opcode" in str(err)
    with pytest.raises(ProtocolError) as info:
        codec.opcode_of(Envelope(body=b"{}"))
    assert info.value.code is Code.UNKNOWN_OPCODE


def test_unknown_type_without_header() -> None:
    env = raw(method_body(), None)
    env.type = "_subscribe_cancel_request"
    refused(env, Code.UNKNOWN_OPCODE)


# --- body shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("body", [[], "text", 5, None, True, [method_body()]])
@pytest.mark.parametrize(
    "opcode",
    [
        Opcode.METHOD_REQUEST,
        Opcode.METHOD_RESPONSE,
        Opcode.EXCEPTION,
        Opcode.QUERY_REQUEST,
        Opcode.AGENT_LOCATE_RESPONSE,
        Opcode.AGENT_HEARTBEAT,
    ],
)
def test_body_must_be_a_map(body: Any, opcode: Opcode) -> None:
    refused(raw(body, opcode), match="must be a map")


@pytest.mark.parametrize("body", [{}, "text", 5, None, {"items": []}])
def test_query_response_body_must_be_a_list(body: Any) -> None:
    refused(raw(body, Opcode.QUERY_RESPONSE), match="must be a list")


def test_locate_request_body_is_not_interpreted() -> None:
    assert codec.decode(raw([1, 2], Opcode.AGENT_LOCATE_REQUEST, deadline=5000), MAX) == AgentLocateRequest(5.0)


@pytest.mark.parametrize("object_id", [None, "func:module:test", ["func:module:test"], 1])
def test_object_id_must_be_a_map(object_id: Any) -> None:
    refused(raw(method_body(_object_id=object_id)), match="_object_id must be a map")


def test_missing_object_id() -> None:
    body = method_body()
    del body["_object_id"]
    refused(raw(body), match="_object_id")


@pytest.mark.parametrize(
    "object_name",
    [None, 5, ["func:module:test"], "", "func:module:" + "m" * 244, "func:module:te\nst", "func:module:\x00"],
)
def test_bad_object_name(object_name: Any) -> None:
    refused(raw(method_body(_object_id={"_object_name": object_name})), match="_object_name")


def test_missing_object_name() -> None:
    refused(raw(method_body(_object_id={})), match="_object_name")


@pytest.mark.parametrize("object_name", ["test", "func:test", "module:test", "FUNC:MODULE:test", " func:module:test"])
def test_object_name_needs_the_prefix(object_name: str) -> None:
    refused(raw(method_body(_object_id={"_object_name": object_name})), match="must start with")


def test_empty_module_name() -> None:
    refused(raw(method_body(_object_id={"_object_name": "func:module:"})), match="module name")


@pytest.mark.parametrize("method", [None, 1, "", "m" * 256, "bad\nname", "tab\there", "\u200b", ["add"]])
def test_bad_method_name(method: Any) -> None:
    refused(raw(method_body(_method_name=method)), match="_method_name")


def test_missing_method_name() -> None:
    body = method_body()
    del body["_method_name"]
    refused(raw(body), match="_method_name")


@pytest.mark.parametrize("arguments", [None, [], [1, 2], "args", 3])
def test_arguments_must_be_a_map(arguments: Any) -> None:
    refused(raw(method_body(_arguments=arguments)), match="_arguments must be a map")


@pytest.mark.parametrize("arguments", [{}, {"args": None}, {"args": {"a": 1}}, {"args": "1 2"}, {"args": 3}])
def test_args_must_be_a_list(arguments: Any) -> None:
    refused(raw(method_body(_arguments=arguments)), match="args must be a list")


def test_method_request_needs_a_deadline() -> None:
    refused(raw(method_body(), deadline=None), match=names.H_DEADLINE)


@pytest.mark.parametrize(
    "deadline", ["soon", "1900000000000", True, False, 1_900_000_000.5, 1.9e12, math.nan, math.inf, -math.inf]
)
def test_deadline_must_be_integer_milliseconds(deadline: Any) -> None:
    refused(raw(method_body(), deadline=deadline), match="integer milliseconds")


@pytest.mark.parametrize("deadline", [2**63, -(2**63), 10**400, -(10**400)], ids=["2**63", "-2**63", "1e400", "-1e400"])
def test_deadline_beyond_any_clock(deadline: int) -> None:
    refused(raw(method_body(), deadline=deadline), match=names.H_DEADLINE)


def test_deadline_header_is_checked_for_every_opcode() -> None:
    refused(raw({"_arguments": {"result": 1}}, Opcode.METHOD_RESPONSE, deadline="later"), match="integer milliseconds")


# --- bytes tags -------------------------------------------------------------------------


@pytest.mark.parametrize("encoded", [5, None, [], {}, True, ["aGk="]])
def test_bytes_tag_must_hold_a_string(encoded: Any) -> None:
    refused(raw({"_arguments": {"result": {"__bytes__": encoded}}}, Opcode.METHOD_RESPONSE), match="not a base64 string")


@pytest.mark.parametrize("encoded", ["not base64!", "aGk", "a", "aGk=\n", "a===", "aGk=aGk"])
def test_bytes_tag_must_be_valid_base64(encoded: str) -> None:
    refused(raw({"_arguments": {"result": {"__bytes__": encoded}}}, Opcode.METHOD_RESPONSE), match="base64")


def test_bytes_tag_with_non_ascii_text() -> None:
    refused(raw({"_arguments": {"result": {"__bytes__": "é"}}}, Opcode.METHOD_RESPONSE))


def test_bad_bytes_tag_in_method_arguments() -> None:
    refused(raw(method_body(_arguments={"args": [{"__bytes__": "***"}]})), match="base64")


# --- exceptions -----------------------------------------------------------------------


def exception_body(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"error_code": 7, "error_text": "boom", "exception_type": "", "traceback": ""}
    base.update(values)
    return {"_values": base}


@pytest.mark.parametrize("code", ["7", 7.0, None, True, False, [7]])
def test_exception_code_must_be_an_int(code: Any) -> None:
    refused(raw(exception_body(error_code=code), Opcode.EXCEPTION), match="error_code must be an integer")


def test_exception_without_code() -> None:
    refused(raw({"_values": {"error_text": "boom"}}, Opcode.EXCEPTION), match="error_code")


@pytest.mark.parametrize("values", [None, [], "boom"])
def test_exception_values_must_be_a_map(values: Any) -> None:
    refused(raw({"_values": values}, Opcode.EXCEPTION), match="_values must be a map")


@pytest.mark.parametrize("text", [None, 5, ["boom"]])
def test_exception_text_must_be_a_string(text: Any) -> None:
    refused(raw(exception_body(error_text=text), Opcode.EXCEPTION), match="error_text")


@pytest.mark.parametrize("field", ["exception_type", "traceback"])
@pytest.mark.parametrize("value", [None, 1, ["x"], {"x": 1}])
def test_exception_details_must_be_strings(field: str, value: Any) -> None:
    refused(raw(exception_body(**{field: value}), Opcode.EXCEPTION), match="exception details")


def test_exception_with_unlisted_code_still_decodes() -> None:
    assert codec.decode(raw(exception_body(error_code=999), Opcode.EXCEPTION), MAX).code == 999


# --- queries --------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["OBJECT", "schema", "", None, 1, ["SCHEMA"], {"a": 1}])
def test_query_with_unknown_target(what: Any) -> None:
    refused(raw({"_what": what}, Opcode.QUERY_REQUEST), match="unknown query target")


def test_query_without_target() -> None:
    refused(raw({}, Opcode.QUERY_REQUEST), match="unknown query target")


def test_schema_query_without_schema_id() -> None:
    refused(raw({"_what": "SCHEMA"}, Opcode.QUERY_REQUEST), match="_schema_id must be a map")


@pytest.mark.parametrize("schema_id", [None, "test", ["test"]])
def test_schema_id_must_be_a_map(schema_id: Any) -> None:
    refused(raw({"_what": "SCHEMA", "_schema_id": schema_id}, Opcode.QUERY_REQUEST), match="_schema_id must be a map")


@pytest.mark.parametrize("class_name", [None, "", 5, "x" * 256, "a\nb"])
def test_schema_class_name_must_be_a_name(class_name: Any) -> None:
    body = {"_what": "SCHEMA", "_schema_id": {"_package_name": "func", "_class_name": class_name}}
    refused(raw(body, Opcode.QUERY_REQUEST), match="_class_name")


def test_schema_id_query_ignores_a_schema_id() -> None:
    body = {"_what": "SCHEMA_ID", "_schema_id": {"_class_name": "test"}}
    assert codec.decode(raw(body, Opcode.QUERY_REQUEST, deadline=None), MAX) == QueryRequest(QueryTarget.SCHEMA_ID)


# --- agent info -----------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [Opcode.AGENT_LOCATE_RESPONSE, Opcode.AGENT_HEARTBEAT])
@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("name", None, "agent name"),
        ("name", "", "agent name"),
        ("name", 5, "agent name"),
        ("name", "n" * 256, "agent name"),
        ("name", "bad\nname", "agent name"),
        ("modules", "test", "modules"),
        ("modules", {"test": 1}, "modules"),
        ("modules", ["test", 1], "modules"),
        ("modules", [None], "modules"),
        ("version", 1, "version"),
        ("version", None, "version"),
        ("protocol", "1", "protocol"),
        ("protocol", 1.0, "protocol"),
        ("protocol", True, "protocol"),
        ("heartbeat_interval", "30", "heartbeat_interval"),
        ("heartbeat_interval", True, "heartbeat_interval"),
        ("heartbeat_interval", None, "heartbeat_interval"),
        ("heartbeat_interval", 10**400, "heartbeat_interval"),
        ("started", "yesterday", "started"),
        ("started", [1], "started"),
        ("started", -(10**400), "started"),
        ("stopping", "false", "stopping"),
        ("stopping", 1, "stopping"),
        ("stopping", None, "stopping"),
    ],
)
def test_agent_info_with_bad_fields(opcode: Opcode, field: str, value: Any, match: str) -> None:
    refused(raw(agent_body(**{field: value}), opcode), match=match)


@pytest.mark.parametrize(
    ("literal", "match"),
    [(b"NaN", "NaN is not JSON"), (b"Infinity", "Infinity is not JSON"), (b"-Infinity", "Infinity is not JSON"), (b"1e999", "finite")],
)
def test_agent_numbers_must_be_finite(literal: bytes, match: str) -> None:
    body = b'{"_values": {"name": "m1", "heartbeat_interval": ' + literal + b"}}"
    refused(raw(body, Opcode.AGENT_HEARTBEAT), match=match)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_cannot_travel(value: float) -> None:
    with pytest.raises(ValueError):
        codec.dumps({"x": [value]})


@pytest.mark.parametrize("values", [None, [], "m1"])
def test_agent_values_must_be_a_map(values: Any) -> None:
    refused(raw({"_values": values}, Opcode.AGENT_HEARTBEAT), match="_values must be a map")


def test_agent_int_numbers_become_floats() -> None:
    decoded = codec.decode(raw(agent_body(heartbeat_interval=30, started=2), Opcode.AGENT_HEARTBEAT), MAX)
    assert decoded.agent.heartbeat_interval == 30.0 and isinstance(decoded.agent.heartbeat_interval, float)
    assert decoded.agent.started == 2.0 and isinstance(decoded.agent.started, float)


# --- names and codes ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web01", "web01.example.org", "a-b_c.d", "0", "x" * 254])
def test_valid_minion_names(name: str) -> None:
    assert names.valid_minion_name(name)


@pytest.mark.parametrize(
    "name", ["", "Web01", "-a", "a-", ".a", "a.", "a b", "a/b", "a*", "x" * 256, "é", "a\n", "web01\n"]
)
def test_invalid_minion_names(name: str) -> None:
    assert not names.valid_minion_name(name)


def test_topology_names() -> None:
    assert names.minion_queue("web01") == "func.minion.web01"
    assert names.heartbeat_key("web01") == "agent.heartbeat.web01"
    assert names.PROTOCOL_VERSION == 1


def test_every_code_has_a_description() -> None:
    for code in Code:
        assert code.description
    assert len({int(code) for code in Code}) == len(Code)


def test_protocol_error_defaults_to_bad_request() -> None:
    assert ProtocolError("x").code is Code.BAD_REQUEST
    assert ProtocolError("x", Code.EXPIRED).code is Code.EXPIRED
    assert str(ProtocolError("what happened")) == "what happened"


# --- fuzz ---------------------------------------------------------------------------

FUZZ_KEYS = [
    "_object_id", "_object_name", "_method_name", "_arguments", "args", "result", "_values",
    "error_code", "error_text", "exception_type", "traceback", "_what", "_schema_id",
    "_class_name", "_package_name", "name", "version", "protocol", "modules",
    "heartbeat_interval", "started", "stopping", "__bytes__", "", "x",
]
FUZZ_STRINGS = [
    "", "SCHEMA", "SCHEMA_ID", "func:module:", "func:module:test", "test", "aGk=", "***", "é",
    "\x00", "\ud800", "a\nb", "m" * 300, "NaN", "1",
]
FUZZ_OPCODES: list[Any] = [op.value for op in Opcode] * 3 + ["", "_bogus", 5, True, None]
FUZZ_VERSIONS: list[Any] = [1, 1, 1, 1, None, 2, 0, "1", True, 1.0]
FUZZ_DEADLINES: list[Any] = [DEADLINE_MS, DEADLINE_MS, None, 0, -1, 1.5, 2**62, 10**400, "x", True, math.nan, math.inf]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 7, 2**53, 10**400, -(10**400), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, 1.5, -2.5, 1e308, math.nan, math.inf, -math.inf, rng.random()])
    if kind in (4, 5):
        return rng.choice(FUZZ_STRINGS)
    if kind == 6:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 8)))
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 9:
        return {"__bytes__": random_value(rng, depth + 1)}
    return {rng.choice(FUZZ_KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def mutate(value: Any, rng: random.Random) -> Any:
    """``value`` with one randomly chosen node replaced, dropped or left as is."""
    if isinstance(value, dict) and value and rng.random() < 0.75:
        key = rng.choice(list(value))
        copy = dict(value)
        choice = rng.random()
        if choice < 0.2:
            del copy[key]
        elif choice < 0.4:
            copy[rng.choice(FUZZ_KEYS)] = random_value(rng)
        else:
            copy[key] = mutate(value[key], rng)
        return copy
    if isinstance(value, list) and value and rng.random() < 0.75:
        i = rng.randrange(len(value))
        copy = list(value)
        copy[i] = mutate(value[i], rng)
        return copy
    return random_value(rng)


def valid_bodies() -> list[tuple[str, Any]]:
    bodies = []
    for message in MESSAGES:
        env = codec.encode(message)
        bodies.append((env.type, json.loads(env.body)))
    return bodies


def fuzz_body(rng: random.Random, seeds: list[tuple[str, Any]]) -> tuple[Any, bytes]:
    opcode, body = rng.choice(seeds)
    shape = rng.random()
    if shape < 0.15:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
    elif shape < 0.25:
        depth = rng.choice([10, 500, 990, 1000, 2000, 20000])
        inner = json.dumps(body).encode()
        data = rng.choice([b"[", b'{"_what":', b'{"_arguments":{"result":']) * depth + inner
        data += rng.choice([b"]", b"}"]) * depth
    else:
        value = mutate(body, rng) if shape < 0.85 else random_value(rng)
        data = json.dumps(value).encode("utf-8", errors="surrogatepass")
        if rng.random() < 0.1 and data:
            cut = rng.randrange(len(data))
            data = data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1 :]
    return opcode, data


def test_fuzz_decode_only_raises_protocol_error() -> None:
    rng = random.Random(20240611)
    seeds = valid_bodies()
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(4000):
        opcode, body = fuzz_body(rng, seeds)
        headers: dict[str, Any] = {}
        for key, pool, fallback in (
            (names.H_OPCODE, FUZZ_OPCODES, opcode),
            (names.H_PROTOCOL, FUZZ_VERSIONS, names.PROTOCOL_VERSION),
            (names.H_DEADLINE, FUZZ_DEADLINES, DEADLINE_MS),
        ):
            value = rng.choice(pool) if rng.random() < 0.3 else fallback
            if value is not None:
                headers[key] = value
        if rng.random() < 0.2:
            headers[names.H_TARGET] = random_value(rng)
        env = Envelope(
            body=body,
            type=rng.choice(["", opcode, "_bogus"]),
            content_type=rng.choice([names.CONTENT_TYPE] * 8 + [None, "text/plain"]),
            headers=headers,
        )
        try:
            message = codec.decode(env, rng.choice([MAX] * 9 + [16]))
        except ProtocolError as exc:
            assert isinstance(exc.code, Code)
            assert str(exc)
            outcomes["refused"] += 1
        except Exception as exc:  # pragma: no cover - the failure report
            pytest.fail(f"case {case}: decode raised {type(exc).__name__}: {exc} for {env!r}"[:2000])
        else:
            assert type(message) in EXPECTED_OPCODES
            assert EXPECTED_OPCODES[type(message)].value in (env.headers.get(names.H_OPCODE), env.type)
            outcomes["decoded"] += 1
    # The generator must exercise both paths, or it tests nothing.
    assert outcomes["decoded"] > 300
    assert outcomes["refused"] > 1000


def test_fuzz_decoded_messages_encode_again() -> None:
    """Whatever decode accepts, an encoder can send back (the minion echoes args)."""
    rng = random.Random(7)
    seeds = valid_bodies()
    checked = 0
    for _ in range(2000):
        opcode, body = fuzz_body(rng, seeds)
        env = Envelope(body=body, content_type=names.CONTENT_TYPE, headers={names.H_OPCODE: opcode, names.H_DEADLINE: DEADLINE_MS})
        try:
            message = codec.decode(env, MAX)
        except ProtocolError:
            continue
        again = codec.decode(codec.encode(message), MAX)
        assert type(again) is type(message)
        checked += 1
    assert checked > 200


# --- indications, subscribe and cancel ------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        ProgressIndication("build", 2, 5, "compiling"),
        ProgressIndication("download"),
        LogIndication(["line 1", "", "ünïcode"]),
        SubscribeRequest("abc:m1", 1_900_000_000.0),
        CancelRequest("abc:m1", 1_900_000_000.0),
    ],
)
def test_new_kinds_round_trip(message: Any) -> None:
    env = codec.encode(message, correlation_id="c", reply_to="r")
    assert codec.decode(env, 1 << 20) == message


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"kind": "gossip"}, "unknown data indication kind"),
        ({"kind": "progress", "phase": 3}, "phase must be a string"),
        ({"kind": "progress", "phase": "x", "current": "2"}, "current must be an integer"),
        ({"kind": "progress", "phase": "x", "total": True}, "total must be an integer"),
        ({"kind": "log", "lines": "one line"}, "lines must be a list"),
        ({"kind": "log", "lines": [1]}, "lines must be a list"),
        ({"kind": "log", "lines": ["x"] * 10_001}, "at most"),
    ],
)
def test_bad_data_indications(values: dict, match: str) -> None:
    refused(raw({"_values": values}, Opcode.DATA_INDICATION), match=match)


@pytest.mark.parametrize("opcode", [Opcode.SUBSCRIBE_REQUEST, Opcode.CANCEL_REQUEST])
@pytest.mark.parametrize("body", [{}, {"_call_id": ""}, {"_call_id": 5}, {"_call_id": "x\n"}, []])
def test_call_id_is_required(opcode: Opcode, body: Any) -> None:
    refused(raw(body, opcode))


def test_a_follow_may_name_the_request_it_follows() -> None:
    named = SubscribeRequest("c1:m1", 1_900_000_000.0, "a" * 32)
    assert codec.decode(codec.encode(named, correlation_id="f", reply_to="r"), 1 << 20) == named
    bare = SubscribeRequest("c1:m1", named.deadline)
    env = codec.encode(bare, correlation_id="f", reply_to="r")
    assert "_request_id" not in json.loads(env.body) and codec.decode(env, 1 << 20) == bare


@pytest.mark.parametrize("value", ["", 5, "x\n", "y" * 1000, ["a"]])
def test_a_bad_request_id_in_a_follow_is_refused(value: Any) -> None:
    refused(raw({"_call_id": "c1:m1", "_request_id": value}, Opcode.SUBSCRIBE_REQUEST), match="_request_id")
