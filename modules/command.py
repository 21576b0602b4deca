"""func's ``command`` module: run shell commands on the minion.

``run`` hands the command line to ``/bin/sh`` (``shell=True``) on purpose: func
documented ``command.run`` as taking a shell command line, and callers rely on
pipes, redirections and globbing in it. Whoever may call it can run anything the
minion's user can, so the ACLs must grant it only to trusted callers.
"""

import os
import subprocess
from typing import Any

from func_amqp.minion.modules.func_module import FuncModule
from func_amqp.minion import progress
from func_amqp.minion.process import ended_by_cancel

ENCODING = "utf-8"

_COMMAND_ARG = {
    "type": "string",
    "optional": False,
    "description": "The command that is going to be used",
}


class Command(FuncModule):
    version = "0.0.1"
    api_version = "0.0.2"
    description = "Works with shell commands."

    def run(self, command: str, env: dict[str, str] | None = None) -> list[Any]:
        """Run a shell command line; return [return code, stdout, stderr]. A cancel
        ends it (SIGTERM to its process group).

        Not for interactive commands: stdin is empty. ``env``, when given, is the
        whole environment of the command, as in func. Output that is not UTF-8 is
        decoded with replacement characters so that it can always travel.
        """
        proc = subprocess.Popen(
            command,
            shell=True,
            env=env or None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a cancel ends the command and everything it started
        )
        with ended_by_cancel(proc.pid):
            stdout, stderr = proc.communicate()
        progress.check_cancelled()  # ended by a cancel: say so, not "exit status -15"
        return [proc.returncode, stdout.decode(ENCODING, errors="replace"), stderr.decode(ENCODING, errors="replace")]

    def exists(self, command: str) -> bool:
        """Whether ``command`` is the path of an executable file."""
        return os.path.isfile(command) and os.access(command, os.X_OK)

    def register_method_args(self) -> dict[str, Any]:
        return {
            "run": {
                "args": {
                    "command": _COMMAND_ARG,
                    "env": {
                        "type": "hash",
                        "optional": True,
                        "default": None,
                        "description": "The command's whole environment (default: inherit)",
                    },
                },
                "description": "Run a specified command",
            },
            "exists": {
                "args": {"command": _COMMAND_ARG},
                "description": "Check if specific command exists",
            },
        }
