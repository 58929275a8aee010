"""`python -m training <command>`: prepare, train, export, and the commands other modules register in COMMANDS.

To add a command (e.g. evaluate), write a `Command` in its own module and add one line to COMMANDS; modules are
imported only to build the parser, so keep heavy imports inside `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from MedDiffusionExtension.errors import InputError


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# name -> "module:attr" of a Command.
COMMANDS: dict[str, str] = {
    "prepare": "training.cli:PREPARE",
    "train": "training.cli:TRAIN",
    "export": "training.cli:EXPORT",
    "evaluate": "training.evaluation:COMMAND",
    "roundtrip": "training.evaluation.roundtrip:COMMAND",
    "phantoms": "training.phantoms.cli:COMMAND",
    "import-totalsegmentator": "training.data.totalsegmentator_cli:COMMAND",
    "cut-field": "training.data.field_cut_cli:COMMAND",
    "bench": "training.bench:COMMAND",
}

_ARG_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="registered recipe name or package.module:Class")
    parser.add_argument("--set", dest="recipe_set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe option (repeatable); values parse as JSON when they can")
    parser.add_argument("--config", dest="recipe_config", metavar="JSON", help="recipe options from a JSON file (--set wins)")


def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    _add_recipe_arguments(parser)
    parser.add_argument(
        "--split", choices=["global", "local"], default="global",
        help="under torchrun, which ranks divide the cases: all of them (global: one cache on shared storage) or "
             "those of each node (local: a node-local cache on every node) (default: global)")


def _run_prepare(args: argparse.Namespace) -> int:
    from .data.slices import preparing_share
    from .recipes import build_recipe, parse_overrides

    def env(name: str, default: int) -> int:
        value = os.environ.get(name)
        return default if value in (None, "") else int(value)

    rank, world = (env("RANK", 0), env("WORLD_SIZE", 1)) if args.split == "global" else \
        (env("LOCAL_RANK", 0), env("LOCAL_WORLD_SIZE", 1))
    recipe = build_recipe(args.recipe, parse_overrides(args.recipe_set, args.recipe_config))
    # No process group: ranks never wait for each other, so no collective timeout applies however long this takes.
    with preparing_share(rank, world) as share:
        recipe.train_dataset()
        recipe.val_dataset()
    who = f"rank {rank}/{world}: " if world > 1 else ""
    print(f"{who}prepared {len(share.prepared)} case(s), {len(share.cached)} already cached")
    return 0


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .trainer import TrainConfig

    _add_recipe_arguments(parser)
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = "" if spec.default is dataclasses.MISSING else f" (default: {spec.default})"
        help_text = spec.metadata.get("help", "") + default
        # SUPPRESS: only options given on the command line reach TrainConfig, so its defaults stay the one source.
        if spec.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif spec.type.startswith("tuple"):
            parser.add_argument(flag, type=float, nargs=2, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=_ARG_TYPES[spec.type], default=argparse.SUPPRESS,
                                required=spec.default is dataclasses.MISSING, help=help_text)


def _run_train(args: argparse.Namespace) -> int:
    from .recipes import build_recipe, parse_overrides
    from .trainer import Trainer, TrainConfig

    names = {spec.name for spec in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    recipe = build_recipe(args.recipe, parse_overrides(args.recipe_set, args.recipe_config))
    result = Trainer(recipe, config, command=args.command_line).fit()
    if result.checkpoint is not None and os.environ.get("RANK", "0") == "0":
        print(f"stopped by {result.stopped_by} at step {result.step} after {result.wall_seconds:.1f} s; "
              f"checkpoint: {result.checkpoint}")
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or a run's out dir for its latest")
    parser.add_argument("--out", required=True, help="model folder to write (model.safetensors + card.json)")
    parser.add_argument("--name", help="model name in the card (default: the recipe's, else the folder name)")
    parser.add_argument("--raw-weights", action="store_true", help="export the raw weights even when there is an EMA")
    parser.add_argument("--card", metavar="JSON", help="JSON file of card fields to add or override")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="store floating-point weights in this type (the network still computes in float32)")
    parser.add_argument("--inference-only", action="store_true",
                        help="leave out the parts only training uses (SDSeg's mask encoder): smaller, but cannot init training")


def _run_export(args: argparse.Namespace) -> int:
    from .checkpoint import export

    extra = None
    if args.card:
        try:
            extra = json.loads(Path(args.card).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read card fields from {args.card}: {exc}") from None
    folder = export(args.checkpoint, args.out, use_ema=not args.raw_weights, extra_card=extra, name=args.name, dtype=args.dtype,
                    inference_only=args.inference_only)
    print(f"exported {folder}")
    return 0


PREPARE = Command("build a recipe's slice cache ahead of training (its share of the cases per rank under torchrun)",
                  _add_prepare_arguments, _run_prepare)
TRAIN = Command("train a model with a recipe (single process, or under torchrun)", _add_train_arguments, _run_train)
EXPORT = Command("write a checkpoint as a model folder the extension loads", _add_export_arguments, _run_export)


def _resolve(target: str) -> Command:
    module_name, attr = target.split(":", 1)
    return getattr(importlib.import_module(module_name), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training",
                                     description="Train, export, evaluate and benchmark MedDiffusion models; write phantom data.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, target in COMMANDS.items():
        command = _resolve(target)
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "training", *argv])
    try:
        return args.run(args)
    except InputError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
