"""The overlord's minion directory: which minions exist, even while they are down.

func listed minions from certmaster's signed certificates. On a broker, presence is
live (agent locate) but a stopped minion is silent, so the overlord remembers every
minion it has seen in ``<state_dir>/minions.json``. A glob such as ``*`` targets the
remembered minions plus the ones answering now; a remembered minion that is down then
fails fast with "not connected" instead of vanishing from the results.
``func-amqp minions forget NAME`` drops a retired minion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from func_amqp.protocol.messages import AgentInfo
from func_amqp.protocol.names import valid_minion_name

_log = logging.getLogger(__name__)


@dataclass
class MinionDirectory:
    path: Path
    minions: dict[str, dict[str, object]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "MinionDirectory":
        """Read the directory; a missing or damaged file gives an empty one (logged)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, RecursionError) as exc:
            _log.warning("ignoring unreadable minion directory %s: %s", path, exc)
            return cls(path)
        entries = raw.get("minions", {}) if isinstance(raw, dict) else {}
        if not isinstance(entries, dict):
            _log.warning("ignoring damaged minion directory %s: 'minions' is not a map", path)
            return cls(path)
        minions = {
            name: dict(info) if isinstance(info, dict) else {}
            for name, info in entries.items()
            if isinstance(name, str) and valid_minion_name(name)
        }
        return cls(path, minions)

    def names(self) -> set[str]:
        return set(self.minions)

    def record(self, agents: Iterable[AgentInfo]) -> bool:
        """Remember these minions as seen now; True if anything new was learned."""
        changed = False
        for agent in agents:
            if not valid_minion_name(agent.name):
                continue
            entry = {"version": agent.version, "modules": list(agent.modules), "started": agent.started}
            if self.minions.get(agent.name) != entry:
                self.minions[agent.name] = entry
                changed = True
        return changed

    def forget(self, names: Iterable[str]) -> list[str]:
        gone = [n for n in names if self.minions.pop(n, None) is not None]
        return gone

    def save(self) -> None:
        """Write atomically; a read-only state dir only costs the memory (logged)."""
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".minions.")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"minions": self.minions}, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            _log.warning("cannot save the minion directory %s: %s", self.path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
