"""The `avemo` command: one console entry point with subcommands.

Each subcommand lives in its package's ``cli.py`` as ``add_arguments(parser)`` + ``run(args) -> int``;
those modules import heavy libraries (torch, tritonclient) lazily, inside ``run``. Options are added
with ``avemo.contract.options``; a ``run`` that raises its ``UsageError`` ends like an argparse error
("avemo train: error: ...", exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from avemo.contract.options import UsageError

TRAINING = "avemo.training.cli"  # one module, five commands: <name>_arguments / <name>_run
# name -> (module, add_arguments attr, run attr, one-line help)
COMMANDS = {
    "corpus": (TRAINING, "corpus_arguments", "corpus_run", "generate the synthetic RAVDESS-layout MP4 corpus"),
    "cache": (TRAINING, "cache_arguments", "cache_run", "decode clips into the training cache (done by train too)"),
    "train": (TRAINING, "train_arguments", "train_run", "train a fusion model or a unimodal baseline"),
    "evaluate": (TRAINING, "evaluate_arguments", "evaluate_run", "metrics of a checkpoint on a split"),
    "compare": (TRAINING, "compare_arguments", "compare_run", "train several fusions with one seed and split"),
    "search": ("avemo.training.search.cli", "add_arguments", "run", "loss-weight search: Optuna grid, many workers"),
    "export": ("avemo.export.cli", "add_arguments", "run", "checkpoint -> ONNX in the Triton model repository"),
    "serve": ("avemo.serving.cli", "add_arguments", "run", "run the bundled Triton server on the model repository"),
    "predict": ("avemo.predict", "add_arguments", "run", "clips or a feature file's split through Triton over gRPC"),
    "live": ("avemo.client.live", "add_arguments", "run", "webcam + microphone through Triton, running label"),
    "loadgen": ("avemo.client.loadgen_cli", "add_arguments", "run", "load on a running Triton: concurrency, streams"),
    "app": ("avemo.client.app", "add_arguments", "run", "the Gradio web demo (upload and live tabs) on Triton"),
    "demo": ("avemo.demo", "add_arguments", "run", "the main job: corpus -> train -> export -> Triton -> predict"),
}


class CommandParser(argparse.ArgumentParser):
    """The top-level parser: ``commands`` maps each command name to its subparser."""

    commands: dict[str, argparse.ArgumentParser]


def build_parser(command: str | None = None) -> CommandParser:
    """The parser; only ``command``'s own arguments are added (so `avemo predict` never imports torch).

    ``parser.commands`` maps each command name to its subparser."""
    parser = CommandParser(
        prog="avemo", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for name, (module, add, _run, help_) in COMMANDS.items():
        p = parser.commands[name] = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            getattr(importlib.import_module(module), add)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    sub = parser.commands[args.command]
    if extra and not getattr(sub, "accepts_extra", False):
        sub.error(f"unrecognized arguments: {' '.join(extra)}")  # what parse_args would have said
    args.extra = extra  # a command with accepts_extra (avemo search) passes them on (train flags)
    module, _add, run, _help = COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except UsageError as e:
        parser.commands[args.command].error(str(e))  # exits with status 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
