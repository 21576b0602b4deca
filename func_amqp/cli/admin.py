"""``func-amqp``: administration of what func-amqp runs besides minions and overlords.

Each command group (``broker``, ``minions``, ``ca``, ``certmaster``, ``jobs``) is a
:class:`CommandGroup` subclass listed in :data:`GROUPS`: it adds its own subparser and
handlers, so a new group is one small class and one line here. Handlers take the parsed
arguments and the resolved :class:`Paths` and return the exit status; a
:class:`FuncAmqpError` becomes one ``func-amqp: error: ...`` line and status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from func_amqp import __version__
from func_amqp.broker.definitions import definitions_json
from func_amqp.broker.node import ROLES, PrivateBroker
from func_amqp.cli.common import (
    EXIT_FAILED,
    CommandGroup,
    Handler,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    USER_ERRORS,
    positive_seconds,
    report,
    setup_logging,
)
from func_amqp.cli.jobs import JobsCommands
from func_amqp.config import MinionConfig, OverlordConfig, Paths, resolve_broker_url
from func_amqp.minion.certmaster import serve_certmaster
from func_amqp.minion.daemon import run_until_signalled
from func_amqp.overlord.caller import AsyncOverlord
from func_amqp.overlord.directory import MinionDirectory
from func_amqp.security.ca import CertificateAuthority
from func_amqp.broker.node import amqp10_url

if TYPE_CHECKING:
    from func_amqp.cli.common import Subcommands

PROG = "func-amqp"
EXIT_NOT_RUNNING = 3  # systemctl's status code for a stopped unit
DEFAULT_TIMEOUT = 60.0

class BrokerCommands(CommandGroup):
    """The private RabbitMQ node for development and tests."""

    name = "broker"
    help = "manage the private RabbitMQ node kept in the state directory"

    def add_actions(self, actions: Subcommands) -> None:
        start = actions.add_parser("start", help="start the node and print its URL")
        _add_timeout(start, "how long to wait for the node to boot")
        start.add_argument(
            "--tls",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="TLS only, each client logging in with its certificate from the func-amqp CA "
            "(--no-tls: plain AMQP with guest; default: the mode it last ran in)",
        )
        start.set_defaults(handler=self.start)
        stop = actions.add_parser("stop", help="stop the node")
        _add_timeout(stop, "how long to wait for a clean shutdown")
        stop.set_defaults(handler=self.stop)
        status = actions.add_parser(
            "status", help="show whether the node runs (exit status 3 when stopped)"
        )
        status.set_defaults(handler=self.status)
        url = actions.add_parser("url", help="print the URL of the running node")
        url.add_argument(
            "--amqp10", action="store_true", help="the URL for the AMQP 1.0 transport (amqp10://) instead"
        )
        url.set_defaults(handler=self.url)
        definitions = actions.add_parser(
            "definitions",
            help="print func-amqp's exchanges as RabbitMQ definitions, for "
            "'rabbitmqctl import_definitions' on a broker that AMQP 1.0 clients use",
        )
        definitions.set_defaults(handler=self.definitions)
        grant = actions.add_parser(
            "grant", help="let the certificate named CN log in to the running node, confined to a role"
        )
        grant.add_argument("cn", metavar="CN", help="the certificate's common name (the host name)")
        grant.add_argument("--role", required=True, choices=ROLES, help="what the user may touch")
        grant.set_defaults(handler=self.grant)
        revoke = actions.add_parser(
            "revoke-user", help="remove CN's broker user, closing its connections"
        )
        revoke.add_argument("cn", metavar="CN", help="the certificate's common name (the host name)")
        revoke.set_defaults(handler=self.revoke_user)

    def start(self, args: argparse.Namespace, paths: Paths) -> int:
        print(PrivateBroker(paths).start(timeout=args.timeout, tls=args.tls))
        return EXIT_OK

    def grant(self, args: argparse.Namespace, paths: Paths) -> int:
        PrivateBroker(paths).grant(args.cn, args.role)
        print(f"granted {args.cn} the {args.role} role")
        return EXIT_OK

    def revoke_user(self, args: argparse.Namespace, paths: Paths) -> int:
        if not PrivateBroker(paths).revoke_user(args.cn):
            return _error(f"the private broker has no user {args.cn}")
        print(f"revoked {args.cn}")
        return EXIT_OK

    def stop(self, args: argparse.Namespace, paths: Paths) -> int:
        stopped = PrivateBroker(paths).stop(timeout=args.timeout)
        print("stopped" if stopped else "not running")
        return EXIT_OK

    def status(self, args: argparse.Namespace, paths: Paths) -> int:
        st = PrivateBroker(paths).status()
        print("running" if st.running else "stopped")
        print(f"url:  {st.url or '-'}")
        print(f"mode: {st.mode}")
        print(f"node: {st.node}")
        print(f"pid:  {st.pid if st.pid is not None else '-'}")
        print(f"dir:  {st.directory}")
        return EXIT_OK if st.running else EXIT_NOT_RUNNING

    def url(self, args: argparse.Namespace, paths: Paths) -> int:
        url = PrivateBroker(paths).url
        if url is None:
            return _error(
                f"the private broker is not running; start it with '{PROG} broker start'"
            )
        print(amqp10_url(url) if args.amqp10 else url)
        return EXIT_OK

    def definitions(self, args: argparse.Namespace, paths: Paths) -> int:
        sys.stdout.write(definitions_json())
        return EXIT_OK


class MinionsCommands(CommandGroup):
    """The overlord's directory of minions (docs/architecture.md: presence)."""

    name = "minions"
    help = "list the minions this overlord knows, or forget retired ones"

    def add_actions(self, actions: Subcommands) -> None:
        listing = actions.add_parser("list", help="known minions, and whether each answers now")
        listing.set_defaults(handler=self.list)
        forget = actions.add_parser("forget", help="drop retired minions from the directory")
        forget.add_argument("names", nargs="+", metavar="NAME")
        forget.set_defaults(handler=self.forget)

    def list(self, args: argparse.Namespace, paths: Paths) -> int:
        async def locate() -> dict[str, object]:
            async with AsyncOverlord(config_dir=args.conf) as ol:
                return dict(await ol.locate())

        up = asyncio.run(locate())
        known = MinionDirectory.load(paths.minion_directory_file).minions
        for name in sorted(known.keys() | up.keys()):
            info = known.get(name, {})
            state = "up" if name in up else "down"
            modules = info.get("modules", [])
            listed = ",".join(str(m) for m in modules) if isinstance(modules, list) else "-"
            print(f"{name}\t{state}\t{info.get('version', '-')}\t{listed}")
        return EXIT_OK

    def forget(self, args: argparse.Namespace, paths: Paths) -> int:
        directory = MinionDirectory.load(paths.minion_directory_file)
        gone = directory.forget(name.lower() for name in args.names)
        directory.save()
        for name in gone:
            print(f"forgot {name}")
        unknown = sorted({n.lower() for n in args.names} - set(gone))
        if unknown:
            return _error(f"not in the minion directory: {', '.join(unknown)}")
        return EXIT_OK


class CaCommands(CommandGroup):
    """certmaster-ca: the certificate authority's verbs, as options of one command."""

    name = "ca"
    help = "manage the certificate authority: requests, signing, revocation (certmaster-ca)"

    def __init__(self) -> None:
        self._parser: argparse.ArgumentParser | None = None

    def add_to(self, commands: Subcommands) -> None:
        parser = commands.add_parser(self.name, help=self.help, description=self.help)
        verbs = parser.add_mutually_exclusive_group()
        verbs.add_argument("--init", action="store_true", help="create the certificate authority unless it exists")
        verbs.add_argument("-l", "--list", action="store_true", help="list the requests waiting to be signed")
        verbs.add_argument("-s", "--sign", nargs="+", metavar="HOST", help="sign the requests of these hosts (globs)")
        verbs.add_argument(
            "-c", "--clean", nargs="+", metavar="HOST",
            help="remove the requests and certificates of these hosts (globs); this does not revoke",
        )
        verbs.add_argument("--list-signed", nargs="*", metavar="GLOB", help="list the hosts with signed certificates")
        verbs.add_argument(
            "--list-cert-hash", nargs="*", metavar="GLOB",
            help="list signed certificates as <CN>-<hash>, the names ACL files use",
        )
        verbs.add_argument("--revoke", nargs="+", metavar="HOST", help="revoke these hosts' certificates (globs)")
        verbs.add_argument("--list-revoked", action="store_true", help="list the revoked certificates")
        parser.set_defaults(handler=self.run)
        self._parser = parser

    def run(self, args: argparse.Namespace, paths: Paths) -> int:
        """Run the one verb given; without one print help and fail, as certmaster-ca did."""
        ca = CertificateAuthority.from_paths(paths)
        verbs: dict[str, Callable[[CertificateAuthority, Any], int]] = {
            "init": self.init,
            "list": self.list_pending,
            "sign": self.sign,
            "clean": self.clean,
            "list_signed": self.list_signed,
            "list_cert_hash": self.list_cert_hash,
            "revoke": self.revoke,
            "list_revoked": self.list_revoked,
        }
        for dest, verb in verbs.items():
            value = getattr(args, dest)
            if value is not None and value is not False:
                return verb(ca, value)
        assert self._parser is not None
        self._parser.print_help()
        return EXIT_FAILED

    def init(self, ca: CertificateAuthority, _: object) -> int:
        existed = ca.exists()
        cert = ca.init()
        what = "certificate authority exists" if existed else "created certificate authority"
        print(f"{what}: {cert.subject.rfc4514_string()} in {ca.directory}")
        return EXIT_OK

    def list_pending(self, ca: CertificateAuthority, _: object) -> int:
        names = ca.list_pending()
        print("\n".join(names) if names else "No certificates to sign")
        return EXIT_OK

    def sign(self, ca: CertificateAuthority, patterns: list[str]) -> int:
        names = ca.sign(patterns)
        for name in names:
            print(f"{name} signed")
        return _unmatched("no pending request matches", patterns, names)

    def clean(self, ca: CertificateAuthority, patterns: list[str]) -> int:
        names = ca.clean(patterns)
        for name in names:
            print(f"{name} cleaned")
        return _unmatched("no request or certificate matches", patterns, names)

    def list_signed(self, ca: CertificateAuthority, patterns: list[str]) -> int:
        for name in ca.list_signed(patterns or None):
            print(name)
        return EXIT_OK

    def list_cert_hash(self, ca: CertificateAuthority, patterns: list[str]) -> int:
        for name in ca.cert_hash_names(patterns or None):
            print(name)
        return EXIT_OK

    def revoke(self, ca: CertificateAuthority, patterns: list[str]) -> int:
        names = ca.revoke(patterns)
        for name in names:
            print(f"{name} revoked")
        return _unmatched("no signed certificate matches", patterns, names)

    def list_revoked(self, ca: CertificateAuthority, _: object) -> int:
        for entry in ca.list_revoked():
            print(f"{entry.cn}\t{entry.serial:X}\t{entry.revoked_at:%Y-%m-%d %H:%M:%S %Z}")
        return EXIT_OK


def _unmatched(what: str, patterns: Sequence[str], names: Sequence[str]) -> int:
    """Fail naming the globs that matched nothing, as ``minions forget`` does."""
    missed = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p.lower()) for n in names)]
    if missed:
        return _error(f"{what}: {', '.join(missed)}")
    return EXIT_OK


class CertmasterCommand(CommandGroup):
    """The certmaster agent: serves certificate requests from new minions."""

    name = "certmaster"
    help = "serve certificate requests from minions over the broker (foreground)"

    def add_to(self, commands: Subcommands) -> None:
        parser = commands.add_parser(self.name, help=self.help, description=self.help)
        parser.add_argument("--name", default=MinionConfig().certmaster, help="agent name minions ask (default: %(default)s)")
        parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: %(default)s)")
        parser.set_defaults(handler=self.serve)

    def serve(self, args: argparse.Namespace, paths: Paths) -> int:
        setup_logging(args.log_level)
        url = resolve_broker_url(OverlordConfig.load(paths.overlord_conf).broker_url, paths)
        run_until_signalled(lambda stop: serve_certmaster(paths, args.name, url, stop))
        return EXIT_OK


GROUPS: tuple[CommandGroup, ...] = (BrokerCommands(), MinionsCommands(), CaCommands(), CertmasterCommand(), JobsCommands())


def _add_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"{what} (default: {DEFAULT_TIMEOUT:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Administer func-amqp: the private broker, and more."
    )
    parser.add_argument(
        "-c",
        "--conf",
        metavar="DIR",
        help="configuration directory (default: per user, or /etc/func-amqp for root)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_to(commands)
    return parser


def _error(message: str) -> int:
    """One ``func-amqp: error:`` line; details such as a log excerpt follow it."""
    report(PROG, message)
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``func-amqp`` command; return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args, Paths.resolve(args.conf))
    except USER_ERRORS as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
