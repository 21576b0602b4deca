"""Request/reply over a transport: correlation ids, one future per call, deadlines.

One ``RpcClient`` per connection serves every call made through it, concurrently.
Failures are raised as :mod:`func_amqp.errors` exceptions; the func-compatible layer
above turns them into REMOTE_ERROR values.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable

from func_amqp.errors import (
    CallFailed,
    Code,
    MinionTimeout,
    MinionUnreachable,
    ProtocolError,
    RemoteError,
    SecurityError,
    TransportError,
    Unroutable,
)
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import (
    AgentInfo,
    AgentLocateRequest,
    AgentLocateResponse,
    CancelRequest,
    ExceptionResponse,
    Indication,
    LogIndication,
    MethodRequest,
    MethodResponse,
    Opcode,
    ProgressIndication,
    QueryRequest,
    QueryResponse,
    QueryTarget,
    Reply,
    Request,
    SubscribeRequest,
)
from func_amqp.security.identity import TrustSource
from func_amqp.security.keys import common_name
from func_amqp.security.pair_keys import MAC_SCHEME, PAIR_CACHE_SIZE, PairKey
from func_amqp.security.signing import Identity, Signer
from func_amqp.transport.base import Delivery, Transport

_log = logging.getLogger(__name__)

IndicationListener = Callable[[Indication], None]

SEND_RETRY_INTERVAL = 0.2
PRESENCE_PROBE_AFTER = 0.5
"""On a transport that cannot tell an absent minion (AMQP 1.0), a call not answered
within this many seconds has its minion's presence probed..."""
PRESENCE_PROBE_TIMEOUT = 2.0
"""...and fails as 'not connected' when the probe gets no answer within this many."""
LOCATE_GRACE = 0.05
"""Seconds to keep listening after every expected minion answered a locate."""
RECOVER_RETRY_INTERVAL = 1.0
"""Seconds to wait before asking again for a call's reply after a reconnect, when the
minion did not answer (it is not back yet)."""
FOLLOW_REFUSALS = frozenset(
    {
        Code.NO_SUCH_CALL,
        Code.BAD_REQUEST,
        Code.UNKNOWN_OPCODE,
        Code.MESSAGE_TOO_LARGE,
        Code.ACCESS_DENIED,
        Code.EXPIRED,
        Code.UNSUPPORTED_VERSION,
        Code.SHUTTING_DOWN,
        Code.INTERNAL_ERROR,
        Code.UNSIGNED,
        Code.BAD_SIGNATURE,
        Code.UNTRUSTED_CERTIFICATE,
        Code.REVOKED_CERTIFICATE,
        Code.REPLAYED,
        Code.KEY_CHANGED,
    }
)
"""Codes a minion answers a follow request itself with: no outcome of the call followed
(which may still come by its own reply). A finished call's kept reply never carries
them, since a call that was refused or failed to start is not kept."""


class RpcClient:
    """Sends requests to minions and matches their replies."""

    def __init__(
        self,
        transport: Transport,
        max_message_bytes: int,
        *,
        signer: Signer | None = None,
        trust: TrustSource | None = None,
    ) -> None:
        """``signer`` signs requests; with ``trust``, replies must be signed by the
        minion that was asked (anything else is ignored as a forgery)."""
        self.transport = transport
        self._max_bytes = max_message_bytes
        self._signer = signer
        self._trust = trust
        self._targets: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._collectors: dict[str, asyncio.Queue[Reply]] = {}
        self._listeners: dict[str, IndicationListener] = {}
        self._reply_to: str | None = None
        self._calls: dict[str, tuple[str, float, str | None]] = {}
        """Pending calls and follows whose reply a minion can be asked for again:
        correlation id -> the call's id on the minion, deadline, its request's message id."""
        self._recoveries: dict[str, asyncio.Task[None]] = {}
        self._pair_keys: dict[str, PairKey] = {}
        """Minion name -> the key its last reply was MAC'd with: requests to it are MAC'd
        with it too (security/pair_keys.py), until a reply comes signed or it refuses
        the key (KEY_CHANGED)."""
        self._refused_by: dict[str, str] = {}
        """Correlation id -> the fingerprint of the certificate an ``_exception`` answer
        to it verified with (see _minion_rekeyed)."""

    def macs_to(self, minion: str) -> bool:
        """Whether requests to ``minion`` now carry a pair MAC instead of a signature."""
        return minion in self._pair_keys

    async def start(self) -> None:
        """Open the reply address (once: a second start keeps the first)."""
        if self._reply_to is None:
            self._reply_to = await self.transport.open_reply_queue(self._on_reply, on_reattached=self._recover_pending)

    # --- replies lost while the reply address was away -------------------------------

    def _recover_pending(self) -> None:
        """The reply address receives again after a reconnect, and replies sent while it
        was away are lost (AMQP 1.0): ask each pending call's minion for it again."""
        loop = asyncio.get_running_loop()
        for cid, (call_id, deadline, request_id) in self._calls.items():
            target = self._targets.get(cid)
            if target is None:
                continue
            earlier = self._recoveries.get(cid)
            if earlier is not None:  # its follow's answer may be lost in this outage too
                earlier.cancel()
            self._recoveries[cid] = loop.create_task(self._recover(target, cid, call_id, deadline, request_id))

    async def _recover(self, target: str, cid: str, call_id: str, deadline: float, request_id: str | None) -> None:
        """Follow ``call_id`` on ``target`` (protocol.md §12), the call ``request_id``
        started, for the request waiting under ``cid``: a running call's final reply
        comes to the follower too, a just finished one's at once."""
        while (future := self._pending.get(cid)) is not None and not future.done():
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            try:
                reply = await self.request(target, SubscribeRequest(call_id, deadline, request_id), remaining, recover=False)
            except (MinionUnreachable, CallFailed):  # the minion is not back yet
                await asyncio.sleep(RECOVER_RETRY_INTERVAL)
                continue
            except MinionTimeout:
                return
            if isinstance(reply, ExceptionResponse) and reply.code in FOLLOW_REFUSALS:
                _log.warning(
                    "after a reconnect, minion %s could not give call %s's reply again (%s); "
                    "waiting for its own reply until the deadline",
                    target, cid, reply.text or Code(reply.code).name,
                )
                return
            if not future.done():
                future.set_result(reply)
            return

    async def _on_reply(self, delivery: Delivery) -> None:
        env = delivery.envelope
        cid = env.correlation_id or ""
        if cid in self._targets and not self._authentic(env, cid, None):
            return  # a pending call's reply must be genuine before it is even decoded
        try:
            decoded = codec.decode(env, self._max_bytes)
            if not isinstance(decoded, Reply):  # a request or an event sent to a reply address
                raise ProtocolError(f"a {type(decoded).__name__} is no reply", Code.UNKNOWN_OPCODE)
            reply = decoded
            if cid not in self._targets and not self._authentic(env, cid, reply):
                return
        except ProtocolError as exc:
            if env.headers.get(names.H_OPCODE) == Opcode.DATA_INDICATION.value:
                _log.warning("ignored an indication this overlord does not understand: %s", exc)
                return  # newer kinds must not break a running call
            _log.warning("malformed reply (correlation %r): %s", cid, exc)
            reply = ExceptionResponse(int(exc.code), f"the minion's reply was malformed: {exc}")
        if isinstance(reply, (ProgressIndication, LogIndication)):
            listener = self._listeners.get(cid)
            if listener is not None:
                try:
                    listener(reply)
                except Exception:  # a caller's callback must not break reply handling
                    _log.exception("progress callback failed")
            return
        future = self._pending.pop(cid, None)
        if future is not None:
            if not future.done():
                future.set_result(reply)
            return
        collector = self._collectors.get(cid)
        if collector is not None:
            collector.put_nowait(reply)
            return
        _log.debug("reply for unknown or finished request %r ignored", cid)

    def _authentic(self, env: Envelope, cid: str, reply: Reply | None) -> bool:
        """Whether the reply is signed (or MAC'd) by the minion it claims to come from."""
        if self._trust is None:
            return True
        expected = self._targets.get(cid)
        if expected is None and isinstance(reply, AgentLocateResponse):
            expected = reply.agent.name
        if expected is None:
            return False  # nobody is waiting for it: nothing to verify against
        identity = self._verified(env, expected)
        if identity is None:
            return False
        self._learn_pair_key(expected, env, identity)
        if env.headers.get(names.H_OPCODE) == Opcode.EXCEPTION.value:
            self._refused_by[cid] = identity.fingerprint
        return True

    def _learn_pair_key(self, minion: str, env: Envelope, identity: Identity) -> None:
        """A MAC'd reply shows the minion's current certificate and that it checks MACs."""
        pair = self._signer.pair_key(identity) if self._signer is not None and names.H_MAC in env.headers else None
        if pair is None:
            self._pair_keys.pop(minion, None)
            return
        if minion not in self._pair_keys and len(self._pair_keys) >= PAIR_CACHE_SIZE:
            self._pair_keys.clear()
        self._pair_keys[minion] = pair

    def _envelope(self, message: Request, cid: str, target: str | None, *, answered: bool = True) -> Envelope:
        """``message`` encoded and signed; MAC'd instead for a minion this client shares
        a key with, when the answer comes back here."""
        env = codec.encode(message, correlation_id=cid, reply_to=self._reply_to if answered else None, target=target)
        if self._signer is None:
            return env
        mac_for = None
        if answered and target is not None:  # a pair: not a job, nor a locate (to all)
            mac_for = self._pair_keys.get(target)
            if mac_for is None and self._trust is not None and self._signer.pairs.usable:
                env.headers[names.H_ACCEPTS_MAC] = MAC_SCHEME
        self._signer.sign(env, mac_for)
        return env

    def signed(self, message: Request, cid: str, target: str) -> Envelope:
        """``message`` encoded and signed for ``target``, with no reply address: a job,
        whose outcome goes to its owner's event queue instead."""
        return self._envelope(message, cid, target, answered=False)

    def verify(self, env: Envelope, signer: str) -> bool:
        """Whether ``env`` is signed by ``signer`` (true when this client trusts no CA)."""
        return self._trust is None or self._verified(env, signer) is not None

    def _verified(self, env: Envelope, signer: str) -> Identity | None:
        """Who signed ``env`` when it is ``signer``; None (logged) when not."""
        assert self._trust is not None
        try:
            return self._trust.store().verify(env, expected_signer=signer, receiver=self._signer)
        except SecurityError as exc:
            _log.warning("refused a message claiming to come from %s: %s", signer, exc)
            return None
        except (OSError, ValueError) as exc:
            _log.error("cannot check signatures: the CA certificate or CRL cannot be read: %s", exc)
            return None

    @property
    def signer_name(self) -> str:
        """The common name this client signs as ('' when it does not sign)."""
        return common_name(self._signer.certificate.subject) if self._signer is not None else ""

    # --- one request, one reply ------------------------------------------------------

    async def request(
        self,
        target: str,
        message: Request,
        timeout: float,
        *,
        correlation_id: str | None = None,
        on_indication: IndicationListener | None = None,
        recover: bool = True,
    ) -> Reply:
        """Send ``message`` to ``target`` and wait for its reply until ``timeout``.

        Indications tied to the request (progress, log lines) go to ``on_indication``.
        With ``recover``, the reply of a call or a follow is asked for again after a
        reconnect that may have lost it (AMQP 1.0).
        """
        if self._reply_to is None:
            raise RuntimeError("RpcClient.start() was not called")
        cid = correlation_id or uuid.uuid4().hex
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        if on_indication is not None:
            self._listeners[cid] = on_indication
        self._targets[cid] = target
        try:
            env = self._envelope(message, cid, target)
            self._track(cid, message, env, timeout, recover)
            deadline = getattr(message, "deadline", 0) or time.time() + timeout
            control = not isinstance(message, MethodRequest)
            try:
                reply = await self._exchange(target, env, future, deadline, timeout, control)
                if self._minion_rekeyed(target, env, reply):  # ask again, signed
                    future = self._pending[cid] = asyncio.get_running_loop().create_future()
                    env = self._envelope(message, cid, target)
                    self._track(cid, message, env, timeout, recover)
                    reply = await self._exchange(target, env, future, deadline, timeout, control)
                return reply
            except Unroutable:
                raise MinionUnreachable(
                    f"minion {target} is not connected to the broker (is funcd running there?)"
                ) from None
            except asyncio.TimeoutError:
                raise MinionTimeout(f"minion {target} did not answer within {timeout:g} s") from None
        finally:
            self._pending.pop(cid, None)
            self._listeners.pop(cid, None)
            self._targets.pop(cid, None)
            self._calls.pop(cid, None)
            self._refused_by.pop(cid, None)
            recovery = self._recoveries.pop(cid, None)
            if recovery is not None:
                recovery.cancel()

    def _minion_rekeyed(self, target: str, sent: Envelope, reply: Reply) -> bool:
        """Whether ``reply`` refuses the MAC of ``sent`` because ``target`` has a new
        certificate, so the request never ran and may go again, signed.

        The refusal must be signed with another certificate than the one the MAC was
        made for: anyone reading a copy of the request can resend it with another
        recipient header and make the minion refuse that copy under this call's
        correlation id, while the original runs.
        """
        if not (isinstance(reply, ExceptionResponse) and reply.code == Code.KEY_CHANGED and names.H_MAC in sent.headers):
            return False
        self._pair_keys.pop(target, None)
        refused_by = self._refused_by.pop(sent.correlation_id or "", None)
        if refused_by is None or refused_by == sent.headers.get(names.H_MAC_RECIPIENT):
            _log.warning(
                "%s refused a MAC'd request as made for another certificate, signing the refusal "
                "with the very certificate it was made for: a tampered copy of the request may have "
                "been refused instead; not sending it again",
                target,
            )
            return False
        return True

    def _track(self, cid: str, message: Request, env: Envelope, timeout: float, recover: bool) -> None:
        """Note what a reconnect's recovery asks for again, if anything."""
        if recover and isinstance(message, MethodRequest):
            self._calls[cid] = (cid, message.deadline, env.message_id)
        elif recover and isinstance(message, SubscribeRequest):
            self._calls[cid] = (message.call_id, message.deadline or time.time() + timeout, message.request_id)

    async def _exchange(
        self, target: str, env: Envelope, future: asyncio.Future[Reply], deadline: float, timeout: float, control: bool
    ) -> Reply:
        """Send ``env`` (on the control route unless a method call) and wait for the
        reply ``future`` gets, until the deadline."""
        async with asyncio.timeout(timeout):
            await self._send(target, env, deadline, control)
        async with asyncio.timeout(max(deadline - time.time(), 0)):
            if self.transport.reports_unroutable:
                return await future
            return await self._reply_unless_absent(target, future, timeout)

    async def _reply_unless_absent(self, target: str, future: asyncio.Future[Reply], timeout: float) -> Reply:
        """The reply; Unroutable if it is slow and a presence probe finds nobody."""
        await asyncio.wait({future}, timeout=PRESENCE_PROBE_AFTER)
        if future.done():
            return future.result()
        probe = asyncio.get_running_loop().create_task(self.probe(target, min(PRESENCE_PROBE_TIMEOUT, timeout)))
        try:
            waiters: set[asyncio.Future[Any]] = {future, probe}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not future.done() and not probe.result():
                raise Unroutable(f"minion {target} did not answer a presence probe")
            return await future
        finally:
            probe.cancel()

    async def probe(self, target: str, timeout: float, *, unsent: bool = True) -> bool:
        """Whether minion ``target`` answers a locate addressed to it within ``timeout``.

        Sent on its control route, so a minion whose call slots are full still answers;
        a refusal counts as present. A failure to send gives ``unsent``: present by
        default (a call's own timeout then decides).
        """
        if self._reply_to is None:
            raise RuntimeError("RpcClient.start() was not called")
        cid = uuid.uuid4().hex
        collector: asyncio.Queue[Reply] = asyncio.Queue()
        self._collectors[cid] = collector
        deadline = time.time() + timeout
        try:
            env = self._envelope(AgentLocateRequest(deadline, target), cid, None)
            try:
                async with asyncio.timeout(timeout):
                    await self.transport.send(target, env, control=True)
            except (TransportError, asyncio.TimeoutError):
                return unsent
            while (remaining := deadline - time.time()) > 0:
                try:
                    reply = await asyncio.wait_for(collector.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if isinstance(reply, AgentLocateResponse):
                    return reply.agent.name == target and not reply.agent.stopping
                return True  # a refusal (an unsigned probe, say): still, someone is there
            return False
        finally:
            self._collectors.pop(cid, None)

    async def _send(self, target: str, env: Envelope, deadline: float, control: bool) -> None:
        """Send, riding out a broker reconnect until the deadline."""
        while True:
            try:
                await self.transport.send(target, env, control=control)
                return
            except Unroutable:
                raise
            except TransportError as exc:
                remaining = deadline - time.time()
                if remaining <= 0 or not await self.transport.wait_connected(remaining):
                    raise CallFailed(f"cannot send to minion {target}: {exc}") from None
                await asyncio.sleep(SEND_RETRY_INTERVAL)

    async def call(
        self,
        target: str,
        module: str,
        method: str,
        args: list[Any],
        timeout: float,
        *,
        call_id: str | None = None,
        on_indication: IndicationListener | None = None,
    ) -> Any:
        """``module.method(*args)`` on ``target``; the result, or a RemoteCallError.

        ``call_id`` names the call on the minion, for :meth:`cancel` and :meth:`follow`.
        """
        request = MethodRequest(module, method, list(args), time.time() + timeout, target)
        reply = await self.request(target, request, timeout, correlation_id=call_id, on_indication=on_indication)
        return _unwrap(reply)

    async def cancel(self, target: str, call_id: str, timeout: float) -> bool:
        """Ask ``target`` to cancel a running call; False if it has no such call."""
        reply = await self.request(target, CancelRequest(call_id, time.time() + timeout), timeout)
        return bool(_unwrap(reply))

    async def follow(self, target: str, call_id: str, timeout: float, on_indication: IndicationListener | None = None) -> Any:
        """Attach to a running call: its indications from now on, then its result."""
        reply = await self.request(target, SubscribeRequest(call_id, time.time() + timeout), timeout, on_indication=on_indication)
        return _unwrap(reply)

    async def method_args(self, target: str, module: str, timeout: float) -> dict[str, Any]:
        """The module's registered method arguments (func's get_method_args)."""
        request = QueryRequest(QueryTarget.SCHEMA, module, time.time() + timeout)
        data = _unwrap(await self.request(target, request, timeout))
        if not data or not isinstance(data[0], dict) or not isinstance(data[0].get("_methods"), dict):
            raise RemoteError(int(Code.BAD_REQUEST), "the minion's schema answer is malformed")
        methods: dict[str, Any] = data[0]["_methods"]
        return methods

    async def list_modules(self, target: str, timeout: float) -> list[str]:
        request = QueryRequest(QueryTarget.SCHEMA_ID, "", time.time() + timeout)
        data = _unwrap(await self.request(target, request, timeout))
        return sorted(str(item.get("_class_name")) for item in data if isinstance(item, dict))

    # --- discovery --------------------------------------------------------------------

    async def locate(self, timeout: float, expected: set[str] | None = None) -> dict[str, AgentInfo]:
        """Ask every connected minion to identify itself (QMF agent locate).

        Returns early once every name in ``expected`` answered, else after ``timeout``.
        """
        if self._reply_to is None:
            raise RuntimeError("RpcClient.start() was not called")
        cid = uuid.uuid4().hex
        collector: asyncio.Queue[Reply] = asyncio.Queue()
        self._collectors[cid] = collector
        found: dict[str, AgentInfo] = {}
        deadline = time.time() + timeout
        try:
            env = self._envelope(AgentLocateRequest(deadline), cid, None)
            try:
                await asyncio.wait_for(self.transport.broadcast(env), timeout)
            except asyncio.TimeoutError:
                return found  # the broker is away: nobody can answer
            while True:
                remaining = deadline - time.time()
                if expected and expected <= found.keys():
                    remaining = min(remaining, LOCATE_GRACE)
                if remaining <= 0:
                    break
                try:
                    reply = await asyncio.wait_for(collector.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if isinstance(reply, AgentLocateResponse) and not reply.agent.stopping:
                    found[reply.agent.name] = reply.agent
        finally:
            self._collectors.pop(cid, None)
        return found


def _unwrap(reply: Reply) -> Any:
    if isinstance(reply, MethodResponse):
        return reply.result
    if isinstance(reply, QueryResponse):
        return reply.data
    if isinstance(reply, ExceptionResponse):
        raise RemoteError(reply.code, reply.text, reply.exception_type, reply.traceback)
    raise RemoteError(int(Code.BAD_REQUEST), f"unexpected reply {type(reply).__name__}")
