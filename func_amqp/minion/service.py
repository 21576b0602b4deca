"""The minion's message loop: untrusted requests in, module calls off the loop, replies out.

Guarantees (docs/protocol.md):
- every delivery is settled: answered with a response or an ``_exception`` when it has a
  reply address, otherwise dead-lettered; no message can stop the service;
- a request is acknowledged only once it is accepted (decoded, in time, slot free), and
  an accepted request's reply is delivered even across a broker restart, retried until
  the caller's deadline;
- a request whose deadline has passed is not started;
- module methods run in a thread pool so heartbeats and other calls keep flowing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import func_amqp
from func_amqp.errors import (
    EXCEPTION_CODES,
    AccessToMethodDenied,
    CallCancelled,
    Code,
    FuncException,
    ProtocolError,
    SecurityError,
    TransportError,
    qualified_name,
)
from func_amqp.minion import audit, progress
from func_amqp.minion.audit import AuditLog
from func_amqp.minion.calls import Follower, InFlightCall
from func_amqp.minion.progress import CallContext
from func_amqp.minion.recent import KEEP_SECONDS, FinishedCall, RecentReplies
from func_amqp.minion.security import UNAUTHENTICATED, Caller, Gate, OpenAccess
from func_amqp.minion.server import AmqpInterface
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import (
    AgentHeartbeat,
    AgentInfo,
    AgentLocateRequest,
    AgentLocateResponse,
    CancelRequest,
    ExceptionResponse,
    MethodRequest,
    MethodResponse,
    QueryRequest,
    QueryResponse,
    QueryTarget,
    Reply,
    Request,
    SubscribeRequest,
)
from func_amqp.security.pair_keys import PairKey
from func_amqp.transport.base import Delivery, Transport

_log = logging.getLogger(__name__)

_STDLIB = str(Path(concurrent.futures.__file__).resolve().parent)

STOP_STEP_TIMEOUT = 5.0
"""Seconds a shutdown step may wait for the broker (it may be away)."""

STOP_CANCEL_WAIT = 5.0
"""Seconds calls cancelled at shutdown get to answer before funcd exits anyway."""

CANCEL_GRACE = 30.0
"""Seconds a cancelled method has to stop (a process group gets SIGINT, TERM at +10 s and
KILL at +20 s) before its callers are told CANCELLED regardless."""

REPLY_RETRY_INTERVAL = 0.5
REPLY_GRACE = 5.0
"""Seconds past the caller's deadline a finished reply is still offered: a reply
slightly late beats a result thrown away."""


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    max_concurrent_calls: int = 16
    heartbeat_interval: float = 30.0
    max_message_bytes: int = 16 * 1024 * 1024
    job_slots: int = 0
    """Call slots of the builder pools this minion serves, beyond ``max_concurrent_calls``."""
    discoverable: bool = True
    """False for agents that are not minions (the certmaster): locate gets no answer,
    so they never appear among the minions a spec like ``*`` names."""


_MINION_PACKAGE = str(Path(__file__).resolve().parent)


def _module_traceback(exc: BaseException) -> str:
    """The traceback from the module's first frame: the minion's own frames say nothing."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(_MINION_PACKAGE)
        or tb.tb_frame.f_code.co_filename.startswith(_STDLIB)
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def exception_reply(exc: BaseException, with_traceback: bool = True) -> ExceptionResponse:
    """func's REMOTE_ERROR details for an exception raised on the minion."""
    code = Code.METHOD_FAILED
    for exc_type, mapped in EXCEPTION_CODES.items():
        if isinstance(exc, exc_type):
            code = mapped
            break
    trace = _module_traceback(exc) if with_traceback else ""
    return ExceptionResponse(int(code), str(exc), qualified_name(type(exc)), trace)


def code_reply(code: Code, text: str) -> ExceptionResponse:
    return ExceptionResponse(int(code), text)


def _action(request: Request) -> str:
    """How the audit log names a request."""
    match request:
        case MethodRequest():
            return request.full_name
        case QueryRequest():
            return f"query:{request.what.value}:{request.module}" if request.module else f"query:{request.what.value}"
        case SubscribeRequest():
            return f"follow:{request.call_id}"
        case CancelRequest():
            return f"cancel:{request.call_id}"
    return "locate"


def _outcome(reply: Reply) -> str:
    if isinstance(reply, ExceptionResponse):
        return audit.CANCELLED if reply.code == Code.CANCELLED else audit.error(reply.exception_type or Code(reply.code).name)
    return audit.OK


def _invoke(method: Any, request: MethodRequest, context: CallContext) -> Reply:
    """Run a module method in a worker thread; whatever it raises becomes its answer.

    BaseException too: a module calling sys.exit() must not take the minion down.
    A failure after the caller cancelled is reported as the cancel it most likely is.
    """
    with progress.bound(context):
        try:
            return MethodResponse(method(*request.args))
        except BaseException as exc:  # noqa: B036 - see docstring
            _log.info("%s failed: %s: %s", request.full_name, type(exc).__name__, exc)
            if context.cancel_event.is_set() and not isinstance(exc, CallCancelled):
                return code_reply(Code.CANCELLED, f"the call was cancelled ({type(exc).__name__}: {exc})")
            return exception_reply(exc)


class JobTaker(Protocol):
    """What the service needs of its job worker (func_amqp.minion.jobs.JobWorker)."""

    async def start(self) -> None: ...

    async def pause(self) -> None: ...

    def cancel(self, call_id: str, caller: Caller) -> bool: ...


class MinionService:
    """Serves one minion name on one transport."""

    def __init__(
        self,
        transport: Transport,
        interface: AmqpInterface,
        settings: ServiceSettings,
        *,
        gate: Gate | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.transport = transport
        self.interface = interface
        self.settings = settings
        self.gate: Gate = gate or OpenAccess()
        self.audit = audit or AuditLog(None)
        self.started = time.time()
        self._slots = asyncio.Semaphore(settings.max_concurrent_calls)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_calls + settings.job_slots, thread_name_prefix="func-call"
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._calls: dict[str, InFlightCall] = {}
        self._recent = RecentReplies()
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self.jobs: JobTaker | None = None
        """Takes durable jobs when the minion serves them (func_amqp.minion.jobs)."""

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.transport.serve_minion(
            self.settings.name, self._on_delivery, prefetch=self.settings.max_concurrent_calls
        )
        if self.jobs is not None:
            await self.jobs.start()
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        _log.info("minion %s serving %d modules", self.settings.name, len(self.interface.modules))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking requests, announce it, let running calls finish for ``grace`` s."""
        self._stopping = True
        # both wait for the broker while it is away: bounded, the shutdown goes on
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.transport.stop_serving(), STOP_STEP_TIMEOUT)
        if self.jobs is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.jobs.pause(), STOP_STEP_TIMEOUT)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._announce(stopping=True), STOP_STEP_TIMEOUT)
        if self._inflight:
            _log.info("waiting up to %.0fs for %d running calls", grace, len(self._inflight))
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            if pending:
                _log.warning("cancelling %d calls still running after %.0fs", len(self._calls), grace)
                for call in list(self._calls.values()):
                    call.context.cancel()  # ends their child process groups
                _, pending = await asyncio.wait(pending, timeout=STOP_CANCEL_WAIT)
                if pending:  # funcd exits now: leave no child process behind
                    for call in list(self._calls.values()):
                        call.context.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def call_slots_full(self) -> bool:
        return self._slots.locked()

    async def acquire_call_slot(self) -> None:
        await self._slots.acquire()

    def release_call_slot(self) -> None:
        self._slots.release()

    @property
    def busy(self) -> bool:
        """True while module methods still run (threads cannot be stopped)."""
        return any(not task.done() for task in self._inflight)

    def agent_info(self, stopping: bool = False) -> AgentInfo:
        return AgentInfo(
            name=self.settings.name,
            version=func_amqp.__version__,
            protocol=names.PROTOCOL_VERSION,
            modules=self.interface.list_modules(),
            heartbeat_interval=self.settings.heartbeat_interval,
            started=self.started,
            stopping=stopping,
        )

    async def _announce(self, stopping: bool = False) -> None:
        env = codec.encode(AgentHeartbeat(self.agent_info(stopping)), agent=self.settings.name)
        self.gate.sign(env)
        try:
            await self.transport.publish_event(names.heartbeat_key(self.settings.name), env)
        except TransportError as exc:
            _log.debug("heartbeat not sent: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._announce()
            self._recent.prune()  # kept replies go when due, not only at the next call
            await asyncio.sleep(self.settings.heartbeat_interval)

    # --- receiving ------------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        """Entry point for every message: nothing raised here may escape."""
        try:
            await self._handle(delivery)
        except Exception as exc:  # the last line of defence: answer or dead-letter, keep serving
            _log.exception("unexpected failure handling a message")
            env = delivery.envelope
            if env.reply_to:
                await delivery.ack()  # a no-op if it was already settled
                reply = code_reply(Code.INTERNAL_ERROR, f"the minion failed handling the request: {exc!r}")
                await self._send_reply(env.reply_to, env.correlation_id, reply, env.deadline or 0, None)
            else:
                await delivery.reject()

    async def _handle(self, delivery: Delivery) -> None:
        env = delivery.envelope
        caller = UNAUTHENTICATED
        try:
            opcode = codec.check_envelope(env, self.settings.max_message_bytes)
            if not codec.is_request(opcode):
                raise ProtocolError(f"{opcode.value} is not a request a minion serves", Code.UNKNOWN_OPCODE)
            request = codec.decode(env, self.settings.max_message_bytes)
            caller = self.gate.authenticate(env, opcode)
        except (ProtocolError, SecurityError) as exc:
            await self._refuse(delivery, exc.code, str(exc), caller=caller)
            return
        assert isinstance(request, (MethodRequest, QueryRequest, AgentLocateRequest, SubscribeRequest, CancelRequest))
        action = _action(request)
        args = request.args if isinstance(request, MethodRequest) else None
        deadline = getattr(request, "deadline", 0.0)
        if deadline and deadline < time.time():
            await self._refuse(delivery, Code.EXPIRED, "the request's deadline passed before it could start", caller=caller, action=action, args=args)
            return
        if self._stopping and isinstance(request, MethodRequest):
            await self._refuse(delivery, Code.SHUTTING_DOWN, "the minion is stopping; call again later", caller=caller, action=action, args=args)
            return
        # what a follow follows is decided once, before any await: the ACL check is on it
        followed = self._followed(request) if isinstance(request, SubscribeRequest) else None
        guarded = self._guarded_method(request, followed)
        if guarded is not None:
            try:
                self.gate.authorize(caller, guarded)
            except AccessToMethodDenied as exc:
                await self._refuse(delivery, Code.ACCESS_DENIED, str(exc), caller=caller, action=action, args=args, outcome=audit.denied(Code.ACCESS_DENIED))
                return
        if isinstance(request, MethodRequest):
            if request.job is not None:  # a captured job replayed as a call: jobs run from job queues only
                await self._refuse(delivery, Code.BAD_REQUEST, "a job request belongs in a job queue, not in a minion's call queue", caller=caller, action=action, args=args)
                return
            await self._accept_call(delivery, request, caller)
            return
        await delivery.ack()
        self.audit.record(caller.key, action, [], env.correlation_id or "-", audit.OK)
        if isinstance(request, SubscribeRequest):
            await self._subscribe(env, request, followed, caller.reply_key)
            return
        if isinstance(request, AgentLocateRequest):
            if request.name != self.settings.name and (request.name or not self.settings.discoverable):
                return  # a probe for another minion, or a broadcast this one keeps out of
            answer: Reply = AgentLocateResponse(self.agent_info())
        elif isinstance(request, CancelRequest):
            answer = self._cancel(request, caller)
        else:  # schema answers run module code (register_method_args): off the loop,
            # and not in the call pool, which long calls may fill
            answer = await asyncio.to_thread(self._answer, request)
        await self._send_reply(env.reply_to, env.correlation_id, answer, deadline, caller.reply_key)

    def _guarded_method(self, request: Request, followed: InFlightCall | FinishedCall | None) -> str | None:
        """The method the ACLs must grant for ``request`` (None: any signed caller);
        for a follow, that of the call it follows."""
        match request:
            case MethodRequest():
                return request.full_name
            case QueryRequest(what=QueryTarget.SCHEMA_ID):
                return "system.list_modules"
            case QueryRequest():
                return f"{request.module}.get_method_args"
            case SubscribeRequest():
                return followed.full_name if followed is not None else None
            case CancelRequest():
                call = self._calls.get(request.call_id)
                return call.full_name if call is not None else None
        return None

    async def _refuse(
        self,
        delivery: Delivery,
        code: Code,
        text: str,
        *,
        caller: Caller = UNAUTHENTICATED,
        action: str = "-",
        args: list[Any] | None = None,
        outcome: str | None = None,
    ) -> None:
        env = delivery.envelope
        self.audit.record(caller.key, action, args or [], env.correlation_id or "-", outcome or audit.refused(code), text)
        if env.reply_to:
            _log.warning("refused a message (%s): %s", code.name, text)
            await delivery.ack()
            # not the message's own deadline: it may be a stranger's far-future one
            await self._send_reply(env.reply_to, env.correlation_id, code_reply(code, text), 0, caller.reply_key)
        else:
            _log.warning("dead-lettered a message without reply address (%s): %s", code.name, text)
            await delivery.reject()

    def _answer(self, request: QueryRequest) -> Reply:
        if request.what is QueryTarget.SCHEMA_ID:
            return QueryResponse(
                [{"_package_name": "func", "_class_name": m} for m in self.interface.list_modules()]
            )
        try:
            methods = self.interface.get_method_args(request.module)
        except FuncException as exc:
            return exception_reply(exc, with_traceback=False)
        except Exception as exc:  # a module's broken registration is its caller's answer
            return exception_reply(exc)
        return QueryResponse(
            [{"_schema_id": {"_package_name": "func", "_class_name": request.module}, "_methods": methods}]
        )

    # --- calls ----------------------------------------------------------------------

    async def _accept_call(self, delivery: Delivery, request: MethodRequest, caller: Caller) -> None:
        env = delivery.envelope
        try:
            method = self.interface.get_dispatch_method(request.full_name)
            method.check_arguments(request.args)
        except FuncException as exc:  # expected refusals: no traceback to show
            await delivery.ack()
            reply = exception_reply(exc, with_traceback=False)
            self.audit.record(caller.key, request.full_name, request.args, env.correlation_id or "-", audit.error(reply.exception_type), str(exc))
            await self._send_reply(env.reply_to, env.correlation_id, reply, request.deadline, caller.reply_key)
            return
        await self._slots.acquire()
        refusal = self._refusal_after_wait(request, env)
        if refusal is not None:
            self._slots.release()
            await self._refuse(delivery, *refusal, caller=caller, action=request.full_name, args=request.args)
            return
        call_id = env.correlation_id or env.message_id or uuid.uuid4().hex
        call = InFlightCall(call_id, request.full_name, self.send_indication, request_id=env.message_id)
        if env.reply_to:
            call.follow(Follower(env.reply_to, call_id, caller.reply_key))
        self._calls[call_id] = call  # before any await: a duplicate id is refused above
        try:
            await delivery.ack()
        except BaseException:
            self._calls.pop(call_id, None)
            self._slots.release()
            raise
        task = asyncio.get_running_loop().create_task(self._run_call(call, request, method, caller))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _refusal_after_wait(self, request: MethodRequest, env: Envelope) -> tuple[Code, str] | None:
        """What may have changed while the request waited for a slot."""
        if self._stopping:
            return Code.SHUTTING_DOWN, "the minion is stopping; call again later"
        if request.deadline < time.time():
            return Code.EXPIRED, "the request's deadline passed while it waited for a free slot"
        call_id = env.correlation_id or env.message_id
        if call_id and call_id in self._calls:
            return Code.BAD_REQUEST, f"call id {call_id!r} is already in use by a running call"
        if call_id and self._recent.get(call_id) is not None:  # not run again while its reply is kept
            return Code.BAD_REQUEST, f"call id {call_id!r} was used by a call that just finished; follow it for its result"
        return None

    async def _run_call(self, call: InFlightCall, request: MethodRequest, method: Any, caller: Caller) -> None:
        try:
            reply = await self.execute(call, request, method, caller)
        finally:
            self._slots.release()
        await self._finish(call, reply, request.deadline)

    async def execute(self, call: InFlightCall, request: MethodRequest, method: Any, caller: Caller) -> Reply:
        """Run an accepted call's method off the loop, audited; tracked while it runs."""
        self._calls[call.call_id] = call
        try:
            reply = await asyncio.get_running_loop().run_in_executor(self._executor, _invoke, method, request, call.context)
        except Exception as exc:  # the pool itself failed (shut down): still answer
            reply = code_reply(Code.INTERNAL_ERROR, f"the call could not run: {exc!r}")
        self.audit.record(caller.key, request.full_name, request.args, call.call_id, _outcome(reply))
        return reply

    async def _finish(self, call: InFlightCall, reply: Reply, deadline: float) -> None:
        """Send the final reply to every follower, after the indications before it, and
        keep it a while for a follower that missed it (recent.py)."""
        if call.finished:
            return  # abandoned after a cancel: its late result has nobody to go to
        self._calls.pop(call.call_id, None)
        # encoded and kept before anything awaits: a follow from now on finds it kept
        envelopes = [(to, self._encode_reply(reply, cid, key)) for to, cid, key in call.followers]
        if envelopes:  # without followers (a job) the outcome goes to the job's owner
            self._recent.add(call.call_id, call.full_name, call.request_id, envelopes[0][1])
        await call.close()
        if len(envelopes) == 1:  # the usual case: just the caller
            await self._deliver(*envelopes[0], deadline)
            return
        await asyncio.gather(*(self._deliver(reply_to, env, deadline) for reply_to, env in envelopes))

    async def finish(self, call: InFlightCall, reply: Reply) -> None:
        """Send a finished call's reply to its followers, if it has any."""
        await self._finish(call, reply, time.time() + REPLY_GRACE)

    async def send_indication(self, follower: Follower, item: Reply) -> None:
        try:
            env = codec.encode(item, correlation_id=follower.correlation_id, agent=self.settings.name)
        except (TypeError, ValueError, RecursionError) as exc:
            _log.warning("dropped an indication that cannot travel: %s", exc)
            return
        self.gate.sign(env, follower.reply_key)
        await self.transport.reply(follower.reply_to, env)

    # --- following and cancelling ----------------------------------------------------

    def _followed(self, request: SubscribeRequest) -> InFlightCall | FinishedCall | None:
        """The running or just-finished call a follow names (of its request, if it says)."""
        found: InFlightCall | FinishedCall | None = self._calls.get(request.call_id) or self._recent.get(request.call_id)
        if found is None or request.request_id not in (None, found.request_id):
            return None
        return found

    async def _subscribe(
        self, env: Envelope, request: SubscribeRequest, followed: InFlightCall | FinishedCall | None, reply_key: PairKey | None
    ) -> None:
        if not env.reply_to or not env.correlation_id:
            return
        if isinstance(followed, InFlightCall):
            if self._calls.get(request.call_id) is followed:
                followed.follow(Follower(env.reply_to, env.correlation_id, reply_key))
                return
            finished = self._recent.get(request.call_id)  # it ended while the follow was acked
            followed = finished if finished is not None and finished.request_id == followed.request_id else None
        if followed is not None:
            await self._deliver(env.reply_to, self._readdressed(followed.reply, env.correlation_id, reply_key), request.deadline)
            return
        reply = code_reply(
            Code.NO_SUCH_CALL,
            f"no call {request.call_id!r} is running on this minion or finished in the last {KEEP_SECONDS:g} s",
        )
        await self._send_reply(env.reply_to, env.correlation_id, reply, request.deadline, reply_key)

    def _readdressed(self, reply: Envelope, correlation_id: str, reply_key: PairKey | None) -> Envelope:
        """A kept reply for another follower: under its correlation id, signed anew."""
        copy = dataclasses.replace(reply, message_id=uuid.uuid4().hex, correlation_id=correlation_id, headers=dict(reply.headers))
        self.gate.sign(copy, reply_key)
        return copy

    def _cancel(self, request: CancelRequest, caller: Caller) -> Reply:
        call = self._calls.get(request.call_id)
        if call is None:  # perhaps a job waiting for a slot, or not here yet
            return MethodResponse(self.jobs is not None and self.jobs.cancel(request.call_id, caller))
        _log.info("cancelling %s (%s)", call.full_name, call.call_id)
        call.context.cancel()
        asyncio.get_running_loop().call_later(CANCEL_GRACE, self._abandon, call)
        return MethodResponse(True)

    def _abandon(self, call: InFlightCall) -> None:
        """A cancelled method that did not stop in time is answered CANCELLED anyway."""
        if self._calls.get(call.call_id) is not call:
            return
        _log.warning("%s did not stop within %.0fs of its cancel; answering CANCELLED", call.full_name, CANCEL_GRACE)
        reply = code_reply(Code.CANCELLED, f"the call was cancelled; {call.full_name} did not stop within {CANCEL_GRACE:g} s")
        task = asyncio.get_running_loop().create_task(self._finish(call, reply, time.time() + REPLY_GRACE))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # --- replying -------------------------------------------------------------------

    def _encode_reply(self, reply: Reply, correlation_id: str | None, reply_key: PairKey | None) -> Envelope:
        try:
            env = codec.encode(reply, correlation_id=correlation_id, agent=self.settings.name)
        except (TypeError, ValueError, RecursionError) as exc:
            fallback = code_reply(Code.RESULT_NOT_SERIALIZABLE, f"the method's result cannot travel: {exc}")
            env = codec.encode(fallback, correlation_id=correlation_id, agent=self.settings.name)
        self.gate.sign(env, reply_key)
        return env

    async def _send_reply(
        self, reply_to: str | None, correlation_id: str | None, reply: Reply, deadline: float, reply_key: PairKey | None
    ) -> None:
        """Encode, sign (or MAC with ``reply_key``) and deliver one reply."""
        if reply_to:
            await self._deliver(reply_to, self._encode_reply(reply, correlation_id, reply_key), deadline)

    async def _deliver(self, reply_to: str, env: Envelope, deadline: float) -> None:
        """Send an encoded reply, retrying while the caller may be reconnecting."""
        give_up = (deadline or time.time()) + REPLY_GRACE
        while True:
            try:
                # the client library waits for a reconnect without limit: bound it
                # (asyncio.timeout, unlike wait_for, needs no task of its own per reply)
                async with asyncio.timeout(max(give_up - time.time(), REPLY_RETRY_INTERVAL)):
                    await self.transport.reply(reply_to, env)
                return
            except asyncio.TimeoutError:
                _log.warning("reply to %s dropped: the broker stayed away past the deadline", reply_to)
                return
            except TransportError as exc:  # includes Unroutable: the caller may be reconnecting
                remaining = give_up - time.time()
                if remaining <= 0:
                    _log.warning("reply to %s dropped after its deadline: %s", reply_to, exc)
                    return
                _log.debug("reply to %s not delivered yet (%s); retrying", reply_to, exc)
                await self.transport.wait_connected(remaining)
                await asyncio.sleep(min(REPLY_RETRY_INTERVAL, max(give_up - time.time(), 0)))
