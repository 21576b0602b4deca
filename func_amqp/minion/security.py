"""Who may call this minion, and proof of who answered.

Every request must carry a signature by a certificate of this minion's CA (or by the
CA itself, func's certmaster key), made for this minion, not revoked, not replayed.
The ACLs then decide which methods the signer may call. Replies and indications are
signed with the minion's own key, so an overlord can tell them from forgeries; those
for a caller that checks MACs, and shares a pair key with the minion, carry a MAC
instead (security/pair_keys.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from func_amqp.errors import AccessToMethodDenied, Code, SecurityError
from func_amqp.minion.acl import Acl
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import Opcode
from func_amqp.security.identity import TrustSource, identity_acl_key
from func_amqp.security.pair_keys import MAC_SCHEME, PairKey
from func_amqp.security.signing import ReplayGuard, Signer


@dataclass(frozen=True)
class Caller:
    """The authenticated sender of a request, as ACLs and the audit log name it."""

    key: str
    cn: str
    is_ca: bool = False
    """Signed with the CA's own key (not merely a certificate named like the CA)."""
    reply_key: PairKey | None = None
    """What the answers to this caller are MAC'd with (None: signed)."""


UNAUTHENTICATED = Caller("-", "")
"""The caller of a message refused before its signature was checked."""

ANONYMOUS = Caller("anonymous", "")
"""Every caller of a minion that does not require signatures."""

BROADCAST_OPCODES = frozenset({Opcode.AGENT_LOCATE_REQUEST})
"""Requests sent to every minion at once, so signed for no one in particular."""


class MinionSecurity:
    """Signature checks, replay guard, ACLs and reply signing for one minion."""

    def __init__(
        self,
        name: str,
        trust: TrustSource,
        signer: Signer,
        acl: Acl,
        replay: ReplayGuard | None = None,
        *,
        certmaster_overrides_acls: bool = True,
    ) -> None:
        self.name = name
        self.trust = trust
        self.signer = signer
        self.acl = acl
        self.replay = replay or ReplayGuard()
        self.certmaster_overrides_acls = certmaster_overrides_acls

    def authenticate(self, env: Envelope, opcode: Opcode, *, target: str | None = None, job: bool = False) -> Caller:
        """The request's signer; raises SecurityError with the code to answer with.

        ``target`` is what the request must be signed for (default: this minion; a pool
        job names ``@pool``). A ``job`` is not checked against the replay guard: the
        job ledger keeps a job id from running twice, also across restarts, and the
        broker may deliver a job more than once.
        """
        expected_target = None if opcode in BROADCAST_OPCODES else target or self.name
        if opcode is Opcode.CANCEL_REQUEST and env.headers.get(names.H_TARGET) == names.ANY_MINION:
            expected_target = names.ANY_MINION  # a job-wide cancel, for whoever has the job
        store = self.trust.store()
        # jobs are read by whichever minion takes them and kept as a record: signed only
        identity = store.verify(env, expected_target=expected_target, receiver=None if job else self.signer)
        try:
            if not job:
                self.replay.check_envelope(env, identity)
        except SecurityError as exc:
            # the broker requeued it (consumer timeout, channel closed) before it was
            # accepted, so it never ran: its nonce was seen, but this is no replay
            if exc.code != Code.REPLAYED or not env.redelivered:
                raise
        is_ca = identity.certificate == store.ca_certificate
        headers = env.headers
        checks_macs = not job and (names.H_MAC in headers or headers.get(names.H_ACCEPTS_MAC) == MAC_SCHEME)
        reply_key = self.signer.pair_key(identity) if checks_macs else None
        return Caller(identity_acl_key(identity), identity.cn, is_ca, reply_key)

    def authorize(self, caller: Caller, method: str) -> None:
        """Raise AccessToMethodDenied unless the ACLs grant ``method`` to ``caller``.

        ``certmaster_overrides_acls`` lets the CA's own key call everything; it is
        decided by the certificate itself, never by a name, which any host could bear.
        """
        if caller.is_ca and self.certmaster_overrides_acls:
            return
        self.acl.check(caller.key, method)

    def sign(self, env: Envelope, reply_key: PairKey | None = None) -> None:
        self.signer.sign(env, reply_key)


class OpenAccess:
    """No authentication: for the in-memory twin and for minions that opt out."""

    def authenticate(self, env: Envelope, opcode: Opcode, *, target: str | None = None, job: bool = False) -> Caller:
        return ANONYMOUS

    def authorize(self, caller: Caller, method: str) -> None:
        return None

    def sign(self, env: Envelope, reply_key: PairKey | None = None) -> None:
        return None


Gate = MinionSecurity | OpenAccess

__all__ = ["ANONYMOUS", "AccessToMethodDenied", "Caller", "Gate", "MinionSecurity", "OpenAccess", "UNAUTHENTICATED"]
