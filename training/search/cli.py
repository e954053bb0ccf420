"""`avemo search quick|grid|ablation|custom`: loss-weight search on an Optuna study (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avemo.contract.options import add_option

EPILOG = """\
Every option not listed above is an `avemo train` flag held fixed for every trial (see avemo train --help),
e.g. --data_root, --fusion, --lr, --batch_size; give the mode first. Defaults a search changes unless given:
--epochs 8 --early_stopping_patience 3 (the guide: 8 epochs, early stopping on); quick and grid add
--contrastive_proj_dim 64 (InfoNCE needs projections); ablation adds --fusion hierarchical --contrastive_proj_dim 64.
A space with delta_va > 0 distils from an audio-only and a video-only teacher: trained once into
<folder>/teachers/ unless --teacher_audio / --teacher_video are given.

Feature files (--dataset mosi|mosei|sims --data_root FILE --modalities atv): seed 002's regression model,
ranked by best validation MSE; the table adds Corr / MAE / Acc-2 (non-zero) / Acc-7 on val and test. The
teachers are the unimodal feature models (--modalities a / v, text is the anchor), and a search of delta_nce
adds --contrastive_pairs text (InfoNCE of audio and video against text) unless given.

examples:
  avemo search quick                                      # 6 combinations, results in runs/search/quick_search_*/
  avemo search grid --workers 2                           # 49 trials, two processes on this machine
  avemo search quick --resume                             # continue the newest quick search after a kill
  avemo search custom --param lr=0.001,0.002 --param batch_size=16,32
  avemo search ablation --epochs 12                       # the loss-analysis grid on the hierarchical fusion
  avemo search quick --dataset mosei --data_root data/mosei_unaligned.pkl --modalities atv   # seed 002 on features
  avemo search grid --storage postgresql+psycopg://user@db-host/avemo --study grid1 \\
      --teacher_audio /shared/audio.pt --teacher_video /shared/video.pt --workers 4   # same on every machine
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from avemo.training.search.space import MODES
    from avemo.training.search.worker import OBJECTIVES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    # the train flags held fixed (avemo.cli passes unknown options on as args.extra)
    p.accepts_extra = True  # type: ignore[attr-defined]  # an attribute of ours, read by avemo.cli
    p.add_argument(
        "mode",
        choices=list(MODES),
        help="; ".join(f"{m.name}: {m.description}" for m in MODES.values()),
    )
    add_option(
        p,
        "param",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="custom: an avemo train flag and its values; several --param give their product",
    )
    add_option(p, "workers", type=int, default=1, help="worker processes on this machine (default: %(default)s)")
    add_option(
        p,
        "objective",
        choices=list(OBJECTIVES),
        default="val_loss",
        help="what ranks the trials: best validation loss (lower is better, the guide's; MSE for a regression "
        "run on a feature file) or best validation macro-F1 (classification only); the results show both "
        "(default: %(default)s)",
    )
    add_option(
        p,
        "storage",
        default=None,
        metavar="URL_OR_FILE",
        help="Optuna storage: a SQLAlchemy URL (postgresql+psycopg://..., sqlite:///...) to share one study "
        "between machines, or a journal file path (default: <folder>/study.journal)",
    )
    add_option(
        p, "study", default=None, help="study name (default: the folder name; with a URL --storage: <mode folder>)"
    )
    add_option(
        p, "out", type=Path, default=Path("runs/search"), help="parent of the search folders (default: %(default)s)"
    )
    add_option(
        p,
        "dir",
        "folder",
        dest="folder",
        type=Path,
        default=None,
        help="this exact search folder (resumed if it holds this search)",
    )
    add_option(p, "resume", action="store_true", help="continue the newest search of this mode under --out")
    add_option(
        p,
        "heartbeat",
        type=int,
        default=10,
        metavar="SECONDS",
        help="heartbeat period of a running trial; one silent for 3x this is failed and retried (default: %(default)s)",
    )
    add_option(p, "max_retry", type=int, default=3, help="retries of a trial whose worker died (default: %(default)s)")
    add_option(p, "no_progress", action="store_true", help="no progress bars")
    add_option(p, "json", action="store_true", help="print results.json on stdout (progress on stderr)")


def run(args: argparse.Namespace) -> int:
    from avemo.training.cli import progress_to_stderr
    from avemo.training.search.launcher import SearchRequest, run_search
    from avemo.training.search.report import objective_text
    from avemo.training.search.space import build_space

    extra = list(getattr(args, "extra", []))
    space = build_space(args.mode, args.param)
    req = SearchRequest(
        mode=args.mode,
        space=space,
        train_argv=extra,
        objective=args.objective,
        workers=args.workers,
        storage=args.storage,
        study=args.study,
        out=args.out,
        folder=args.folder,
        resume=args.resume,
        heartbeat=args.heartbeat,
        max_retry=args.max_retry,
        progress=not args.no_progress,
    )
    try:
        with progress_to_stderr(args.json):  # with --json, stdout carries only the results document
            doc = run_search(req)
    except KeyboardInterrupt:
        print(
            f"interrupted; continue with the same command and --resume (or --dir {args.folder or '<folder>'})",
            file=sys.stderr,
        )
        return 130
    folder = Path(doc["folder"])
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print((folder / "results.md").read_text())
    best = doc["best"]
    if best:
        text = objective_text(args.objective, doc.get("task") == "regression")
        print(f"best by {text}: trial {best['number']} ({best['label']})")
    for name in ("results.json", "results.md", "heatmap.png", "best_config.txt"):
        if (folder / name).exists():
            print(f"written {folder / name}")
    print(
        f"{doc['finished']}/{doc['points']} trials finished in {doc['wall_seconds']:.0f} s "
        f"with {doc['workers']} worker(s)"
    )
    return 0
