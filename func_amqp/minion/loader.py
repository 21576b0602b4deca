"""Find func modules on disk and instantiate them, as func's module_loader did.

Shipped modules live in the package ``func_amqp.modules`` (the top-level
``modules/`` folder of the source tree); site modules live in the directories
named by minion.conf ``module_dirs``. A module's name is its path relative to its
directory with ``/`` replaced by ``.`` (``iptables/port.py`` -> ``iptables.port``;
a package's ``__init__.py`` gives the directory's name).

Site directories are imported under a private package name per directory, so a
site module called ``json`` or ``test`` cannot shadow the standard library.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

from func_amqp.minion.modules.func_module import FuncModule

SHIPPED_PACKAGE = "func_amqp.modules"
SITE_PACKAGE_PREFIX = "_func_amqp_site_"

# Where the shipped modules sit in a source checkout that is not installed.
_SOURCE_TREE_MODULES = Path(__file__).resolve().parents[2] / "modules"

_log = logging.getLogger(__name__)


def load_modules(
    module_list: Sequence[str] = (),
    extra_dirs: Sequence[Path] = (),
    logger: logging.Logger | None = None,
) -> dict[str, FuncModule]:
    """``{module name: instance}`` for the shipped modules, then each site directory.

    ``module_list`` holds fnmatch patterns on module names (empty: load all). A
    module that cannot be imported or instantiated is skipped with a warning; a
    site module replaces a module of the same name loaded before it.
    """
    log = logger or _log
    importlib.invalidate_caches()
    modules: dict[str, FuncModule] = {}
    origins: dict[str, Path] = {}
    sources = [(shipped_modules_dir(), SHIPPED_PACKAGE)]
    for directory in extra_dirs:
        path = Path(directory)
        if not path.is_dir():
            log.warning("module directory %s does not exist; skipped", path)
            continue
        sources.append((path, _site_package(path)))
    for directory, package in sources:
        for name, file in _wanted(module_files(directory), module_list):
            instance = _load_one(f"{package}.{name}", file, log)
            if instance is None:
                continue
            if name in origins:
                log.info("module %s from %s overrides %s", name, file, origins[name])
            modules[name] = instance
            origins[name] = file
    return modules


def shipped_modules_dir() -> Path:
    """The directory of the shipped modules, importable as ``func_amqp.modules``."""
    try:
        package = importlib.import_module(SHIPPED_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != SHIPPED_PACKAGE:
            raise
        package = _register_package(SHIPPED_PACKAGE, _SOURCE_TREE_MODULES)
    return Path(next(iter(package.__path__)))


def module_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(module name, file) for every ``.py`` file under ``directory``, sorted."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        relative = Path(root).relative_to(directory)
        for filename in sorted(files):
            if not filename.endswith(".py"):
                continue
            name = _module_name(relative, filename)
            if name:
                yield name, Path(root) / filename


def _module_name(relative_dir: Path, filename: str) -> str:
    """``a/b.py`` -> ``a.b``; ``a/__init__.py`` -> ``a``; the top ``__init__`` -> ''."""
    parts = list(relative_dir.parts)
    stem = filename[: -len(".py")]
    if stem != "__init__":
        parts.append(stem)
    return ".".join(parts)


def _wanted(
    files: Iterator[tuple[str, Path]], patterns: Sequence[str]
) -> Iterator[tuple[str, Path]]:
    for name, file in files:
        if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
            yield name, file


def _load_one(import_name: str, file: Path, log: logging.Logger) -> FuncModule | None:
    """Import one file and instantiate its FuncModule classes; the last one wins."""
    try:
        python_module = importlib.import_module(import_name)
        instance = None
        for cls in _module_classes(python_module):
            instance = cls()
    except Exception as exc:  # a broken module must not stop the minion
        log.warning("cannot load module file %s: %s: %s", file, type(exc).__name__, exc)
        log.debug("traceback of the failed load of %s", file, exc_info=True)
        return None
    if instance is None:
        log.debug("%s defines no FuncModule class", file)
    return instance


def _module_classes(python_module: types.ModuleType) -> Iterator[type[FuncModule]]:
    """FuncModule subclasses defined (not imported) in ``python_module``, in order."""
    for value in vars(python_module).values():
        if (
            inspect.isclass(value)
            and issubclass(value, FuncModule)
            and value is not FuncModule
            and value.__module__ == python_module.__name__
        ):
            yield value


def _site_package(directory: Path) -> str:
    """A private package over ``directory``, one name per resolved path."""
    resolved = directory.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    name = SITE_PACKAGE_PREFIX + digest
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(resolved)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return name


def _register_package(name: str, directory: Path) -> types.ModuleType:
    """Import ``directory/__init__.py`` as package ``name``."""
    spec = importlib.util.spec_from_file_location(
        name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {name} from {directory}", name=name)
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[name]
        raise
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, package)
    return package
