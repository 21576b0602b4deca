"""The transport-neutral message: what every transport carries, whatever its wire."""

from __future__ import annotations

from dataclasses import dataclass, field

HeaderValue = str | int | float | bool


@dataclass
class Envelope:
    """A message body with the properties the protocol relies on.

    ``deadline`` is absolute (seconds since the epoch); transports turn it into their
    broker's per-message time-to-live so an expired request is dropped in the queue.
    """

    body: bytes
    type: str = ""
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: float | None = None
    deadline: float | None = None
    content_type: str | None = None
    app_id: str | None = None
    headers: dict[str, HeaderValue] = field(default_factory=dict)
    redelivered: bool = False
    """Set by the broker (never by a sender) on a message it delivers again."""
