"""`avemo predict`: clips through the served clip model (``client.cli``), or with ``--dataset mosi|mosei|sims``
every sample of a feature file's split through the served feature model (``avemo.feature_predict``)."""

from __future__ import annotations

import argparse

from avemo.client import cli as clip_cli
from avemo.contract.options import UsageError

CLIP_FILE_OPTIONS = ("annotate", "timeline_json", "timeline_csv")  # files made from clips only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    clip_cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.dataset:
        if args.clips:
            raise UsageError(f"give clips or --dataset {args.dataset} --data_root FILE, not both")
        if not args.data_root:
            raise UsageError(f"--dataset {args.dataset} needs --data_root FILE (the feature file)")
        clip_only = [f"--{k.replace('_', '-')}" for k in CLIP_FILE_OPTIONS if getattr(args, k, None)]
        if clip_only:
            raise UsageError(f"{', '.join(clip_only)}: for clips, not with --dataset")
        from avemo import feature_predict

        return feature_predict.run(args)
    if not args.clips:
        raise UsageError("give one or more clips, or --dataset mosi|mosei|sims --data_root FILE")
    return clip_cli.run(args)
