"""``run_search``: the search folder, the teachers, the study, N worker processes, and a progress bar.

The launcher prepares everything the workers share (the fixed train flags, teacher checkpoints trained
once, every grid point enqueued once), starts ``workers`` processes (``worker.worker_main``), restarts
one that dies while points are left (its trial is retried by the heartbeat logic), follows the study
with a progress bar over trials showing the best so far, and writes the final reports.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import cast

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from avemo.contract.options import UsageError, given
from avemo.contract.progress import progress as progress_bar
from avemo.training.search import study as st
from avemo.training.search.report import write_reports
from avemo.training.search.space import (
    FEATURE_INFONCE_DEFAULTS,
    INFONCE_DEFAULTS,
    INFONCE_FLAGS,
    MODES,
    SEARCH_DEFAULTS,
    Space,
    point_key,
)
from avemo.training.search.worker import OBJECTIVES, WorkerContext, train_parser, trial_argv, trial_config, worker_main

SPEC_FILE = "search.json"


@dataclass
class SearchRequest:
    """One `avemo search` command line, parsed."""

    mode: str
    space: Space
    train_argv: list[str]  # the `avemo train` flags given on the command line
    objective: str = "val_loss"
    workers: int = 1
    storage: str | None = None  # None: a journal file in the search folder
    study: str | None = None  # None: the folder name (local storage) or the mode's folder prefix (shared storage)
    out: Path = Path("runs/search")
    folder: Path | None = None  # an exact search folder (resumed when it holds this search)
    resume: bool = False  # continue the newest <prefix>_* folder under ``out``
    heartbeat: int = 10  # seconds between heartbeats; a trial silent for 3x this is retried
    max_retry: int = 3
    progress: bool = True


def search_folder(req: SearchRequest) -> Path:
    prefix = MODES[req.mode].folder
    if req.folder is not None:
        return req.folder
    if req.resume:
        found = sorted(p.parent for p in req.out.glob(f"{prefix}_*/{SPEC_FILE}"))
        if not found:
            raise UsageError(f"--resume: no {prefix}_* search under {req.out} to continue")
        return found[-1]
    return req.out / f"{prefix}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


def _with_defaults(argv: list[str], defaults: tuple[str, ...], parser) -> list[str]:
    """``argv`` plus each ``--flag value`` pair of ``defaults`` whose flag neither ``argv`` nor its ``--preset``
    gives (once each): ``avemo search ablation --preset joyful`` keeps the preset's fusion."""
    args = parser.parse_args(argv)
    have = set(given(args))
    if getattr(args, "preset", None):
        from avemo.training.train.presets import PRESETS

        have |= set(PRESETS[args.preset])
    out = list(argv)
    for flag, value in zip(defaults[::2], defaults[1::2]):
        dest = parser._option_string_actions[flag].dest
        if dest not in have:
            out += [flag, value]
            have.add(dest)
    return out


def _resolved(user, have: dict, dest: str):
    """The value ``dest`` will have in the run: the command line's, else its ``--preset``'s, else the default."""
    if dest not in have and getattr(user, "preset", None):
        from avemo.training.train.presets import PRESETS

        if dest in PRESETS[user.preset]:
            return PRESETS[user.preset][dest]
    return getattr(user, dest)


def teacher_modalities(dataset: str, modalities: str) -> list[str]:
    """The teachers a distilling search trains: an audio-only and a video-only model. On a feature file
    (--dataset mosi|mosei|sims or a conversation file) text is the anchor and only the modalities the model
    reads get a teacher (``--modalities at`` -> audio)."""
    from avemo.training.train.config import DIALOGUE_DATASETS, FEATURE_DATASETS

    if dataset not in FEATURE_DATASETS + DIALOGUE_DATASETS:
        return ["audio", "video"]
    letters = modalities or "atv"
    return [m for m in ("audio", "video") if m[0] in letters]


def fixed_train_argv(req: SearchRequest, folder: Path, parser) -> tuple[list[str], list[str]]:
    """(fixed train flags with defaults and teachers, the teachers this search must train: "audio"/"video")."""
    from avemo.training.train.config import FEATURE_DATASETS

    try:
        user = parser.parse_args(req.train_argv)
    except SystemExit:
        raise UsageError(f"not `avemo train` flags: {shlex.join(req.train_argv)} (see avemo train --help)") from None
    have = given(user)
    for name in req.space.grid if req.space.combinations is None else ("delta_va", "delta_nce"):
        action = parser._option_string_actions.get(f"--{name}")
        if action is not None and action.dest in have:
            raise UsageError(f"--{name} is what this search varies; leave it off the command line")
    for flag in ("out_dir", "resume", "json"):
        if flag in have:
            raise UsageError(f"{have[flag]}: the search sets it per trial; leave it off the command line")
    defaults = SEARCH_DEFAULTS + MODES[req.mode].defaults
    searched = {n for p in req.space.points() for n in req.space.flags(p)}
    # an InfoNCE weight needs the projections too; JOYFUL's graph contrastive loss has its own
    if searched & INFONCE_FLAGS and _resolved(user, have, "fusion") != "joyful":
        defaults += INFONCE_DEFAULTS
    dataset = _resolved(user, have, "dataset")
    modalities = _resolved(user, have, "modalities") or ""
    # seed 002's delta_nce on a feature file: InfoNCE(video, text) + InfoNCE(audio, text), text the anchor
    if "delta_nce" in searched and dataset in FEATURE_DATASETS and "t" in (modalities or "atv"):
        defaults += FEATURE_INFONCE_DEFAULTS
    argv = _with_defaults(req.train_argv, defaults, parser)
    distils = any(float(req.space.flags(p).get("delta_va", 0) or 0) > 0 for p in req.space.points())
    teachers = []
    if distils and "teacher_audio" not in have and "teacher_video" not in have:
        teachers = teacher_modalities(dataset, modalities)
        for m in teachers:
            argv += [f"--teacher_{m}", str((folder / "teachers" / m / "best.pt").resolve())]
    return argv, teachers


def teacher_config(base, m: str, out_dir: Path, progress: bool):
    """The TrainConfig of the ``m``-only teacher ("audio"/"video") of the trials ``base``: the same data, task,
    encoders and optimisation, one modality, no contrastive projection, no distillation. A clip teacher is
    ``--fusion audio|video``; a feature teacher ``--modalities a|v`` (what ``--preset mosei_audio_teacher`` is)."""
    losses = {**base.losses, "distill": 0.0}
    if base.is_features:
        losses["contrastive"] = 0.0  # one modality: nothing to pair (and no projection)
    cfg = replace(
        base,
        out_dir=str(out_dir),
        progress=progress,
        teacher_audio="",
        teacher_video="",
        teacher_text="",
        losses=losses,
        model=replace(base.model, fusion=m, contrastive_proj_dim=0),
    )
    return replace(cfg, modalities=m[0]) if base.is_features else cfg


def train_teachers(req: SearchRequest, folder: Path, fixed: list[str], which: list[str], parser) -> None:
    """Train the audio-only and video-only teachers once (reused when finished, resumed when interrupted)."""
    from avemo.training.train.compare import train_or_reuse

    no_teachers = [
        w for i, w in enumerate(fixed) if not (w.startswith("--teacher_") or fixed[i - 1].startswith("--teacher_"))
    ]
    # --delta_va 0: a preset's distillation weight (mosei_tva) needs a teacher; the teachers distil nothing
    base = trial_config([*no_teachers, "--delta_va", "0"], parser)
    for m in which:
        cfg = teacher_config(base, m, folder / "teachers" / m, req.progress)
        print(f"[search] teacher {m}: training once into {cfg.out_dir} (every trial distils from it)", file=sys.stderr)
        metrics, _ = train_or_reuse(cfg, log=lambda s: print(s, file=sys.stderr), tag=f"[teacher {m}]")
        print(f"[search] teacher {m}: {teacher_summary(metrics)}", file=sys.stderr)


def teacher_summary(metrics: dict) -> str:
    """One line of a teacher's results: val MSE and test Corr / MAE (regression), else val / test macro-F1."""
    test = metrics.get("test", {})
    if "regression" in test:
        r = test["regression"]
        return (
            f"val MSE {metrics.get('best_val_loss', math.nan):.4f}, test Corr {r.get('Corr', math.nan):.3f}, "
            f"MAE {r.get('MAE', math.nan):.3f}"
        )
    f1 = test.get("clip", {}).get("macro_f1", math.nan)
    return f"val macro-F1 {metrics.get('best_val_macro_f1', math.nan):.3f}, test {f1:.3f}"


def _line(t, space: Space, objective: str) -> str:
    u = t.user_attrs
    point = st.trial_point(t, space)
    label = space.label(point) if point else "?"
    if t.state == TrialState.FAIL:
        return f"trial {t.number} {label}: failed ({u.get('error', 'worker died')})"
    early = ", stopped early" if u.get("stopped_early") else ""
    if u.get("task") == "regression":
        figures = (
            f"val MSE {u.get('best_val_loss', math.nan):.4f}, val Corr {u.get('val_corr', math.nan):.3f}, "
            f"test Corr {u.get('test_corr', math.nan):.3f}, MAE {u.get('test_mae', math.nan):.3f}"
        )
    else:
        figures = f"val loss {u.get('best_val_loss', math.nan):.4f}, val macro-F1 {u.get('val_macro_f1', math.nan):.3f}"
    return f"trial {t.number} {label}: {figures} ({u.get('epochs_run')} epochs{early}, {u.get('seconds', 0):.0f} s)"


def run_search(req: SearchRequest) -> dict:
    """Run (or resume) a search to the end; returns the results document (results.json)."""
    if req.objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)} (got {req.objective})")
    if req.workers < 1 or req.heartbeat < 1:
        raise UsageError("--workers and --heartbeat must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = train_parser()
    folder = search_folder(req)
    fixed, teachers = fixed_train_argv(req, folder, parser)
    # every trial's flags are refused now, not after hours of training
    configs = [trial_config(trial_argv(fixed, req.space, p, parser), parser) for p in req.space.points()]
    if req.objective == "val_macro_f1" and any(c.resolved_task == "regression" for c in configs):
        raise UsageError(
            "--objective val_macro_f1: a regression run (the sentiment score of a feature file) has no macro-F1; "
            "it is ranked by its best validation MSE (--objective val_loss)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    storage = req.storage or str(folder / "study.journal")
    name = req.study or (MODES[req.mode].folder if st.is_url(storage) else folder.name)
    spec = {"mode": req.mode, "space": req.space.to_dict(), "train_argv": fixed, "objective": req.objective}
    study, created = st.open_study(
        st.open_storage(storage, req.heartbeat, req.max_retry), name, req.space, OBJECTIVES[req.objective], spec
    )
    (folder / SPEC_FILE).write_text(json.dumps(spec | {"storage": st.redact(storage), "study": name}, indent=2))
    print(
        f"[search] {req.mode}: {len(req.space.points())} points, study {name!r} in {st.redact(storage)}",
        file=sys.stderr,
    )
    print(f"[search] folder {folder}", file=sys.stderr)
    st.prepare_queue(study, req.space, created)  # before the teachers: a second launcher waits for the queue
    if teachers:
        train_teachers(req, folder, fixed, teachers, parser)
    recovered = st.recover_stale(study, req.heartbeat, req.max_retry)
    if recovered:
        print(f"[search] trial(s) {recovered} lost their worker: queued again", file=sys.stderr)
    done_before = len(st.progress_of(study, req.space).complete)
    if done_before:
        print(f"[search] resuming: {done_before} point(s) already finished are not trained again", file=sys.stderr)
    ctx = WorkerContext(
        folder=str(folder),
        storage=storage,
        study=name,
        space=req.space.to_dict(),
        train_argv=fixed,
        objective=req.objective,
        heartbeat=req.heartbeat,
        max_retry=req.max_retry,
        threads=max(1, (os.cpu_count() or 1) // req.workers),
    )
    t0 = time.time()
    status = follow(study, ctx, req)
    doc = write_reports(
        ctx, final=status == "done", extra={"wall_seconds": round(time.time() - t0, 1), "workers": req.workers}
    )
    if status != "done":
        raise KeyboardInterrupt
    return doc | {"folder": str(folder)}


def follow(study: optuna.Study, ctx: WorkerContext, req: SearchRequest) -> str:
    """Start the workers, restart dead ones while points are left, show progress; "done" or "interrupted"."""
    space = Space.from_dict(ctx.space)
    keys = {point_key(p) for p in space.points()}
    mp = multiprocessing.get_context("spawn")
    procs = {i: mp.Process(target=worker_main, args=(replace(ctx, index=i).to_dict(),)) for i in range(req.workers)}
    for p in procs.values():
        p.start()
    restarts, reported = 0, {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    bar = progress_bar(total=len(keys), desc=f"{req.mode} search", unit="trial", disable=not req.progress)
    try:
        while True:
            prog = st.progress_of(study, space)
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                if t.number not in reported and t.state in (TrialState.COMPLETE, TrialState.FAIL):
                    reported.add(t.number)
                    tqdm.write(_line(t, space, ctx.objective), file=sys.stderr)
            bar.update(len(prog.settled & keys) - bar.n)
            if prog.complete:
                best = (min if ctx.objective == "val_loss" else max)(
                    prog.complete.values(),
                    key=lambda t: cast(float, t.value),  # a complete trial has its value
                )
                point = st.trial_point(best, space)
                assert point is not None  # and its params
                bar.set_postfix(
                    best=f"{best.value:.4f} ({space.label(point)})",
                    running=sum(len(v) for v in prog.running.values()),
                )
            unsettled = not prog.settled >= keys
            for i, p in procs.items():
                if unsettled and not p.is_alive() and p.exitcode not in (0, None) and restarts < 2 * req.workers:
                    restarts += 1
                    tqdm.write(f"[search] worker {i} died (exit {p.exitcode}); starting it again", file=sys.stderr)
                    procs[i] = mp.Process(target=worker_main, args=(replace(ctx, index=i).to_dict(),))
                    procs[i].start()
            if not any(p.is_alive() for p in procs.values()):
                if not st.progress_of(study, space).settled >= keys:  # read again: the last trial may just have ended
                    codes = {i: p.exitcode for i, p in procs.items()}
                    raise RuntimeError(
                        f"every worker exited (exit codes {codes}) with points left; see {ctx.folder}/logs/"
                        "worker-*.log. Run the same command with --resume to continue."
                    )
                return "done"
            time.sleep(1.0)
    except KeyboardInterrupt:
        tqdm.write("[search] interrupted: waiting for the workers to queue their trials again", file=sys.stderr)
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        return "interrupted"
    finally:
        bar.close()
