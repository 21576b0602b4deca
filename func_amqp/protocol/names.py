"""Every name the wire protocol uses: exchanges, queues, headers, versions.

One source of truth: transports, minions and overlords import these; docs/protocol.md
describes them. Names are transport-neutral; each transport maps them onto its
broker's addressing (see the transport modules).
"""

from __future__ import annotations

import re

PROTOCOL_VERSION = 1
"""Major version of the func-amqp wire protocol; a peer refuses other majors."""

APP_ID = "qmf2"
"""QMF v2's application id, kept so QMF-aware tools recognise the messages."""

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"

# --- topology ---------------------------------------------------------------------------

MINIONS_EXCHANGE = "func.minions"
"""Direct exchange: routing key = minion name, bound to that minion's request queue."""

BROADCAST_EXCHANGE = "func.broadcast"
"""Fanout exchange: requests every connected minion receives (agent locate)."""

EVENTS_EXCHANGE = "func.events"
"""Topic exchange for unsolicited indications: ``agent.heartbeat.<minion>``."""

DEAD_LETTER_EXCHANGE = "func.dead-letter"
DEAD_LETTER_QUEUE = "func.dead-letters"
"""Where rejected messages without a reply address go, for an operator to inspect."""

DEAD_LETTER_MAX_LENGTH = 10_000
DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, str | int] = {"x-max-length": DEAD_LETTER_MAX_LENGTH, "x-overflow": "drop-head"}
"""The oldest dead letters go first once the queue is full."""

JOBS_EXCHANGE = "func.jobs"
"""Direct exchange for jobs (durable requests): routing key = minion name, bound to the
minion's durable job queue, which outlives the minion so jobs wait for it."""

POOLS_EXCHANGE = "func.pools"
"""Direct exchange for pool jobs: routing key = :func:`pool_key` of the pool and the
tags a job requires, bound to the pool queue of that key."""

JOB_EVENTS_EXCHANGE = "func.job-events"
"""Headers exchange: job events (and dead-lettered job requests) are routed to their
owner's durable queue by the ``x-func-amqp-owner`` header."""

CANCELS_EXCHANGE = "func.cancels"
"""Fanout exchange: cancels of pool jobs not yet taken, kept for every pool member in its
durable queue until the job's time to live ends, so a member that was down hears them."""

EXCHANGES: tuple[tuple[str, str, dict[str, str] | None], ...] = (
    (MINIONS_EXCHANGE, "direct", None),
    (BROADCAST_EXCHANGE, "fanout", None),
    (EVENTS_EXCHANGE, "topic", None),
    (JOBS_EXCHANGE, "direct", None),
    (POOLS_EXCHANGE, "direct", None),
    # what reaches no owner (a refused message without one) goes to the operator's dead
    # letters: quorum queues retry an unroutable at-least-once dead letter for ever
    (JOB_EVENTS_EXCHANGE, "headers", {"alternate-exchange": DEAD_LETTER_EXCHANGE}),
    (CANCELS_EXCHANGE, "fanout", None),
)
"""The shared exchanges (name, kind, arguments), all durable (docs/protocol.md §2, §14),
declared by every AMQP 0-9-1 connection (minions add the dead-letter pair). AMQP 1.0
clients cannot declare anything: a broker gets them from ``func-amqp broker definitions``."""

AMQP10_REPLY_EXCHANGE = "amq.direct"
"""Over AMQP 1.0 replies go through RabbitMQ's built-in direct exchange to the caller's
private queue (docs/protocol.md §15): the plugin binds queues to exchanges only."""

JOB_QUEUE_PREFIX = "func.jobs."
CANCEL_QUEUE_PREFIX = "func.cancels."
POOL_QUEUE_PREFIX = "func.pool."
JOB_EVENTS_QUEUE_PREFIX = "func.job-events."

MAX_NAME_BYTES = 255
"""AMQP's limit for queue names and routing keys (short strings)."""

MAX_POOL_KEY_LENGTH = MAX_NAME_BYTES - len(POOL_QUEUE_PREFIX)

POOL_DELIVERY_LIMIT = 3
"""Deliveries of one pool job before it is dead-lettered: a job that kills every
builder it touches must not take the whole pool down."""

MINION_QUEUE_PREFIX = "func.minion."
PRESENCE_QUEUE_SUFFIX = ".presence"
CONTROL_KEY_SUFFIX = ".control"
REPLY_QUEUE_PREFIX = "func.reply."
HEARTBEAT_KEY_PREFIX = "agent.heartbeat."


def minion_queue(name: str) -> str:
    """The request queue a minion consumes from."""
    return MINION_QUEUE_PREFIX + name


def minion_presence_queue(name: str) -> str:
    """The queue a minion receives broadcasts (agent locate) on."""
    return MINION_QUEUE_PREFIX + name + PRESENCE_QUEUE_SUFFIX


def control_key(name: str) -> str:
    """Routing key for a minion's control requests (cancel, follow, schema queries):
    they reach its presence queue, whose window calls waiting for a slot cannot fill."""
    return name + CONTROL_KEY_SUFFIX


def heartbeat_key(name: str) -> str:
    return HEARTBEAT_KEY_PREFIX + name


def job_queue(name: str) -> str:
    """The durable queue of jobs for minion ``name``."""
    return JOB_QUEUE_PREFIX + name


def pool_key(pool: str, tags: dict[str, str] | None = None) -> str:
    """The routing key (and queue suffix) of ``pool`` restricted to ``tags``:
    ``builders`` or ``builders:arch:x86_64:distro:fedora-40``, tags sorted. Names and
    tags never contain ``:``, and AMQP queue names allow no ``=`` or ``;``. ValueError
    when the queue name would be longer than AMQP allows."""
    key = ":".join([pool, *(f"{k}:{v}" for k, v in sorted((tags or {}).items()))])
    if len(key) > MAX_POOL_KEY_LENGTH:
        raise ValueError(f"pool {pool!r} with these tags makes a queue name of {len(POOL_QUEUE_PREFIX) + len(key)} characters; AMQP allows {MAX_NAME_BYTES}: use shorter names")
    return key


def pool_queue(key: str) -> str:
    return POOL_QUEUE_PREFIX + key


ANY_MINION = "*"
"""The signed target of a request meant for every minion (a job-wide cancel)."""


def pool_target(pool: str) -> str:
    """What a pool job names as its signed target: any member of the pool may run it."""
    return "@" + pool


def cancel_queue(name: str) -> str:
    """The durable queue of pool-job cancels for minion ``name``."""
    return CANCEL_QUEUE_PREFIX + name


def job_events_queue(owner: str) -> str:
    return JOB_EVENTS_QUEUE_PREFIX + owner


# --- headers (application properties) ---------------------------------------------------

H_OPCODE = "qmf.opcode"
H_ROLE = "method"  # QMF v2's name for request | response | indication
H_AGENT = "qmf.agent"
H_PROTOCOL = "x-func-amqp-protocol"
H_DEADLINE = "x-func-amqp-deadline"
"""Absolute deadline in integer milliseconds since the epoch (AMQP 0-9-1 clients may
encode float headers as 32-bit floats, which cannot hold a timestamp)."""
H_TARGET = "x-func-amqp-target"
H_OWNER = "x-func-amqp-owner"
"""Routing only: the owner whose event queue gets a job's events (the signed copy is in
the request body)."""
H_DELIVERY_COUNT = "x-delivery-count"
"""Set by RabbitMQ's quorum queues on a redelivered message."""
H_DEATH_REASON = "x-first-death-reason"
"""Set by RabbitMQ on a dead-lettered message: expired, rejected, delivery_limit, ..."""

# signatures (func_amqp.security.signing; docs/protocol.md "Message security")
H_NONCE = "x-func-amqp-nonce"
H_SIGNATURE = "x-func-amqp-signature"
H_CERTIFICATE = "x-func-amqp-certificate"
H_FINGERPRINT = "x-func-amqp-certificate-sha256"
H_MAC = "x-func-amqp-mac"
"""Instead of a signature: a tag under a key shared with the recipient (security/pair_keys.py)."""
H_MAC_RECIPIENT = "x-func-amqp-mac-recipient-sha256"
"""The fingerprint of the recipient certificate a MAC was made for."""
H_ACCEPTS_MAC = "x-func-amqp-accepts-mac"
"""On a request: its sender checks MAC'd replies of this scheme (pair_keys.MAC_SCHEME)."""

ROLE_REQUEST = "request"
ROLE_RESPONSE = "response"
ROLE_INDICATION = "indication"

# --- names from outside -----------------------------------------------------------------

MINION_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,252}[a-z0-9])?$")
"""Host-name-like: what a minion may call itself; also safe in queue names."""


def valid_minion_name(name: str) -> bool:
    return bool(MINION_NAME_RE.fullmatch(name))


TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""Pool names, tag names and tag values: lower case, safe in routing keys and queue names."""


MAX_TAGS = 4
"""Tags one minion may have: it consumes a pool queue for every subset of them (16)."""


def valid_tag(text: str) -> bool:
    return bool(TAG_RE.fullmatch(text))
