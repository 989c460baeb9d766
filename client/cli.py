"""`autoglm-client`: generate, list models and count tokens from the shell.

Settings come from the profile file and `AUTOGLM_*` variables (see `ClientConfig.load`); there
is deliberately no `--token` flag, so the token never lands in shell history or `ps` output.

Exit codes: 0 ok, 2 invalid arguments (argparse usage, INVALID_ARGUMENT, unusable settings),
1 any other error, 130 interrupted (Ctrl-C; the stream, and so the engine request, is cancelled).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from autoglm.client._client import Client
from autoglm.client._config import ClientConfig
from autoglm.client._exceptions import AutoGLMError, ConfigError, InvalidArgumentError
from autoglm.client._models_table import TERMINAL_ADAPTERS_WIDTH, models_table
from autoglm.client._requests import Image, MessageLike
from autoglm.client._types import Completion, Delta

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--config", metavar="PATH", help="profile file (JSON) to read")
    group.add_argument("--endpoint", help="server address, e.g. 127.0.0.1:50051")
    group.add_argument(
        "--insecure", action="store_true", default=None, help="plaintext; loopback endpoints only"
    )
    group.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline of each call")
    group.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="attempts per call after UNAVAILABLE, within --timeout (1 = no retries; default 3)",
    )
    return parent


def _prompt_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("prompt", metavar="PROMPT")
    parent.add_argument("--model", help="model name (default: the configured or only model)")
    parent.add_argument(
        "--chat", action="store_true", help="send PROMPT as one user message (chat template)"
    )
    parent.add_argument("--system", metavar="TEXT", help="system message (implies --chat)")
    parent.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="FILE",
        help="an image file to send before the text (implies --chat; repeatable; the file is"
        " read here and sent inline)",
    )
    parent.add_argument("--json", action="store_true", help="print one JSON object")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoglm-client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection, prompt = _connection_options(), _prompt_options()

    gen = commands.add_parser("generate", parents=[prompt, connection], help="generate text")
    gen.add_argument(
        "--adapter",
        default="",
        metavar="NAME",
        help="a LoRA adapter of the model (listed by `models`)",
    )
    gen.add_argument("--max-tokens", type=int, default=0, metavar="N", help="0 = server default")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[], metavar="S", help="repeatable")
    gen.add_argument("--repetition-penalty", type=float)
    gen.add_argument("--frequency-penalty", type=float, help="additive, per occurrence; [-2, 2]")
    gen.add_argument("--presence-penalty", type=float, help="additive, once per token; [-2, 2]")
    gen.add_argument(
        "--logprobs", action="store_true", help="return each token's log-probability (with --json)"
    )
    gen.add_argument("--request-id", help="id echoed in responses and server logs")
    gen.add_argument(
        "--no-stream", action="store_true", help="wait for the whole completion (implied by --json)"
    )

    models = commands.add_parser(
        "models",
        parents=[connection],
        help="list the served models and the LoRA adapters you may use",
        description="One tab-separated line per model. ADAPTERS: the LoRA adapters of the model"
        " this token may use (for generate --adapter), '-' for none; on a terminal a long list"
        " is shortened to '+N more' (a pipe or --json gets them all).",
    )
    models.add_argument("--json", action="store_true", help="print a JSON array")

    commands.add_parser(
        "count-tokens", parents=[prompt, connection], help="count the prompt tokens"
    )
    return parser


def _messages(args: argparse.Namespace) -> list[MessageLike] | None:
    if not (args.chat or args.system or args.image):
        return None
    messages: list[MessageLike] = [("system", args.system)] if args.system else []
    if args.image:
        images = [Image.from_file(path) for path in args.image]
        messages.append(("user", [*images, args.prompt]))
    else:
        messages.append(("user", args.prompt))
    return messages


def _print_json(value: Any, out: TextIO) -> None:
    # One line, so that output can be appended to JSON Lines files and piped to `jq -c`.
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def _usage_line(
    finish_reason: str | None,
    prompt: int | None,
    completion: int | None,
    model_version: int | None = None,
) -> str:
    line = f"finish_reason={finish_reason} prompt_tokens={prompt} completion_tokens={completion}"
    # Only when the server said which version answered (a model served from a repository), so
    # the line is unchanged for every other model.
    version = "" if model_version is None else f" model_version={model_version}"
    return f"[{line}{version}]"


def _generate(client: Client, args: argparse.Namespace) -> int:
    chat = args.chat or args.system or args.image
    prompt, messages = (None, _messages(args)) if chat else (args.prompt, None)
    options: dict[str, Any] = {
        "messages": messages,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop,
        "repetition_penalty": args.repetition_penalty,
        "frequency_penalty": args.frequency_penalty,
        "presence_penalty": args.presence_penalty,
        "logprobs": args.logprobs,
        "request_id": args.request_id,
    }
    if args.adapter:
        options["adapter"] = args.adapter
    if args.json or args.no_stream:
        completion: Completion = client.generate(prompt, **options)
        if args.json:
            _print_json(dataclasses.asdict(completion), sys.stdout)
            return 0
        sys.stdout.write(completion.text)
        _end_text(completion.text)
        last = (
            completion.finish_reason,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.model_version,
        )
    else:
        text_end, last_delta = "", None
        try:
            # closing(): a Ctrl-C between two deltas must still cancel the RPC.
            with contextlib.closing(client.generate_stream(prompt, **options)) as stream:
                for delta in stream:
                    sys.stdout.write(delta.text)
                    sys.stdout.flush()  # show text as it arrives, even through a pipe
                    text_end = delta.text[-1:] or text_end
                    last_delta = delta
        finally:
            _end_text(text_end)  # also before an error message or "cancelled"
        last = _last_usage(last_delta)
    print(_usage_line(*last), file=sys.stderr)
    return 0


def _last_usage(delta: Delta | None) -> tuple[str | None, int | None, int | None, int | None]:
    if delta is None:
        return None, None, None, None
    return delta.finish_reason, delta.prompt_tokens, delta.completion_tokens, delta.model_version


def _end_text(text: str) -> None:
    """End the generated text's line on a terminal; a pipe gets the text exactly as generated."""
    if sys.stdout.isatty() and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def _models(client: Client, args: argparse.Namespace) -> int:
    models = client.list_models()
    if args.json:
        _print_json([dataclasses.asdict(m) for m in models], sys.stdout)
        return 0
    # A person reads a terminal: a long adapter list is shortened there; a pipe gets them all.
    width = TERMINAL_ADAPTERS_WIDTH if sys.stdout.isatty() else None
    print("\n".join(models_table(models, adapters_width=width)))
    return 0


def _count_tokens(client: Client, args: argparse.Namespace) -> int:
    messages = _messages(args)
    count = client.count_tokens(
        None if messages else args.prompt, messages=messages, model=args.model
    )
    if args.json:
        _print_json(dataclasses.asdict(count), sys.stdout)
    else:
        print(count.prompt_tokens)
    return 0


_COMMANDS = {"generate": _generate, "models": _models, "count-tokens": _count_tokens}


def _report(exc: AutoGLMError) -> int:
    """Print `error: <CODE>: <message>` and the details; the exit code for the error."""
    code = "CONFIG" if isinstance(exc, ConfigError) else exc.code.name if exc.code else "ERROR"
    lines = [f"error: {code}: {exc.message}"]
    violations = [f"{field}: {description}" for field, description in exc.field_violations]
    if "; ".join(violations) != exc.message:  # the server's message may already be exactly these
        lines += [f"  {violation}" for violation in violations]
    if exc.retry_after is not None:
        lines.append(f"  retry after {exc.retry_after:g} s")
    if exc.attempts > 1:
        lines.append(f"  after {exc.attempts} attempts")
    if exc.request_id and exc.request_id not in exc.message:
        lines.append(f"  request id: {exc.request_id}")
    print("\n".join(lines), file=sys.stderr)
    return EXIT_INVALID if isinstance(exc, InvalidArgumentError | ConfigError) else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = ClientConfig.load(
            args.config, endpoint=args.endpoint, insecure=args.insecure, timeout=args.timeout
        )
        if args.max_attempts is not None:  # the profile's other retry settings stay
            retry = dataclasses.replace(config.retry, max_attempts=args.max_attempts)
            config = dataclasses.replace(config, retry=retry)
        with Client(config) as client:
            return _COMMANDS[args.command](client, args)
    except AutoGLMError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at devnull so that the
        # interpreter's final flush does not raise again (Python docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
