"""A search worker: take a grid point from the study, train it, report it; until every point is settled.

``run_worker(ctx)`` is the loop one process runs (``avemo search --workers N`` starts N of them, each
with its own storage connection and ``ctx.threads`` torch threads). Each trial trains through the
same code as ``avemo train`` (``train_or_reuse``): its run folder is ``<search>/trials/<point>``, so a
retried trial resumes from that folder's last.pt, and one whose training finished before its worker
died is read back instead of trained again.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from avemo.training.search import study as st
from avemo.training.search.space import Space, flag_argv, point_key

OBJECTIVES = {"val_loss": "minimize", "val_macro_f1": "maximize"}  # objective -> study direction


@dataclass
class WorkerContext:
    """Everything a worker process needs (plain data: it crosses a process boundary)."""

    folder: str  # the search folder
    storage: str  # journal file path or SQLAlchemy URL
    study: str  # study name
    space: dict  # Space.to_dict()
    train_argv: list  # `avemo train` flags held fixed (teachers included)
    objective: str  # a key of OBJECTIVES
    heartbeat: int  # seconds between heartbeats
    max_retry: int  # retries of a trial whose worker died
    threads: int  # torch CPU threads per worker
    poll: float = 2.0  # seconds between looks at the study while other workers hold the remaining points
    index: int = 0  # worker number (log file name)

    def to_dict(self) -> dict:
        return asdict(self)


def train_parser():
    """The `avemo train` argument parser (its option table validates and spells the trial flags)."""
    import argparse

    from avemo.training.cli import train_arguments

    p = argparse.ArgumentParser(prog="avemo train", add_help=False)
    train_arguments(p)
    return p


def trial_argv(fixed: list[str], space: Space, point: dict, parser=None) -> list[str]:
    """The `avemo train` flags of one point: the fixed ones, then the point's."""
    return [*fixed, *flag_argv(space.flags(point), parser or train_parser())]


def trial_config(argv: list[str], parser=None):
    """TrainConfig of a train command line (UsageError for a flag avemo train would refuse)."""
    from avemo.contract.options import UsageError
    from avemo.training.cli import train_config_from_args

    parser = parser or train_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise UsageError(f"avemo train refuses these flags: {' '.join(argv)}") from None
    return train_config_from_args(args)


def summarise_run(metrics: dict, epochs: int) -> dict:
    """What the results table shows of one trained run (metrics.json of ``avemo train``)."""
    history = metrics.get("history", [])
    losses = [h["val_loss"] for h in history if "val_loss" in h]
    last = history[-1] if history else {}
    return {
        "best_val_loss": min(losses) if losses else math.nan,
        "val_macro_f1": metrics.get("best_val_macro_f1", math.nan),
        "test_macro_f1": metrics.get("test", {}).get("clip", {}).get("macro_f1", math.nan),
        "epochs_run": metrics.get("epochs_run", len(history)),
        "stopped_early": metrics.get("epochs_run", len(history)) < epochs,
        "modality_weights": [last.get("val_weight_audio", math.nan), last.get("val_weight_video", math.nan)],
        "train_seconds": metrics.get("train_seconds", math.nan),
    }


def run_trial(ctx: WorkerContext, space: Space, trial: optuna.Trial, point: dict, parser) -> float:
    """Train one point and return its objective value (user attrs hold everything the report shows)."""
    from avemo.training.train.compare import train_or_reuse

    argv = trial_argv(ctx.train_argv, space, point, parser)
    run_dir = Path(ctx.folder) / "trials" / space.slug(point)
    trial.set_user_attr("label", space.label(point))
    trial.set_user_attr("flags", space.flags(point))
    trial.set_user_attr("train_argv", argv)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", st.this_worker())
    cfg = replace(trial_config(argv, parser), out_dir=str(run_dir), progress=False, num_threads=ctx.threads)
    t0 = time.time()
    metrics, reused = train_or_reuse(cfg, tag=f"[trial {trial.number} {space.label(point)}]")
    summary = summarise_run(metrics, cfg.epochs) | {"reused_finished_run": reused, "seconds": time.time() - t0}
    for k, v in summary.items():
        trial.set_user_attr(k, v)
    value = summary["best_val_loss"] if ctx.objective == "val_loss" else summary["val_macro_f1"]
    if not math.isfinite(value):
        raise RuntimeError(f"objective {ctx.objective} is not finite ({value}): see {run_dir}/metrics.json")
    return float(value)


def suggest(trial: optuna.Trial, space: Space) -> dict:
    """The trial's grid point (GridSampler answers every suggest with the point's value)."""
    return {name: trial.suggest_categorical(name, values) for name, values in space.grid.items()}


def run_worker(ctx: WorkerContext, on_done=None) -> int:
    """Work until every point is settled; returns the number of trials this worker trained.

    ``on_done(frozen_trial)`` is called after each trial this worker finished (reports rewrite there).
    """
    space = Space.from_dict(ctx.space)
    storage = st.open_storage(ctx.storage, ctx.heartbeat, ctx.max_retry)
    study = optuna.load_study(study_name=ctx.study, storage=storage, sampler=st.grid_sampler(space))
    keys = [point_key(p) for p in space.points()]
    parser = train_parser()
    trained = 0
    while True:
        st.recover_stale(study, ctx.heartbeat, ctx.max_retry)
        prog = st.progress_of(study, space)
        if prog.settled >= set(keys):
            break
        if not prog.waiting and not prog.unstarted(keys):
            time.sleep(ctx.poll)  # the rest is running elsewhere; a dead worker's trial comes back as WAITING
            continue
        trial = study.ask()
        point = suggest(trial, space)
        dup = st.duplicate_of(study, trial.number, point, space)
        if dup is not None:
            trial.set_user_attr("duplicate_of", dup)
            study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number}: {space.label(point)} is held by trial {dup}; given up", flush=True)
            continue
        print(f"trial {trial.number}: {space.label(point)}", flush=True)
        try:
            with st.Heartbeat(study, trial, ctx.heartbeat):
                value = run_trial(ctx, space, trial, point, parser)
        except KeyboardInterrupt:
            # interrupted (Ctrl-C): fail it and queue it again, so the next run resumes it first
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(
                study, st.storage_of(study).get_trial(trial._trial_id)
            )
            raise
        except Exception as e:  # noqa: BLE001 - a failed trial is reported, the search goes on
            traceback.print_exc()
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
            trained += 1
        if on_done is not None:
            on_done(st.storage_of(study).get_trial(trial._trial_id))
    return trained


def worker_main(ctx_dict: dict) -> None:
    """Process entry of one worker of ``avemo search --workers N``: its output goes to logs/worker-<i>.log."""
    import os

    ctx = WorkerContext(**ctx_dict)
    log = Path(ctx.folder) / "logs" / f"worker-{ctx.index}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own stdout
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from avemo.training.search.report import write_reports

    print(f"worker {ctx.index} (pid {os.getpid()}) on study {ctx.study}", flush=True)
    try:
        run_worker(ctx, on_done=lambda t: write_reports(ctx, final=False))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print(json.dumps({"worker": ctx.index, "done": True}), flush=True)
