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
from typing import Literal

import optuna
from optuna.trial import TrialState

from avemo.training.search import study as st
from avemo.training.search.space import Space, flag_argv, point_key

Direction = Literal["minimize", "maximize"]
OBJECTIVES: dict[str, Direction] = {"val_loss": "minimize", "val_macro_f1": "maximize"}  # objective -> direction


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


def best_epoch(metrics: dict) -> dict:
    """The history record of the epoch the best checkpoint comes from: the lowest validation loss for a
    regression run, the best validation selection metric (macro-F1; weighted F1 for conversations) otherwise;
    the last record when none matches (an older metrics.json)."""
    history = metrics.get("history", [])
    if not history:
        return {}
    if "regression" in metrics.get("test", {}):
        scored = [h for h in history if isinstance(h.get("val_loss"), int | float)]
        return min(scored, key=lambda h: h["val_loss"]) if scored else history[-1]  # min: the first of equals
    for key in ("weighted_f1", "macro_f1"):
        best = metrics.get(f"best_val_{key}")
        if best is not None and (match := [h for h in history if h.get(f"val_{key}") == best]):
            return match[0]
    return history[-1]


def modality_weights(metrics: dict, record: dict) -> dict[str, float]:
    """{modality: mean validation weight} of every modality the model reads, in the model's order."""
    names = list(metrics.get("config", {}).get("model", {}).get("modalities") or [])
    names += [k.removeprefix("val_weight_") for k in record if k.startswith("val_weight_")]
    return {m: record.get(f"val_weight_{m}", math.nan) for m in dict.fromkeys(names)}


# the field's regression figures: stored name -> (MMSA's name in metrics.json's test.regression, the history key
# of the validation epoch); Acc-2 = Non0_acc_2 (non-zero scores), Acc-7 = Mult_acc_7
REGRESSION_FIGURES = {
    "corr": ("Corr", "val_corr"),
    "mae": ("MAE", "val_mae"),
    "mse": ("MSE", "val_loss"),
    "acc2": ("Non0_acc_2", "val_Non0_acc_2"),
    "acc7": ("Mult_acc_7", "val_Mult_acc_7"),
}


def summarise_run(metrics: dict, epochs: int) -> dict:
    """What the results table shows of one trained run (metrics.json of ``avemo train``).

    Every run: the best validation loss, the epochs and the modality weights of the best validation epoch.
    Regression (the sentiment score of a feature file): Corr, MAE, MSE, Acc-2 (non-zero), Acc-7 of the best
    checkpoint on the test split (test_*) and of the best validation epoch (val_*). Classification: macro-F1
    (and weighted F1 for conversations) on validation and test."""
    history = metrics.get("history", [])
    losses = [h["val_loss"] for h in history if "val_loss" in h]
    record = best_epoch(metrics)
    test = metrics.get("test", {})
    regression = "regression" in test
    summary = {
        "task": "regression" if regression else "classification",
        "best_val_loss": min(losses) if losses else math.nan,
        "val_macro_f1": metrics.get("best_val_macro_f1", math.nan),
        "test_macro_f1": test.get("clip", {}).get("macro_f1", math.nan),
        "epochs_run": metrics.get("epochs_run", len(history)),
        "best_epoch": record.get("epoch"),
        "stopped_early": metrics.get("epochs_run", len(history)) < epochs,
        "modality_weights": modality_weights(metrics, record),
        "train_seconds": metrics.get("train_seconds", math.nan),
    }
    if regression:
        reg = test["regression"]
        for short, (name, val_key) in REGRESSION_FIGURES.items():
            summary[f"test_{short}"] = reg.get(name, math.nan)
            summary[f"val_{short}"] = record.get(val_key, math.nan)
    elif "weighted_f1" in test.get("clip", {}) and "best_val_weighted_f1" in metrics:  # a conversation run
        summary["val_weighted_f1"] = metrics["best_val_weighted_f1"]
        summary["test_weighted_f1"] = test["clip"]["weighted_f1"]
    return summary


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
