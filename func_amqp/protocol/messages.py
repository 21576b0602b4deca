"""The protocol's message kinds as plain data, named after QMF v2's opcodes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Opcode(str, enum.Enum):
    """``qmf.opcode`` values this protocol uses (QMF v2 names; docs/protocol.md)."""

    METHOD_REQUEST = "_method_request"
    METHOD_RESPONSE = "_method_response"
    EXCEPTION = "_exception"
    QUERY_REQUEST = "_query_request"
    QUERY_RESPONSE = "_query_response"
    AGENT_LOCATE_REQUEST = "_agent_locate_request"
    AGENT_LOCATE_RESPONSE = "_agent_locate_response"
    AGENT_HEARTBEAT = "_agent_heartbeat_indication"
    DATA_INDICATION = "_data_indication"
    SUBSCRIBE_REQUEST = "_subscribe_request"
    CANCEL_REQUEST = "_cancel_request"  # func-amqp's own: QMF has no method cancel


class QueryTarget(str, enum.Enum):
    """What a ``_query_request`` asks for (QMF's ``_what``)."""

    SCHEMA_ID = "SCHEMA_ID"  # the module names: func's list_modules
    SCHEMA = "SCHEMA"  # one module's methods and arguments: func's get_method_args


@dataclass(frozen=True)
class JobTicket:
    """What makes a method request a job: an id that is also its idempotency key, and the
    owner whose durable event queue learns every state of it. Signed with the request."""

    job_id: str
    owner: str


@dataclass(frozen=True)
class MethodRequest:
    """Call ``module.method(*args)`` on the target minion before ``deadline``."""

    module: str
    method: str
    args: list[Any]
    deadline: float
    target: str = ""
    job: JobTicket | None = None

    @property
    def full_name(self) -> str:
        return f"{self.module}.{self.method}"


@dataclass(frozen=True)
class MethodResponse:
    result: Any


@dataclass(frozen=True)
class ExceptionResponse:
    """QMF's ``_exception``: the command-complete code and text, plus func's details."""

    code: int
    text: str
    exception_type: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class QueryRequest:
    what: QueryTarget
    module: str = ""
    deadline: float = 0.0


@dataclass(frozen=True)
class QueryResponse:
    data: list[Any]


@dataclass(frozen=True)
class AgentLocateRequest:
    deadline: float = 0.0
    name: str = ""
    """Only the minion of this name answers (a presence probe), even one that is not
    discoverable; empty: every minion that hears it."""


@dataclass(frozen=True)
class AgentInfo:
    """What a minion says of itself in locate responses and heartbeats."""

    name: str
    version: str
    protocol: int
    modules: list[str] = field(default_factory=list)
    heartbeat_interval: float = 0.0
    started: float = 0.0
    stopping: bool = False


@dataclass(frozen=True)
class AgentLocateResponse:
    agent: AgentInfo


@dataclass(frozen=True)
class AgentHeartbeat:
    agent: AgentInfo


@dataclass(frozen=True)
class ProgressIndication:
    """Where a running call stands; sent to its caller and followers."""

    phase: str
    current: int | None = None
    total: int | None = None
    message: str = ""


@dataclass(frozen=True)
class LogIndication:
    """Log lines a running call produced, in order."""

    lines: list[str]


@dataclass(frozen=True)
class SubscribeRequest:
    """Follow a running call: its indications and its result come to the sender too."""

    call_id: str
    deadline: float = 0.0
    request_id: str | None = None
    """The ``message_id`` of the request that started the call, when the sender made it:
    the call of that id is followed only if it is that request's (call ids may be reused)."""


@dataclass(frozen=True)
class CancelRequest:
    """Cancel a running call; answered with ``_method_response`` whose result is true or false."""

    call_id: str
    deadline: float = 0.0


class JobState(str, enum.Enum):
    """Where one minion stands in a job (docs/protocol.md "Jobs")."""

    SENT = "sent"  # recorded by the submitter: in the broker, not yet taken
    NEVER_REACHED = "never_reached"  # no queue for it: unknown minion, or pool without members
    ACCEPTED = "accepted"  # taken by a minion, waiting for a free slot
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"  # its time to live passed before it could start
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"  # given up by the broker after too many deliveries

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset(
    {JobState.NEVER_REACHED, JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED, JobState.DEAD_LETTERED}
)


@dataclass(frozen=True)
class JobEvent:
    """A minion's new state in a job, published persistently to the job's owner."""

    job_id: str
    minion: str
    state: JobState
    at: float
    attempt: int = 1
    """Which delivery of the job this is (more than 1: the broker redelivered it)."""
    result: MethodResponse | ExceptionResponse | None = None
    progress: ProgressIndication | None = None
    detail: str = ""

    @property
    def redelivered(self) -> bool:
        return self.attempt > 1


Request = MethodRequest | QueryRequest | AgentLocateRequest | SubscribeRequest | CancelRequest
Indication = ProgressIndication | LogIndication
Reply = MethodResponse | ExceptionResponse | QueryResponse | AgentLocateResponse | ProgressIndication | LogIndication
Message = Request | Reply | AgentHeartbeat | JobEvent
