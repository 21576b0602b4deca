"""func.minion.func_arg: argument registration checks and their exceptions."""

from func_amqp.minion.func_arg import (
    ArgCompatibility,
    ArgumentRegistrationError,
    IncompatibleTypesException,
    NonExistingMethodRegistered,
    UnregisteredMethodArgument,
)

__all__ = [
    "ArgCompatibility",
    "ArgumentRegistrationError",
    "IncompatibleTypesException",
    "NonExistingMethodRegistered",
    "UnregisteredMethodArgument",
]
