"""func.utils: the result helpers func scripts use."""

from func_amqp.utils import REMOTE_ERROR, is_error, nice_exception, remote_error

__all__ = ["REMOTE_ERROR", "is_error", "nice_exception", "remote_error"]
