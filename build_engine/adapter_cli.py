"""`autoglm build adapter add|list`: the LoRA adapter registry's commands (adapters.py).

Kept out of cli.py so the registry's commands stay one small file; cli.py plugs them in with
`add_adapter_commands(sub)`. Refusals print their message (naming the field) and exit 2, as the
other build commands' user errors do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autoglm.build_engine import adapters


def add_adapter_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("adapter", help="register and list LoRA adapters of served models")
    cmds = group.add_subparsers(dest="adapter_command", required=True)

    p = cmds.add_parser("add", help="check, convert and register a PEFT LoRA adapter folder")
    p.add_argument("name", help="the adapter's name, as requests will give it")
    p.add_argument("--base", required=True, help="the served model it was fine-tuned from")
    p.add_argument(
        "--path", type=Path, required=True, help="adapter_config.json + adapter_model.safetensors"
    )
    p.add_argument("--repository", type=Path, required=True, help="the Triton model repository")
    p.add_argument(
        "--base-dir",
        type=Path,
        help="the base's HF folder (default: hf_model_dir of the base's config.pbtxt)",
    )
    p.add_argument(
        "--max-rank",
        type=int,
        help="refuse a higher adapter rank (default: the base's TensorRT-LLM engines' recorded "
        f"max_lora_rank, else {adapters.DEFAULT_MAX_RANK})",
    )
    p.set_defaults(func=cmd_adapter_add)

    p = cmds.add_parser("list", help="the registered adapters (sha256 checked with --verify)")
    p.add_argument("--repository", type=Path, required=True, help="the Triton model repository")
    p.add_argument("--verify", action="store_true", help="re-hash every adapter's files")
    p.set_defaults(func=cmd_adapter_list)


def registry_of(repository: Path) -> Path:
    return repository / adapters.ADAPTERS_DIR


def cmd_adapter_add(args: argparse.Namespace, console: Console) -> int:
    try:
        base_dir = args.base_dir or adapters.hf_dir_of(args.repository, args.base)
        adapter = adapters.add(
            registry_of(args.repository),
            args.name,
            base=args.base,
            base_dir=base_dir,
            source=args.path,
            max_rank=args.max_rank,
        )
    except adapters.AdapterError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    console.print(
        f"adapter {adapter.name} of {adapter.base}: task id {adapter.task_id}, rank "
        f"{adapter.rank}, modules {', '.join(adapter.target_modules)}"
    )
    return 0


def cmd_adapter_list(args: argparse.Namespace, console: Console) -> int:
    try:
        registry = adapters.load_registry(registry_of(args.repository))
    except adapters.AdapterError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    table = Table(title=f"LoRA adapters in {registry_of(args.repository)}")
    for col in ("name", "base", "task id", "rank", "modules", "sha256 (weights)"):
        table.add_column(col)
    if args.verify:
        table.add_column("verified")
    failed = 0
    for adapter in registry.values():
        row = [
            adapter.name,
            adapter.base,
            str(adapter.task_id),
            str(adapter.rank),
            ",".join(adapter.target_modules),
            adapter.sha256.get(adapters.LORA_WEIGHTS_FILE, "?")[:16],
        ]
        if args.verify:
            try:
                adapters.verify(adapter)
                row.append("ok")
            except adapters.AdapterError as exc:
                failed += 1
                row.append(f"[red]{exc}[/]")
        table.add_row(*row)
    console.print(table)
    return 2 if failed else 0
