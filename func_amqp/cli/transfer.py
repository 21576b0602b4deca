"""``func <spec> copyfile`` and ``func <spec> getfile``: func's file-transfer subcommands.

    func "web*" copyfile -f ./motd --remotepath /etc/motd [--force] [-v]
    func "web*" getfile -r /var/log/messages -l ./logs [-v]

One line per minion; exit status 0 when every minion succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
from typing import Any

from func_amqp import utils
from func_amqp.cli.common import print_outcomes
from func_amqp.overlord.caller import AsyncOverlord
from func_amqp.overlord.local import copyfile, getfile



def _per_minion(ol: AsyncOverlord, results: Any) -> dict[str, Any]:
    """Results keyed by minion, also when the overlord returned a bare noglobs result."""
    if isinstance(results, dict) and not ol.noglobs:
        return results
    return {ol.server_spec: results}


async def cmd_copyfile(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    results = _per_minion(ol, await copyfile.send(ol, args.file, args.remotepath, force=args.force))

    def outcome(result: Any) -> tuple[bool, str]:
        if utils.is_error(result):
            return False, result[2]
        if result == copyfile.UNCHANGED:
            return True, "unchanged" + (f" ({args.remotepath})" if args.verbose else "")
        return True, "copied" + (f" to {args.remotepath}" if args.verbose else "")

    return print_outcomes({minion: outcome(result) for minion, result in results.items()})


async def cmd_getfile(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    results = _per_minion(ol, await getfile.get(ol, args.remotesource, args.localdir))
    return print_outcomes(
        {
            minion: (status == getfile.OK, detail if status != getfile.OK or args.verbose else "")
            for minion, (status, detail) in results.items()
        }
    )


def add_transfer_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``copyfile`` and ``getfile`` to ``sub``, the func parser's subparsers."""
    cp = sub.add_parser("copyfile", help="copy a local file to every targeted minion")
    cp.add_argument("-f", "--file", required=True, help="the local file to send")
    cp.add_argument("--remotepath", required=True, metavar="PATH", help="absolute path on the minions")
    cp.add_argument("--force", action="store_true", help="send even to minions whose file is identical")
    cp.add_argument("-v", "--verbose", action="store_true", help="name the remote path in each line")
    cp.set_defaults(handler=cmd_copyfile)

    gf = sub.add_parser("getfile", help="fetch a file from every targeted minion into LOCALDIR/<minion>/")
    gf.add_argument("-r", "--remotesource", required=True, metavar="PATH", help="absolute path on the minions")
    gf.add_argument("-l", "--localdir", required=True, metavar="DIR", help="local folder; created if missing")
    gf.add_argument("-v", "--verbose", action="store_true", help="print where each copy was saved")
    gf.set_defaults(handler=cmd_getfile)
