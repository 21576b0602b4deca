"""Encoding messages into envelopes and back, with every check an untrusted input needs.

Bodies are strict JSON (AMQP 0-9-1 has no map type; docs/protocol.md says why; no
NaN or Infinity, which other languages' parsers refuse). ``bytes`` travel as
``{"__bytes__": "<base64>"}``. Decoding never trusts the sender: size, content
type, protocol version, opcode and body shape are all checked, and every failure is a
:class:`ProtocolError` carrying the command-complete code to answer with.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid
from typing import Any, Callable, cast

from func_amqp.errors import Code, ProtocolError
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import (
    AgentHeartbeat,
    AgentInfo,
    AgentLocateRequest,
    AgentLocateResponse,
    CancelRequest,
    ExceptionResponse,
    JobEvent,
    JobState,
    JobTicket,
    LogIndication,
    Message,
    MethodRequest,
    MethodResponse,
    Opcode,
    ProgressIndication,
    QueryRequest,
    QueryResponse,
    QueryTarget,
    SubscribeRequest,
)

BYTES_TAG = "__bytes__"
KIND_PROGRESS = "progress"
KIND_LOG = "log"
KIND_JOB = "job"
MAX_JOB_ID_LENGTH = 512
MAX_LOG_LINES = 10_000
OBJECT_NAME_PREFIX = "func:module:"
MAX_NAME_LENGTH = 255


# --- JSON with bytes ------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"values of type {type(value).__name__} cannot travel")


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and BYTES_TAG in obj:
        encoded = obj[BYTES_TAG]
        if not isinstance(encoded, str):
            raise ProtocolError("a bytes value is not a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ProtocolError("a bytes value is not valid base64") from None
    return obj


def _reject_tag_lookalikes(value: Any) -> None:
    """A map whose only key is the bytes tag would arrive as bytes: refuse to send it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if len(item) == 1 and BYTES_TAG in item:
                raise TypeError(f"a map whose only key is {BYTES_TAG!r} cannot travel")
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def dumps(value: Any) -> bytes:
    """Serialize plain data; raises TypeError for values that cannot travel."""
    text = json.dumps(value, default=_default, separators=(",", ":"), allow_nan=False)
    if f'"{BYTES_TAG}"' in text:
        _reject_tag_lookalikes(value)
    return text.encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_hook=_object_hook, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ProtocolError("the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the body is not valid JSON: {exc}") from None


# --- encoding ---------------------------------------------------------------------------


def _role(opcode: Opcode) -> str:
    if opcode in _REQUEST_OPCODES:
        return names.ROLE_REQUEST
    if opcode in (Opcode.AGENT_HEARTBEAT, Opcode.DATA_INDICATION):
        return names.ROLE_INDICATION
    return names.ROLE_RESPONSE


def _agent_values(agent: AgentInfo) -> dict[str, Any]:
    return {
        "name": agent.name,
        "version": agent.version,
        "protocol": agent.protocol,
        "modules": agent.modules,
        "heartbeat_interval": agent.heartbeat_interval,
        "started": agent.started,
        "stopping": agent.stopping,
    }


def _body(message: Message) -> tuple[Opcode, Any]:
    match message:
        case MethodRequest():
            request: dict[str, Any] = {
                "_object_id": {"_object_name": OBJECT_NAME_PREFIX + message.module},
                "_method_name": message.method,
                "_arguments": {"args": message.args},
            }
            if message.job is not None:
                request["_job"] = {"id": message.job.job_id, "owner": message.job.owner}
            return Opcode.METHOD_REQUEST, request
        case MethodResponse():
            return Opcode.METHOD_RESPONSE, {"_arguments": {"result": message.result}}
        case ExceptionResponse():
            return Opcode.EXCEPTION, {
                "_values": {
                    "error_code": message.code,
                    "error_text": message.text,
                    "exception_type": message.exception_type,
                    "traceback": message.traceback,
                }
            }
        case QueryRequest():
            body: dict[str, Any] = {"_what": message.what.value}
            if message.module:
                body["_schema_id"] = {"_package_name": "func", "_class_name": message.module}
            return Opcode.QUERY_REQUEST, body
        case QueryResponse():
            return Opcode.QUERY_RESPONSE, message.data
        case AgentLocateRequest():
            return Opcode.AGENT_LOCATE_REQUEST, {"_name": message.name} if message.name else {}
        case AgentLocateResponse():
            return Opcode.AGENT_LOCATE_RESPONSE, {"_values": _agent_values(message.agent)}
        case AgentHeartbeat():
            return Opcode.AGENT_HEARTBEAT, {"_values": _agent_values(message.agent)}
        case ProgressIndication():
            return Opcode.DATA_INDICATION, {
                "_values": {
                    "kind": KIND_PROGRESS,
                    "phase": message.phase,
                    "current": message.current,
                    "total": message.total,
                    "message": message.message,
                }
            }
        case LogIndication():
            return Opcode.DATA_INDICATION, {"_values": {"kind": KIND_LOG, "lines": message.lines}}
        case JobEvent():
            return Opcode.DATA_INDICATION, {"_values": job_event_values(message)}
        case SubscribeRequest():
            body = {"_call_id": message.call_id}
            if message.request_id is not None:
                body["_request_id"] = message.request_id
            return Opcode.SUBSCRIBE_REQUEST, body
        case CancelRequest():
            return Opcode.CANCEL_REQUEST, {"_call_id": message.call_id}
    raise TypeError(f"not a protocol message: {message!r}")


def job_event_values(event: JobEvent) -> dict[str, Any]:
    """The event as plain JSON data: its wire form, also how ledgers and stores keep it."""
    values: dict[str, Any] = {
        "kind": KIND_JOB,
        "job_id": event.job_id,
        "minion": event.minion,
        "state": event.state.value,
        "at": event.at,
        "attempt": event.attempt,
        "detail": event.detail,
    }
    if event.result is not None:
        opcode, body = _body(event.result)
        values["result"] = {"opcode": opcode.value, "body": body}
    if event.progress is not None:
        values["progress"] = _body(event.progress)[1]["_values"]
    return values


def _deadline(message: Message) -> float | None:
    deadline = getattr(message, "deadline", None)
    return deadline or None


def encode(
    message: Message,
    *,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    agent: str | None = None,
    target: str | None = None,
    owner: str | None = None,
) -> Envelope:
    """The envelope for ``message``; raises TypeError if its data cannot travel.

    ``target`` names the minion a request is for (signed, so it cannot be replayed to
    another); a method request carries its own. ``owner`` routes a job event to its
    owner's queue (a job request carries its own).
    """
    opcode, body = _body(message)
    headers: dict[str, Any] = {
        names.H_OPCODE: opcode.value,
        names.H_ROLE: _role(opcode),
        names.H_PROTOCOL: names.PROTOCOL_VERSION,
    }
    deadline = _deadline(message)
    if deadline is not None:
        headers[names.H_DEADLINE] = int(deadline * 1000)
    target = target or (message.target if isinstance(message, MethodRequest) else None)
    if target:
        headers[names.H_TARGET] = target
    if agent:
        headers[names.H_AGENT] = agent
    owner = owner or (message.job.owner if isinstance(message, MethodRequest) and message.job else None)
    if owner:
        headers[names.H_OWNER] = owner
    return Envelope(
        body=dumps(body),
        type=opcode.value,
        message_id=uuid.uuid4().hex,
        correlation_id=correlation_id,
        reply_to=reply_to,
        timestamp=time.time(),
        deadline=deadline,
        content_type=names.CONTENT_TYPE,
        app_id=names.APP_ID,
        headers=headers,
    )


# --- decoding ---------------------------------------------------------------------------


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError(f"malformed message: {what}")


def _map(value: Any, what: str) -> dict[str, Any]:
    _require(isinstance(value, dict), f"{what} must be a map")
    return value


def _name(value: Any, what: str) -> str:
    _require(
        isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable(),
        f"{what} must be a non-empty printable string of at most {MAX_NAME_LENGTH} characters",
    )
    return value


def _number(value: Any, what: str) -> float:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} must be a number"
    )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    _require(math.isfinite(number), f"{what} must be a finite number")
    return number


def _decode_method_request(body: Any, env: Envelope) -> MethodRequest:
    body = _map(body, "the body")
    object_name = _name(_map(body.get("_object_id"), "_object_id").get("_object_name"), "_object_name")
    _require(object_name.startswith(OBJECT_NAME_PREFIX), f"_object_name must start with {OBJECT_NAME_PREFIX!r}")
    module = _name(object_name[len(OBJECT_NAME_PREFIX) :], "the module name")
    method = _name(body.get("_method_name"), "_method_name")
    args = _map(body.get("_arguments"), "_arguments").get("args")
    _require(isinstance(args, list), "_arguments.args must be a list")
    _require(env.deadline is not None, f"a method request needs the {names.H_DEADLINE} header")
    target = env.headers.get(names.H_TARGET, "")
    job = None
    if "_job" in body:
        ticket = _map(body["_job"], "_job")
        job = JobTicket(_job_id(ticket.get("id")), _owner(ticket.get("owner")))
    return MethodRequest(module, method, cast(list[Any], args), float(env.deadline or 0), str(target), job)


def _job_id(value: Any) -> str:
    _require(
        isinstance(value, str) and 0 < len(value) <= MAX_JOB_ID_LENGTH and value.isprintable(),
        f"a job id must be a non-empty printable string of at most {MAX_JOB_ID_LENGTH} characters",
    )
    return value


def _owner(value: Any) -> str:
    _require(isinstance(value, str) and names.valid_minion_name(value), "a job owner must be a name like a minion's")
    return value


def _decode_exception(body: Any, env: Envelope) -> ExceptionResponse:
    values = _map(_map(body, "the body").get("_values"), "_values")
    code = values.get("error_code")
    _require(isinstance(code, int) and not isinstance(code, bool), "error_code must be an integer")
    text = values.get("error_text", "")
    _require(isinstance(text, str), "error_text must be a string")
    etype = values.get("exception_type", "")
    trace = values.get("traceback", "")
    _require(isinstance(etype, str) and isinstance(trace, str), "exception details must be strings")
    return ExceptionResponse(cast(int, code), text, etype, trace)


def _decode_query_request(body: Any, env: Envelope) -> QueryRequest:
    body = _map(body, "the body")
    try:
        what = QueryTarget(body.get("_what"))
    except ValueError:
        raise ProtocolError(f"unknown query target {body.get('_what')!r}") from None
    module = ""
    if what is QueryTarget.SCHEMA:
        schema = _map(body.get("_schema_id"), "_schema_id")
        module = _name(schema.get("_class_name"), "_schema_id._class_name")
    return QueryRequest(what, module, env.deadline or 0.0)


def _decode_agent(body: Any, env: Envelope) -> AgentInfo:
    values = _map(_map(body, "the body").get("_values"), "_values")
    name = _name(values.get("name"), "the agent name")
    modules = values.get("modules", [])
    _require(isinstance(modules, list) and all(isinstance(m, str) for m in modules), "modules must be a list of names")
    version = values.get("version", "")
    _require(isinstance(version, str), "version must be a string")
    protocol = values.get("protocol", 0)
    _require(isinstance(protocol, int) and not isinstance(protocol, bool), "protocol must be an integer")
    stopping = values.get("stopping", False)
    _require(isinstance(stopping, bool), "stopping must be a boolean")
    return AgentInfo(
        name=name,
        version=version,
        protocol=protocol,
        modules=modules,
        heartbeat_interval=_number(values.get("heartbeat_interval", 0), "heartbeat_interval"),
        started=_number(values.get("started", 0), "started"),
        stopping=stopping,
    )


def _optional_int(value: Any, what: str) -> int | None:
    _require(value is None or (isinstance(value, int) and not isinstance(value, bool)), f"{what} must be an integer or null")
    return value


def _text(value: Any, what: str) -> str:
    _require(isinstance(value, str), f"{what} must be a string")
    return value


def _decode_data_indication(body: Any, env: Envelope) -> ProgressIndication | LogIndication | JobEvent:
    values = _map(_map(body, "the body").get("_values"), "_values")
    kind = values.get("kind")
    if kind == KIND_PROGRESS:
        return ProgressIndication(
            phase=_text(values.get("phase", ""), "phase"),
            current=_optional_int(values.get("current"), "current"),
            total=_optional_int(values.get("total"), "total"),
            message=_text(values.get("message", ""), "message"),
        )
    if kind == KIND_LOG:
        lines = values.get("lines")
        _require(
            isinstance(lines, list) and len(lines) <= MAX_LOG_LINES and all(isinstance(x, str) for x in lines),
            f"lines must be a list of at most {MAX_LOG_LINES} strings",
        )
        return LogIndication(cast(list[str], lines))
    if kind == KIND_JOB:
        return job_event_from_values(values, env)
    raise ProtocolError(f"unknown data indication kind {kind!r}")


_JOB_RESULT_OPCODES = {Opcode.METHOD_RESPONSE, Opcode.EXCEPTION}


def job_result_from_values(carried: Any, env: Envelope | None = None) -> MethodResponse | ExceptionResponse:
    """A job's result as :func:`job_event_values` carries it; ProtocolError if malformed."""
    carried = _map(carried, "result")
    try:
        opcode = Opcode(carried.get("opcode"))
    except ValueError:
        opcode = None
    _require(opcode in _JOB_RESULT_OPCODES, "a job result must be a method response or an exception")
    assert opcode is not None
    decoded = _DECODERS[opcode](carried.get("body"), env or Envelope(body=b""))
    assert isinstance(decoded, (MethodResponse, ExceptionResponse))
    return decoded


def job_event_from_values(values: dict[str, Any], env: Envelope | None = None) -> JobEvent:
    """The event in ``values`` (see :func:`job_event_values`); ProtocolError if malformed."""
    env = env or Envelope(body=b"")
    values = _map(values, "a job event")
    try:
        state = JobState(values.get("state"))
    except ValueError:
        raise ProtocolError(f"unknown job state {values.get('state')!r}") from None
    attempt = values.get("attempt", 1)
    _require(isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1, "attempt must be a positive integer")
    result = job_result_from_values(values["result"], env) if "result" in values else None
    progress = None
    if "progress" in values:
        found = _decode_data_indication({"_values": {**_map(values["progress"], "progress"), "kind": KIND_PROGRESS}}, env)
        assert isinstance(found, ProgressIndication)
        progress = found
    return JobEvent(
        job_id=_job_id(values.get("job_id")),
        minion=_name(values.get("minion"), "minion"),
        state=state,
        at=_number(values.get("at", 0), "at"),
        attempt=attempt,
        result=result,
        progress=progress,
        detail=_text(values.get("detail", ""), "detail"),
    )


MAX_CALL_ID_LENGTH = 2 * MAX_NAME_LENGTH  # "<call id>:<minion name>"


def _id_field(body: Any, key: str, *, optional: bool = False) -> str | None:
    """A call or request id in a follow or cancel body (absent allowed if ``optional``)."""
    value = _map(body, "the body").get(key)
    _require(
        (optional and value is None)
        or (isinstance(value, str) and 0 < len(value) <= MAX_CALL_ID_LENGTH and value.isprintable()),
        f"{key} must be a non-empty printable string of at most {MAX_CALL_ID_LENGTH} characters",
    )
    return cast("str | None", value)


def _call_id(body: Any) -> str:
    return cast(str, _id_field(body, "_call_id"))


def _request_id(body: Any) -> str | None:
    return _id_field(body, "_request_id", optional=True)


def _decode_query_response(body: Any, env: Envelope) -> QueryResponse:
    _require(isinstance(body, list), "a query response body must be a list")
    return QueryResponse(body)


def _located_name(body: Any) -> str:
    """The agent a locate asks for; other bodies (QMF predicates) are not interpreted."""
    name = body.get("_name", "") if isinstance(body, dict) else ""
    if not isinstance(name, str):
        raise ProtocolError("malformed message: '_name' must be a string")
    return name


_DECODERS: dict[Opcode, Callable[[Any, Envelope], Message]] = {
    Opcode.METHOD_REQUEST: _decode_method_request,
    Opcode.METHOD_RESPONSE: lambda body, env: MethodResponse(
        _map(_map(body, "the body").get("_arguments"), "_arguments").get("result")
    ),
    Opcode.EXCEPTION: _decode_exception,
    Opcode.QUERY_REQUEST: _decode_query_request,
    Opcode.QUERY_RESPONSE: _decode_query_response,
    Opcode.AGENT_LOCATE_REQUEST: lambda body, env: AgentLocateRequest(env.deadline or 0.0, _located_name(body)),
    Opcode.AGENT_LOCATE_RESPONSE: lambda body, env: AgentLocateResponse(_decode_agent(body, env)),
    Opcode.AGENT_HEARTBEAT: lambda body, env: AgentHeartbeat(_decode_agent(body, env)),
    Opcode.DATA_INDICATION: _decode_data_indication,
    Opcode.SUBSCRIBE_REQUEST: lambda body, env: SubscribeRequest(_call_id(body), env.deadline or 0.0, _request_id(body)),
    Opcode.CANCEL_REQUEST: lambda body, env: CancelRequest(_call_id(body), env.deadline or 0.0),
}

_REQUEST_OPCODES = frozenset(
    {
        Opcode.METHOD_REQUEST,
        Opcode.QUERY_REQUEST,
        Opcode.AGENT_LOCATE_REQUEST,
        Opcode.SUBSCRIBE_REQUEST,
        Opcode.CANCEL_REQUEST,
    }
)


def opcode_of(env: Envelope) -> Opcode:
    """The envelope's opcode; raises ProtocolError(UNKNOWN_OPCODE) for others."""
    raw = env.headers.get(names.H_OPCODE) or env.type
    try:
        return Opcode(raw)
    except ValueError:
        raise ProtocolError(f"unknown opcode {raw!r}", Code.UNKNOWN_OPCODE) from None


def check_envelope(env: Envelope, max_bytes: int) -> Opcode:
    """Checks that need no body parsing: size, content type, version, opcode."""
    if len(env.body) > max_bytes:
        raise ProtocolError(
            f"the message is {len(env.body)} bytes, more than the {max_bytes} accepted",
            Code.MESSAGE_TOO_LARGE,
        )
    if env.content_type not in (None, "", names.CONTENT_TYPE):
        raise ProtocolError(f"unsupported content type {env.content_type!r}, expected {names.CONTENT_TYPE}")
    version = env.headers.get(names.H_PROTOCOL)
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ProtocolError(f"the {names.H_PROTOCOL} header must be an integer")
    if version is not None and version != names.PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this peer speaks {names.PROTOCOL_VERSION})",
            Code.UNSUPPORTED_VERSION,
        )
    deadline = env.headers.get(names.H_DEADLINE)
    if deadline is not None:
        _require(
            isinstance(deadline, int) and not isinstance(deadline, bool) and abs(deadline) < 2**63,
            f"the {names.H_DEADLINE} header must be integer milliseconds since the epoch",
        )
        env.deadline = cast(int, deadline) / 1000
    return opcode_of(env)


def decode(env: Envelope, max_bytes: int) -> Message:
    """The message in ``env``; raises ProtocolError with the code to answer with."""
    opcode = check_envelope(env, max_bytes)
    return _DECODERS[opcode](loads(env.body), env)


def is_request(opcode: Opcode) -> bool:
    return opcode in _REQUEST_OPCODES
