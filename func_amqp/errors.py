"""Exceptions and the command-complete code table: the one place both are defined.

Hierarchy::

    FuncException                      func's base (func.minion.codes.FuncException)
     ├── ModuleNotFoundException       no such module on the minion
     ├── InvalidMethodException        module loaded, method unknown
     ├── AccessToMethodDenied          refused by the ACLs
     ├── ArgumentError                 arguments break the method's registration
     ├── CallCancelled                 the caller cancelled the running call
     └── Func_Client_Exception         overlord-side misuse (bad spec, no minions, ...)
    FuncAmqpError                      func-amqp's own failures
     ├── ConfigError                   a config file or setting is invalid
     ├── ProtocolError                 a message breaks docs/protocol.md
     ├── BrokerError                   the private node could not be managed
     ├── SecurityError                 a message failed authentication (carries a Code)
     └── TransportError                the broker cannot be reached or used
          ├── BrokerUnreachable
          └── Unroutable                nobody consumes at the address sent to
    RemoteCallError                    a call's failure, as seen by an overlord
     ├── MinionTimeout                 no answer before the deadline
     ├── MinionUnreachable             the minion is not connected to the broker
     ├── CallFailed                    the request could not be sent
     └── RemoteError                   the minion answered with an error code

Every failure that crosses the wire carries a :class:`Code` from the table below;
the overlord turns it into func's ``["REMOTE_ERROR", type, message, traceback]``.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Command-complete codes carried by ``_exception`` messages (docs/protocol.md)."""

    BAD_REQUEST = 1
    UNKNOWN_OPCODE = 2
    MESSAGE_TOO_LARGE = 3
    MODULE_NOT_FOUND = 4
    METHOD_NOT_FOUND = 5
    ACCESS_DENIED = 6
    METHOD_FAILED = 7
    INVALID_ARGUMENTS = 8
    EXPIRED = 9
    RESULT_NOT_SERIALIZABLE = 10
    UNSUPPORTED_VERSION = 11
    SHUTTING_DOWN = 12
    INTERNAL_ERROR = 13
    CANCELLED = 14
    UNSIGNED = 15
    BAD_SIGNATURE = 16
    UNTRUSTED_CERTIFICATE = 17
    REVOKED_CERTIFICATE = 18
    REPLAYED = 19
    NO_SUCH_CALL = 20
    KEY_CHANGED = 21

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Code.BAD_REQUEST: "the message is malformed or breaks the protocol's schema",
    Code.UNKNOWN_OPCODE: "the opcode is not one this peer serves",
    Code.MESSAGE_TOO_LARGE: "the message is larger than the receiver accepts",
    Code.MODULE_NOT_FOUND: "no module of that name is loaded on the minion",
    Code.METHOD_NOT_FOUND: "the module has no method of that name",
    Code.ACCESS_DENIED: "the caller may not call that method",
    Code.METHOD_FAILED: "the method raised an exception",
    Code.INVALID_ARGUMENTS: "the arguments do not fit the method",
    Code.EXPIRED: "the request's deadline passed before it could start",
    Code.RESULT_NOT_SERIALIZABLE: "the method returned a value that cannot travel",
    Code.UNSUPPORTED_VERSION: "the request speaks a protocol version this minion does not",
    Code.SHUTTING_DOWN: "the minion is stopping and takes no new calls",
    Code.INTERNAL_ERROR: "the minion failed while handling the request",
    Code.CANCELLED: "the caller cancelled the call",
    Code.UNSIGNED: "the request carries no signature or certificate",
    Code.BAD_SIGNATURE: "the signature does not match the message (forged or tampered)",
    Code.UNTRUSTED_CERTIFICATE: "the certificate is not from this CA, or not valid now",
    Code.REVOKED_CERTIFICATE: "the certificate has been revoked",
    Code.REPLAYED: "the request was seen before (replay)",
    Code.NO_SUCH_CALL: "no call of that id is running or just finished on this minion",
    Code.KEY_CHANGED: "the MAC was made for a certificate the receiver no longer holds: send it signed",
}


# --- func's exceptions (func.minion.codes) -------------------------------------------


class FuncException(Exception):
    """Base of func's exceptions; kept under func's name for compatibility."""


class ModuleNotFoundException(FuncException):
    """The requested module is not loaded on the minion."""


class InvalidMethodException(FuncException):
    """The module is loaded but has no such method."""


class AccessToMethodDenied(FuncException):
    """The ACLs do not allow the caller this method."""


class ArgumentError(FuncException):
    """The arguments do not fit the method's registered arguments."""


class CallCancelled(FuncException):
    """The caller cancelled the call (raised in module code by progress.check_cancelled)."""


class Func_Client_Exception(FuncException):  # noqa: N801 - func's public name
    """Raised by the overlord for misuse: bad target spec, no matching minions."""


# --- func-amqp's own failures --------------------------------------------------------


class FuncAmqpError(Exception):
    """Base of func-amqp's own errors; ``str()`` is a message fit for a user."""


class ConfigError(FuncAmqpError):
    """A configuration file or setting is invalid."""


class ProtocolError(FuncAmqpError):
    """A received message breaks the wire protocol; carries the code to answer with."""

    def __init__(self, message: str, code: Code = Code.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class SecurityError(FuncAmqpError):
    """A message failed authentication; carries the code to answer with."""

    def __init__(self, message: str, code: Code) -> None:
        super().__init__(message)
        self.code = code


class BrokerError(FuncAmqpError):
    """The private RabbitMQ node could not be started, stopped or queried."""


class TransportError(FuncAmqpError):
    """The broker could not be used (connection lost, channel closed, ...)."""


class BrokerUnreachable(TransportError):
    """No connection to the broker could be made."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the AMQP broker at {url}: {reason}. Start the private broker "
            "with 'func-amqp broker start', or set FUNC_AMQP_URL (or 'broker_url' in the "
            "config) to a running broker."
        )
        self.url = url
        self.reason = reason


class Unroutable(TransportError):
    """The broker had no queue for the address: the peer is not connected."""


# --- failures of one call, seen by an overlord ----------------------------------------


class RemoteCallError(FuncAmqpError):
    """A call to one minion did not produce a result."""


class MinionTimeout(RemoteCallError):
    """The minion did not answer before the call's deadline."""


class MinionUnreachable(RemoteCallError):
    """No minion of that name is connected to the broker."""


class CallFailed(RemoteCallError):
    """The request could not be handed to the broker before its deadline."""


class RemoteError(RemoteCallError):
    """A minion answered with a command-complete error."""

    def __init__(
        self, code: int, text: str, exception_type: str = "", traceback: str = ""
    ) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.exception_type = exception_type
        self.traceback = traceback


# Codes raised on the minion for func's own exception classes, and back.
EXCEPTION_CODES: dict[type[BaseException], Code] = {
    ModuleNotFoundException: Code.MODULE_NOT_FOUND,
    InvalidMethodException: Code.METHOD_NOT_FOUND,
    AccessToMethodDenied: Code.ACCESS_DENIED,
    ArgumentError: Code.INVALID_ARGUMENTS,
    CallCancelled: Code.CANCELLED,
}


def qualified_name(exc_type: type) -> str:
    """``module.Class`` for an exception type, the form REMOTE_ERROR carries."""
    return f"{exc_type.__module__}.{exc_type.__qualname__}"
