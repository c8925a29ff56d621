"""``pagellm chat`` and ``pagellm complete``: terminal clients for a running OpenAI-compatible
server (``pagellm serve`` or any other), streaming tokens to stdout as they arrive.

``-q/--quick TEXT`` sends one message (chat) or prompt (complete) and exits; otherwise each line
read from stdin is one turn until EOF, and chat keeps the whole conversation as history.
Exit status: 0, or 1 with ``error: ...`` on stderr when the server cannot be reached or
answers with an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

DEFAULT_URL = "http://127.0.0.1:8000/v1"
_PLACEHOLDER_API_KEY = "EMPTY"      # the openai client insists on some key


def add_cli_args(parser: argparse.ArgumentParser, chat: bool) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the server's OpenAI API base URL (default: {DEFAULT_URL})")
    parser.add_argument("--api-key", default=os.environ.get("PAGELLM_API_KEY"),
                        help="API key (default: $PAGELLM_API_KEY)")
    parser.add_argument("--model", default=None,
                        help="model name (default: the first one /v1/models lists)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="most tokens to generate per reply (default: the server's)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default: the server's)")
    if chat:
        parser.add_argument("--system-prompt", default=None,
                            help="a system message that opens the conversation")
    parser.add_argument("-q", "--quick", default=None, metavar="TEXT",
                        help="send TEXT once, print the reply and exit (default: read stdin "
                             "lines until EOF)")


def chat_main(args: argparse.Namespace) -> int:
    return _run(args, _Chat(args))


def complete_main(args: argparse.Namespace) -> int:
    return _run(args, _Complete(args))


class _Chat:
    """One conversation: each turn adds the user's message and the streamed reply."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.messages: list[dict] = []
        if args.system_prompt:
            self.messages.append({"role": "system", "content": args.system_prompt})

    def turn(self, client, model: str, text: str) -> Iterator[str]:
        self.messages.append({"role": "user", "content": text})
        stream = client.chat.completions.create(model=model, messages=self.messages,
                                                stream=True, **_sampling(self.args))
        reply = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply.append(chunk.choices[0].delta.content)
                yield reply[-1]
        self.messages.append({"role": "assistant", "content": "".join(reply)})


class _Complete:
    """Each turn is an independent prompt."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def turn(self, client, model: str, text: str) -> Iterator[str]:
        stream = client.completions.create(model=model, prompt=text, stream=True,
                                           **_sampling(self.args))
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                yield chunk.choices[0].text


def _sampling(args: argparse.Namespace) -> dict:
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    return {name: value for name, value in options.items() if value is not None}


def _run(args: argparse.Namespace, session) -> int:
    import openai

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key or _PLACEHOLDER_API_KEY,
                           max_retries=0)
    try:
        model = args.model or _first_model(client)
        for text in _inputs(args.quick):
            for piece in session.turn(client, model, text):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
    except openai.APIConnectionError as error:
        return _fail(args, f"cannot reach the server at {args.url}: {error}")
    except openai.APIStatusError as error:
        return _fail(args, f"the server answered {error.status_code}: {_message(error)}")
    except LookupError as error:
        return _fail(args, str(error))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0


def _first_model(client) -> str:
    models = client.models.list().data
    if not models:
        raise LookupError("the server lists no models")
    return models[0].id


def _inputs(quick: str | None) -> Iterator[str]:
    """The one --quick text, or stdin's non-empty lines (with a prompt on a terminal)."""
    if quick is not None:
        yield quick
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def _message(error) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    return inner.get("message") if isinstance(inner, dict) and inner.get("message") \
        else str(error)


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"pagellm {args.command}: error: {message}", file=sys.stderr)
    return 1
