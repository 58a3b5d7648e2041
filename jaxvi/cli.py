"""The command line: ``jaxvi demo`` and ``jaxvi bench`` (also ``python -m jaxvi ...``)."""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxvi", description="jaxvi: latent-variable models fitted with JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="fit models three ways (EM, SVI, amortized), write jaxvi-report/")
    run_demo.add_argument("--quick", action="store_true", help="small fits, for a smoke run")
    run_demo.add_argument("--out", default="jaxvi-report", help="the report's folder (default: jaxvi-report)")
    run_bench = commands.add_parser("bench", help="run the benchmarks/ suite against the installed peers")
    run_bench.add_argument("names", nargs="*", help="benchmarks to run (default: all): gmm_em bayes_gmm hmm_em "
                                                     "svi_logreg vae_digits; with --scaling, families: gmm hmm_t "
                                                     "hmm_s svi vae")
    run_bench.add_argument("--quick", action="store_true", help="the benchmarks' smoke sizes")
    run_bench.add_argument("--repeats", type=int, default=1, help="runs of each benchmark (median and spread)")
    run_bench.add_argument("--out", default="jaxvi-bench", help="the reports' folder (default: jaxvi-bench)")
    run_bench.add_argument("--without", nargs="*", default=(), help="modules to treat as not installed")
    run_bench.add_argument("--cache", nargs="?", const="", default=None, metavar="DIR",
                           help="keep compiled code on disk (default DIR: the reports' folder/cache): each benchmark "
                                "runs cold, then --repeats times warm, and the report gives both")
    run_bench.add_argument("--scaling", action="store_true",
                           help="time against size, jaxvi and each peer (scaling.md, scaling.png in the reports' folder)")
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.command == "demo":
        from jaxvi.demo import run

        run(args.out, quick=args.quick)
    elif args.command == "bench" and args.scaling:
        from jaxvi.bench import scaling

        scaling(args.names, quick=args.quick, out_dir=args.out, without=tuple(args.without))
    elif args.command == "bench":
        from jaxvi.bench import run

        run(args.names, quick=args.quick, repeats=args.repeats, out_dir=args.out, without=tuple(args.without),
            cache=args.cache)
    return 0


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits through ``parser.error`` (a usage line and the message, status 2) for arguments the command cannot
    take, before any work: unknown benchmarks or families, repeats below 1, options --scaling does not take, and
    folders that cannot be made (created here)."""
    folders = [("--out", args.out)]
    if args.command == "bench":
        from jaxvi.bench import check_families, check_names

        if args.scaling and (args.repeats != 1 or args.cache is not None):
            parser.error("bench --scaling: takes neither --repeats nor --cache (each size runs once, cold)")
        try:
            check_families(args.names) if args.scaling else check_names(args.names, args.repeats)
        except ValueError as err:
            parser.error(f"bench {err}")
        if args.cache:
            folders.append(("--cache", args.cache))
    for option, folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            parser.error(f"{option}: cannot make the folder {folder}: {err.strerror or err}")


if __name__ == "__main__":
    sys.exit(main())
