"""setup.cfg lists packages explicitly (modules/ installs as func_amqp.modules): keep it whole."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _listed_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def _package_dirs() -> set[str]:
    found = set()
    for top in ("func_amqp", "func"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    if (ROOT / "modules" / "__init__.py").exists():
        found.add("func_amqp.modules")
    return found


def test_every_package_is_listed_in_setup_cfg() -> None:
    assert _listed_packages() == _package_dirs()


def test_shipped_modules_map_to_func_amqp_modules() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert "func_amqp.modules = modules" in parser["options"]["package_dir"]
