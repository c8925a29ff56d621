"""``pagellm serve``: PRE-SERVER PLACEHOLDER. There is no HTTP server yet (a later issue).

For now it loads the model in this process and generates plain completions (no chat template):

    pagellm serve [MODEL] --prompt "The capital of France is"   # one completion, then exit
    pagellm serve [MODEL] < prompts.txt                          # one completion per line

Without ``--prompt`` it reads stdin line by line until EOF, printing each completion as soon as
it is done (an interactive session when stdin is a terminal). Every engine argument is
accepted, as the real server will accept them.
"""

from __future__ import annotations

import argparse
import sys

from pagellm.config.cli_args import add_engine_args, engine_kwargs_from_args
from pagellm.errors import ClientError


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="model directory, .gguf file or 'default' (same as --model)")
    parser.add_argument("--prompt", default=None,
                        help="generate one completion for this text and exit; without it, "
                             "read prompts from stdin, one per line, until EOF")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per completion")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    add_engine_args(parser)


def main(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    """One completion for --prompt, else one per stdin line until EOF; returns 0. A bad
    option raises ClientError; a bad stdin prompt prints an error and the loop goes on."""
    from pagellm import LLM, SamplingParams

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    engine_kwargs = engine_kwargs_from_args(args)
    if args.model_tag is not None:
        engine_kwargs["model"] = args.model_tag
    llm = LLM(**engine_kwargs)
    if args.prompt is not None:
        print(_complete(llm, args.prompt, params), file=stdout)
        return 0
    interactive = stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return 0
        prompt = line.rstrip("\n")
        if not prompt.strip():
            continue
        try:
            print(_complete(llm, prompt, params), file=stdout, flush=True)
        except ClientError as error:   # a bad prompt ends alone; the session goes on
            print(f"error: {error}", file=sys.stderr, flush=True)


def _complete(llm, prompt: str, params) -> str:
    return llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text
