"""The ``pagellm`` command: ``pagellm serve`` (``--config FILE`` reads flags from a YAML/JSON
file), ``pagellm chat`` / ``pagellm complete`` (terminal clients of a running server),
``pagellm plan | advise | check`` (tuning: capacity plan, live advisor, pre-deployment
checklist), ``pagellm tune`` (search the configuration on a workload) and
``pagellm bench throughput|latency|serving|compare``.

Each subcommand module offers ``add_cli_args(parser)`` and ``main(args)``; engine arguments
come from ``pagellm.config.cli_args`` (one flag per config field). ``python -m pagellm`` runs
this command too. A ``ClientError`` (a bad option
value, a missing model) prints ``error: ...`` and exits with status 2, like argparse does; an
argparse error prints one line too (``pagellm serve: error: ...``, plus where the help is),
never the whole usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pagellm.errors import ClientError
from pagellm.logger import init_logging


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and a pointer to --help (the usage of
    ``pagellm serve`` alone is some 40 lines); subparsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(run '{self.prog} --help' for the "
                     "options)\n")


def build_parser() -> argparse.ArgumentParser:
    from pagellm import __version__
    from pagellm.bench import latency, serving, throughput
    from pagellm.entrypoints.cli import advise, bench_compare, check, clients, plan, serve, tune

    parser = _Parser(prog="pagellm", description="pagellm: LLM inference on a paged KV cache")
    parser.add_argument("--version", action="version", version=f"pagellm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description=serve.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_cli_args(serve_parser)
    serve_parser.set_defaults(run=serve.main)
    parser.config_file_parsers = {"serve": serve_parser}     # subcommands taking --config FILE

    for name, run, help_text in (
            ("chat", clients.chat_main, "chat with a running server from the terminal"),
            ("complete", clients.complete_main, "complete prompts on a running server from the "
                                                "terminal")):
        client_parser = commands.add_parser(name, help=help_text, description=clients.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter)
        clients.add_cli_args(client_parser, chat=name == "chat")
        client_parser.set_defaults(run=run)

    for name, module, help_text in (
            ("plan", plan, "will a model fit, and how many requests at once (capacity plan)"),
            ("advise", advise, "the tuning guides' decision tree on a server's live metrics"),
            ("check", check, "the pre-deployment checklist, automated")):
        sub = commands.add_parser(name, help=help_text, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_cli_args(sub)
        sub.set_defaults(run=module.main)
    tune_parser = commands.add_parser(
        "tune", help="search the serving configuration on your workload (Optuna, real servers)",
        description=tune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_cli_args(tune_parser)
    tune_parser.set_defaults(run=tune.main)

    bench_parser = commands.add_parser("bench", help="offline and online benchmarks")
    benchmarks = bench_parser.add_subparsers(dest="bench_command", required=True,
                                             metavar="BENCHMARK")
    for name, module, help_text in (
            ("throughput", throughput, "offline throughput (requests/s, tokens/s), as vLLM's"),
            ("latency", latency, "latency of one batch end to end, as vLLM's"),
            ("serving", serving, "an OpenAI-compatible server under load (TTFT, TPOT, ITL), as "
                                 "vLLM's"),
            ("compare", bench_compare, "A/B: two serve configurations on the same workload, "
                                 "P50/P95/P99 side by side over repeated runs")):
        sub = benchmarks.add_parser(name, help=help_text,
                                    description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_cli_args(sub)
        sub.set_defaults(run=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns the exit
    status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _expand_config_file(parser, argv)
    except ClientError as error:
        print(f"pagellm {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    init_logging("api-server" if args.command == "serve" else "pagellm")
    try:
        result = args.run(args)
    except ClientError as error:
        print(f"pagellm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _expand_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the flags of ``--config FILE`` put before the subcommand's own (see
    ``config_file``), for the subcommands that take one."""
    from pagellm.entrypoints.cli.config_file import expand_config_flag

    sub = parser.config_file_parsers.get(argv[0]) if argv else None
    if sub is None:
        return argv
    return argv[:1] + expand_config_flag(sub, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
