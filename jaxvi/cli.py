"""The command line: ``jaxvi demo`` and ``jaxvi bench`` (also ``python -m jaxvi ...``)."""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxvi", description="jaxvi: latent-variable models fitted with JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="fit models three ways (EM, SVI, amortized), write jaxvi-report/")
    run_demo.add_argument("--quick", action="store_true", help="small fits, for a smoke run")
    run_demo.add_argument("--out", default="jaxvi-report", help="the report's folder (default: jaxvi-report)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from jaxvi.demo import run

        run(args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
