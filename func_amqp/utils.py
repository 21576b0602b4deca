"""func's result helpers: the ``REMOTE_ERROR`` value callers test results against.

A failed call's result is ``["REMOTE_ERROR", type name, message, traceback text]``,
the shape func scripts test with ``func.utils.is_error``.
"""

from __future__ import annotations

import traceback as _traceback

from typing import Any

from func_amqp.errors import Code, RemoteCallError, RemoteError, qualified_name

REMOTE_ERROR = "REMOTE_ERROR"


def is_error(result: object) -> bool:
    """True for a ``REMOTE_ERROR`` result: a non-empty list whose first item says so."""
    return isinstance(result, (list, tuple)) and bool(result) and result[0] == REMOTE_ERROR


def remote_error(type_name: str, message: str, traceback: str = "") -> list[str]:
    """The ``REMOTE_ERROR`` value for a failure known by its parts."""
    return [REMOTE_ERROR, type_name, message, traceback]


def nice_exception(exc: BaseException) -> list[str]:
    """The ``REMOTE_ERROR`` value for ``exc``; the traceback as Python prints it."""
    text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
    return remote_error(qualified_name(type(exc)), str(exc), text)


def remote_error_value(exc: RemoteCallError) -> list[Any]:
    """func's REMOTE_ERROR list for a failed call."""
    if isinstance(exc, RemoteError):
        etype = exc.exception_type
        if not etype:
            try:
                etype = f"{qualified_name(RemoteError)}.{Code(exc.code).name}"
            except ValueError:
                etype = qualified_name(RemoteError)
        return remote_error(etype, exc.text, exc.traceback)
    return remote_error(qualified_name(type(exc)), str(exc))
