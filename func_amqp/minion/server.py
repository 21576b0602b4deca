"""The minion's handler table and dispatch: func's ``XmlRpcInterface``, without a wire.

``AmqpInterface`` maps ``"module.method"`` names to callables and hands out a
:class:`FuncApiMethod` per call. It reads nothing from disk and knows nothing of
AMQP: the message layer above it turns exceptions into error replies.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from func_amqp.errors import (
    ArgumentError,
    InvalidMethodException,
    ModuleNotFoundException,
)
from func_amqp.minion.modules.func_module import FuncModule

SYSTEM_MODULE = "system"

_log = logging.getLogger(__name__)


class FuncApiMethod:
    """One callable handler, called the way func called it (positional args only)."""

    def __init__(
        self, logger: logging.Logger, name: str, method: Callable[..., Any]
    ) -> None:
        self.logger = logger
        self.name = name
        self.method = method

    def __call__(self, *args: Any) -> Any:
        """Run the method on a fresh module instance (see :meth:`target`); raises."""
        self.logger.debug("calling %s", self.name)
        return self.target()(*args)

    def target(self) -> Callable[..., Any]:
        """The callable to run: bound to a new module instance, as func did, unless
        the method's name starts with ``_`` or the module sets ``_single = True``.

        A fresh instance keeps calls that run at the same time from sharing
        instance state.
        """
        owner: object = getattr(self.method, "__self__", None)
        method_name = getattr(self.method, "__name__", "")
        shared = not isinstance(owner, FuncModule) or owner._single
        if shared or method_name.startswith("_"):
            return self.method
        try:
            fresh = type(owner)()
        except Exception as exc:  # func fell back to the loaded instance too
            self.logger.warning(
                "cannot create a fresh %s for %s (%s); using the loaded instance",
                type(owner).__name__, self.name, exc,
            )
            return self.method
        return getattr(fresh, method_name, self.method)

    def check_arguments(self, args: Sequence[Any]) -> None:
        """Raise :class:`ArgumentError` when ``args`` cannot be passed positionally."""
        signature = _signature(self.method)
        if signature is None:
            return  # no introspectable signature: let the call decide
        try:
            signature.bind(*args)
        except TypeError:
            raise ArgumentError(
                f"{self.name} takes {describe_arity(signature)}, {len(args)} given"
            ) from None

    def __repr__(self) -> str:
        return f"FuncApiMethod({self.name!r})"


_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _signature(method: Any) -> inspect.Signature | None:
    """The call signature, computed once per function (methods are bound afresh per call)."""
    key = (getattr(method, "__func__", method), hasattr(method, "__self__"))
    if key not in _SIGNATURES:
        try:
            _SIGNATURES[key] = inspect.signature(method)
        except (TypeError, ValueError):
            _SIGNATURES[key] = None
    return _SIGNATURES[key]


def describe_arity(signature: inspect.Signature) -> str:
    """``2 arguments (numb1, numb2)``, ``1 to 2 arguments (command, env=None)``..."""
    positional = [
        p for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = sum(1 for p in positional if p.default is p.empty)
    varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    if varargs:
        count = f"at least {required}"
    elif required == len(positional):
        count = str(required)
    else:
        count = f"{required} to {len(positional)}"
    if count == "0":
        return "no arguments"
    noun = "argument" if count in ("1", "at least 1") else "arguments"
    shown = [str(p) for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    return f"{count} {noun} ({', '.join(shown)})"


class AmqpInterface:
    """The handler table of a minion's loaded modules plus the ``system.*`` methods."""

    def __init__(
        self, modules: Mapping[str, FuncModule], logger: logging.Logger | None = None
    ) -> None:
        self.modules = dict(modules)
        self.logger = logger or _log
        self.handlers: dict[str, Callable[..., Any]] = {}
        self._setup_handlers()

    def _setup_handlers(self) -> None:
        for name, module in self.modules.items():
            register = getattr(module, "register_rpc", None)
            if not callable(register):
                self.logger.warning("module %s has no register_rpc method; skipped", name)
                continue
            found: dict[str, Callable[..., Any]] = {}
            try:
                register(found, name)
            except Exception as exc:  # one bad module must not hide the others
                self.logger.warning("module %s cannot register its methods: %s", name, exc)
                continue
            self.handlers.update(found)
        self.handlers.update(self._system_handlers())

    def _system_handlers(self) -> dict[str, Callable[..., Any]]:
        """func's internal methods; ``system`` is not a module (list_modules omits it)."""
        return {
            f"{SYSTEM_MODULE}.listMethods": self.list_methods,
            f"{SYSTEM_MODULE}.list_methods": self.list_methods,
            f"{SYSTEM_MODULE}.list_modules": self.list_modules,
            f"{SYSTEM_MODULE}.inventory": self.inventory,
            f"{SYSTEM_MODULE}.grep": self.grep,
        }

    def list_modules(self) -> list[str]:
        return sorted(self.modules)

    def list_methods(self) -> list[str]:
        """Every ``module.method`` name, ``system.*`` included."""
        return sorted(self.handlers)

    def inventory(self) -> dict[str, list[str]]:
        """``{module: [method names]}`` for the loaded modules."""
        inventory: dict[str, list[str]] = {name: [] for name in self.modules}
        for handler in sorted(self.handlers):
            module, _, method = handler.rpartition(".")
            if module in inventory:
                inventory[module].append(method)
        return inventory

    def grep(self, word: str) -> dict[str, list[str]]:
        """Module and method names containing ``word`` (case-insensitive).

        Keys name the listing each hit comes from; empty listings are left out.
        """
        needle = word.strip().lower()
        listings = {
            f"{SYSTEM_MODULE}.list_modules": self.list_modules(),
            f"{SYSTEM_MODULE}.list_methods": self.list_methods(),
        }
        found = {
            key: [name for name in names if needle in name.lower()]
            for key, names in listings.items()
        }
        return {key: hits for key, hits in found.items() if hits}

    def get_dispatch_method(self, method: str) -> FuncApiMethod:
        """The handler for ``method``; raises when its module or the method is unknown."""
        handler = self.handlers.get(method)
        if handler is not None:
            return FuncApiMethod(self.logger, method, handler)
        module, _, name = method.rpartition(".")
        if module not in self.modules:
            raise _not_loaded(module or method)
        raise InvalidMethodException(f"module {module!r} has no method {name!r}")

    def get_method_args(self, module_name: str) -> dict[str, Any]:
        """The module's validated ``register_method_args()`` result."""
        return self._module(module_name).get_method_args()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each module's version, description and methods, for inventories."""
        methods = self.inventory()
        return {
            name: {
                "version": getattr(module, "version", ""),
                "api_version": getattr(module, "api_version", ""),
                "description": getattr(module, "description", ""),
                "methods": methods[name],
            }
            for name, module in sorted(self.modules.items())
        }

    def _module(self, module_name: str) -> FuncModule:
        try:
            return self.modules[module_name]
        except KeyError:
            raise _not_loaded(module_name) from None


def _not_loaded(module_name: str) -> ModuleNotFoundException:
    return ModuleNotFoundException(
        f"no module named {module_name!r} is loaded on this minion"
    )
