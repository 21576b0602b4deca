"""``funcd``: the minion daemon, in the foreground (systemd style)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import func_amqp
from func_amqp.cli.common import EXIT_OK, run_main, setup_logging
from func_amqp.config import MinionConfig, Paths
from func_amqp.errors import ConfigError
from func_amqp.minion import daemon
from func_amqp.transport.base import masked_url

PROG = "funcd"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve func modules to overlords over an AMQP broker.",
    )
    parser.add_argument("-c", "--conf", metavar="DIR", help="configuration directory (default: %(default)s)")
    parser.add_argument("--name", help="minion name (default: minion_name in minion.conf, else the host name)")
    parser.add_argument("--list-modules", action="store_true", help="print the loaded modules and exit")
    parser.add_argument("--info", action="store_true", help="print configuration, broker and modules, then exit")
    parser.add_argument("--log-level", help="override log_level from minion.conf (DEBUG, INFO, ...)")
    parser.add_argument("-v", "--version", action="version", version=f"%(prog)s {func_amqp.__version__}")
    parser.add_argument("daemon", nargs="?", choices=["daemon"], help=argparse.SUPPRESS)
    return parser


def print_info(minion: daemon.Minion) -> None:
    try:
        url = masked_url(minion.broker_url)
    except ConfigError as exc:
        url = f"(none: {exc})"
    print(f"minion name:      {minion.name}")
    print(f"config directory: {minion.paths.config_dir}")
    print(f"state directory:  {minion.paths.state_dir}")
    print(f"broker:           {url}")
    for key, value in vars(minion.config).items():
        print(f"  {key} = {value}")
    identity = minion.identity()
    state = "enrolled" if identity.is_complete() else "none yet (asks the certmaster at start)"
    print(f"certificate:      {identity.cert_path} ({state})")
    print("modules:")
    for module, methods in minion.interface.inventory().items():
        print(f"  {module}: {', '.join(methods)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        paths = Paths.resolve(args.conf)
        config = MinionConfig.load(paths.minion_conf)
        setup_logging(args.log_level or config.log_level)
        minion = daemon.Minion.from_config(paths, config, args.name)
        if args.list_modules:
            print("\n".join(minion.interface.list_modules()))
            return EXIT_OK
        if args.info:
            print_info(minion)
            return EXIT_OK
        daemon.run(minion)
        return EXIT_OK

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
