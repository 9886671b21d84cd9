"""`python -m svc`: operational commands."""

from __future__ import annotations

import argparse
import sys

from svc.settings import ConfigError, load_settings


def check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and print it with secrets masked."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    width = max(len(name) for name in settings.masked())
    for name, value in settings.masked().items():
        print(f"{name:<{width}}  {'' if value is None else value}")
    print("configuration OK", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svc", description="svc operational commands.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check-config",
        help="validate the configuration and print it with secrets masked",
        description=check_config.__doc__,
    )
    check.set_defaults(run=check_config)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
