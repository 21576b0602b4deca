"""func.minion.codes: func's exception classes."""

from func_amqp.errors import (
    AccessToMethodDenied,
    FuncException,
    InvalidMethodException,
    ModuleNotFoundException,
)

__all__ = ["AccessToMethodDenied", "FuncException", "InvalidMethodException", "ModuleNotFoundException"]
