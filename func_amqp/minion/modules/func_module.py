"""``FuncModule``, the base class of every func module, and its per-module options.

A module is a plain class: each public method is callable remotely as
``<module>.<method>``. Modules import only this file; they know nothing of AMQP.

Nothing here reads disk when a module is constructed: the minion's config and a
module's options file are read the first time ``self.config`` or ``self.options``
is used, so a module can be instantiated (and tested) anywhere.
"""

from __future__ import annotations

import configparser
import io
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from func_amqp.config import (
    SECTION,
    MinionConfig,
    Paths,
    parse_bool,
    parse_list,
    read_section,
)
from func_amqp.errors import ConfigError
from func_amqp.files import write_text_atomic
from func_amqp.minion.func_arg import validate_registration

LOGGER_NAME = "func_amqp.modules"

# Methods func never exposes remotely although they are public.
NOT_REMOTE = frozenset({"register_rpc", "register_method_args"})

# --- the running minion's settings ------------------------------------------------------

class _Running:
    """What :func:`configure` set; None means "use the default"."""

    config: MinionConfig | None = None
    paths: Paths | None = None


def configure(config: MinionConfig | None = None, paths: Paths | None = None) -> None:
    """Set the config and paths every module sees; funcd calls this once at start.

    ``None`` restores the default: ``MinionConfig()`` and ``Paths.resolve()``.
    """
    _Running.config = config
    _Running.paths = paths


def current_config() -> MinionConfig:
    """The running minion's config (defaults until :func:`configure` is called)."""
    return _Running.config if _Running.config is not None else MinionConfig()


def current_paths() -> Paths:
    """The running minion's paths (the environment's defaults until configured)."""
    return _Running.paths if _Running.paths is not None else Paths.resolve()


# --- per-module options -------------------------------------------------------------------

B = TypeVar("B", bound="BaseConfig")


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return "" if value is None else str(value)


def _parser_for(default: Any) -> Callable[[str], Any]:
    """How a string from the options file becomes a value like ``default``."""
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, (int, float)):
        return type(default)
    if isinstance(default, tuple):
        return parse_list
    if isinstance(default, list):
        return lambda raw: list(parse_list(raw))
    return str


_OPTION_TYPES = (str, int, float, bool, tuple, list, type(None))


class BaseConfig:
    """Declarative options: each public class attribute is an option and its default.

    Values come from ``[main]`` of the module's options file and are parsed like
    the default's type (bool, int, float, str, or a comma/space separated list).
    Assigning a string to an option parses it the same way, so a value set
    remotely behaves like one read from the file.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, default in cls.defaults().items():
            if not isinstance(default, _OPTION_TYPES):
                raise TypeError(
                    f"option {cls.__qualname__}.{name} has a default of type "
                    f"{type(default).__name__}; use str, int, float, bool, list or tuple"
                )

    def __init__(self, values: dict[str, str] | None = None, source: str = "") -> None:
        for name, default in self.defaults().items():
            object.__setattr__(self, name, default)
        for name, raw in (values or {}).items():
            if name in self.defaults():
                self._set_parsed(name, raw, source)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Option names and defaults, in declaration order, subclasses last."""
        found: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if _is_option(name, value):
                    found[name] = value
        return found

    @classmethod
    def load(cls: type[B], path: Path) -> B:
        """Options from ``path``; a missing file gives the defaults."""
        if not path.exists():
            return cls()
        return cls(read_section(path), str(path))

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) pairs, in declaration order."""
        return [(name, getattr(self, name)) for name in self.defaults()]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def value(self, name: str) -> Any:
        """The option called ``name``; AttributeError naming the options otherwise."""
        self._check_known(name)
        return getattr(self, name)

    def save(self, path: Path) -> None:
        """Write every option to ``path``'s ``[main]`` section, atomically."""
        parser = configparser.ConfigParser(interpolation=None)
        parser[SECTION] = {name: _format_value(value) for name, value in self.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        parser.write(text)
        write_text_atomic(path, text.getvalue())

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_known(name)
        if isinstance(value, str):
            self._set_parsed(name, value, "")
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseConfig) or type(other) is not type(self):
            return NotImplemented
        return self.items() == other.items()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self.items())
        return f"{type(self).__qualname__}({values})"

    def _check_known(self, name: str) -> None:
        if name not in self.defaults():
            raise AttributeError(
                f"{type(self).__qualname__} has no option {name!r}; options: "
                f"{', '.join(self.defaults()) or 'none'}"
            )

    def _set_parsed(self, name: str, raw: str, source: str) -> None:
        try:
            value = _parser_for(self.defaults()[name])(raw)
        except ValueError as exc:
            where = f" in {source}" if source else ""
            raise ConfigError(f"invalid value for option '{name}'{where}: {exc}") from None
        object.__setattr__(self, name, value)


def _is_option(name: str, value: Any) -> bool:
    if name.startswith("_"):
        return False
    return not (callable(value) or isinstance(value, (property, classmethod, staticmethod)))


# Class attributes that compute data: never called while listing methods.
_DATA_ATTRIBUTES = (property, functools.cached_property)

# --- the module base class ----------------------------------------------------------------


class FuncModule:
    """Base class of func modules: subclass it and add public methods.

    Set ``version``, ``api_version`` and ``description``; declare options in a
    nested ``class Config(FuncModule.Config)``; describe arguments in
    ``register_method_args()``. A fresh instance serves each call unless
    ``_single`` is true.
    """

    version: ClassVar[str] = "0.0.0"
    api_version: ClassVar[str] = "0.0.0"
    description: ClassVar[str] = "No Description provided"
    _single: ClassVar[bool] = False

    class Config(BaseConfig):
        """No options; a module's own ``Config`` adds them as class attributes."""

    def __init__(self) -> None:
        """Takes no arguments and reads nothing: config and options load lazily."""

    @functools.cached_property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"{LOGGER_NAME}.{type(self).__name__}")

    @property
    def config(self) -> MinionConfig:
        """The running minion's configuration."""
        return current_config()

    @property
    def options_file(self) -> Path:
        """func's ``modules/<ClassName>.conf`` under the minion's config dir."""
        return current_paths().module_conf(type(self).__name__)

    @functools.cached_property
    def options(self) -> BaseConfig:
        """This module's options, read from :attr:`options_file` on first use."""
        return type(self).Config.load(self.options_file)

    def save_config(self) -> bool:
        """Write the current options back to :attr:`options_file`."""
        self.options.save(self.options_file)
        return True

    def config_items(self) -> list[tuple[str, Any]]:
        return self.options.items()

    def register_rpc(
        self, handlers: dict[str, Callable[..., Any]], module_name: str
    ) -> None:
        """Add ``<module_name>.<method>`` for the base methods, then the public ones.

        Public methods go in last so that a subclass's method of the same name wins.
        """
        for name, method in self._base_methods().items():
            handlers[f"{module_name}.{name}"] = method
        for name, method in self._public_methods():
            handlers[f"{module_name}.{name}"] = method

    def list_methods(self) -> list[str]:
        """The remotely callable method names: public methods plus the base ones."""
        names = [name for name, _ in self._public_methods()]
        return names + [name for name in self._base_methods() if name not in names]

    def grep(self, word: str) -> dict[str, Any]:
        """Search the module's data for ``word``; modules override this (see findout)."""
        return {}

    def get_method_args(self) -> dict[str, Any]:
        """The validated ``register_method_args()`` result, with ``order`` set."""
        registration = self.register_method_args()
        if not registration:
            return {}
        return validate_registration(self, registration)

    def register_method_args(self) -> dict[str, Any]:
        """Describe the methods' arguments for overlords; none by default."""
        return {}

    def _base_methods(self) -> dict[str, Callable[..., Any]]:
        return {
            "module_version": self._module_version,
            "module_api_version": self._module_api_version,
            "module_description": self._module_description,
            "list_methods": self.list_methods,
            "grep": self.grep,
            "get_method_args": self.get_method_args,
        }

    def _public_methods(self) -> Iterator[tuple[str, Callable[..., Any]]]:
        """(name, bound method) for each public method, without touching properties."""
        for name in dir(type(self)):
            if name.startswith("_") or name in NOT_REMOTE:
                continue
            if isinstance(inspect.getattr_static(type(self), name), _DATA_ATTRIBUTES):
                continue
            value = getattr(self, name)
            if inspect.ismethod(value):
                yield name, value

    def _module_version(self) -> str:
        return self.version

    def _module_api_version(self) -> str:
        return self.api_version

    def _module_description(self) -> str:
        return self.description


GrepMethod = Callable[[Any, str], dict[Any, Any]]


def findout(grep: GrepMethod) -> Callable[[Any, str], dict[str, Any]]:
    """Decorate a module's ``grep``: it returns ``{bound_method: hits}``, callers get
    ``{"<python module>.<method>": hits}`` with empty hits dropped (func's decorator).

    The word is stripped and lower-cased before the search, as func did.
    """

    @functools.wraps(grep)
    def wrapper(self: Any, word: str) -> dict[str, Any]:
        found = grep(self, word.strip().lower())
        return {_found_key(key): hits for key, hits in (found or {}).items() if hits}

    return wrapper


def _found_key(key: Any) -> str:
    owner = getattr(key, "__self__", None)
    if owner is None:
        return str(key)
    return f"{type(owner).__module__}.{key.__name__}"
