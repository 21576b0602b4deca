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


# --- headers (application properties) ---------------------------------------------------

H_OPCODE = "qmf.opcode"
H_ROLE = "method"  # QMF v2's name for request | response | indication
H_AGENT = "qmf.agent"
H_PROTOCOL = "x-func-amqp-protocol"
H_DEADLINE = "x-func-amqp-deadline"
"""Absolute deadline in integer milliseconds since the epoch (AMQP 0-9-1 clients may
encode float headers as 32-bit floats, which cannot hold a timestamp)."""
H_TARGET = "x-func-amqp-target"

# signatures (func_amqp.security.signing; docs/protocol.md "Message security")
H_NONCE = "x-func-amqp-nonce"
H_SIGNATURE = "x-func-amqp-signature"
H_CERTIFICATE = "x-func-amqp-certificate"
H_FINGERPRINT = "x-func-amqp-certificate-sha256"

ROLE_REQUEST = "request"
ROLE_RESPONSE = "response"
ROLE_INDICATION = "indication"

# --- names from outside -----------------------------------------------------------------

MINION_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,252}[a-z0-9])?$")
"""Host-name-like: what a minion may call itself; also safe in queue names."""


def valid_minion_name(name: str) -> bool:
    return bool(MINION_NAME_RE.fullmatch(name))
