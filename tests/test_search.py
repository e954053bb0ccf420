"""`avemo search`: spaces, the study logic (duplicates, dead workers, heartbeats), reports, and the real CLI
on the tiny corpus: a 2x2 grid with 2 workers on SQLite, and a search killed mid-way then resumed.

The PostgreSQL run is in test_search_postgres.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from avemo.contract.options import UsageError
from avemo.training.search import study as st
from avemo.training.search import worker as search_worker
from avemo.training.search.space import (
    ABLATION_GRID,
    LOSS_WEIGHT_GRID,
    QUICK_COMBINATIONS,
    build_space,
    flag_argv,
    parse_param,
    point_key,
)

AVEMO = [sys.executable, "-c", "import sys; from avemo.cli import main; sys.exit(main())"]


# ------------------------------------------------------------------------------------------ spaces
def test_the_guides_spaces():
    quick = build_space("quick")
    flags = [quick.flags(p) for p in quick.points()]
    assert len(flags) == 6
    assert {"delta_va": 0.4, "delta_nce": 0.005} in flags and {"delta_va": 0.8, "delta_nce": 0.05} in flags
    assert flags[0] == {"delta_va": 0.3, "delta_nce": 0.001}  # the guide's current default comes first
    assert list(QUICK_COMBINATIONS) == [quick.label(p) for p in quick.points()]
    grid = build_space("grid")
    assert len({point_key(p) for p in grid.points()}) == 49 == len(LOSS_WEIGHT_GRID["delta_va"]) ** 2
    assert {"delta_va": 1.0, "delta_nce": 0.2} in grid.points()
    ablation = build_space("ablation")
    assert len(ablation.points()) == 48 and set(ablation.grid) == set(ABLATION_GRID)


def test_custom_params_and_their_errors():
    space = build_space("custom", ["lr=0.001,2e-3", "batch-size=16,32", "fusion=gated,xattn"])
    assert space.grid == {"lr": [0.001, 0.002], "batch_size": [16, 32], "fusion": ["gated", "xattn"]}
    assert len(space.points()) == 8 and space.slug(space.points()[0]) == "lr=0.001,batch_size=16,fusion=gated"
    assert parse_param("delta_va=0.1") == ("delta_va", [0.1])
    for bad, message in (
        (["lr"], "NAME=v1,v2"),
        (["lr="], "NAME=v1,v2"),
        (["lr=1,1"], "listed twice"),
        (["lr=1", "lr=2"], "given twice"),
        ([], "needs at least one --param"),
    ):
        with pytest.raises(UsageError, match=message):
            build_space("custom", bad)
    with pytest.raises(UsageError, match="only applies to `avemo search custom`"):
        build_space("quick", ["lr=1"])


def test_flag_argv_uses_the_train_parser():
    parser = search_worker.train_parser()
    assert flag_argv({"delta_va": 0.4, "fusion": "xattn"}, parser) == ["--delta_va", "0.4", "--fusion", "xattn"]
    assert flag_argv({"class_weight": "off", "variational": "true"}, parser) == ["--no-class-weight", "--variational"]
    with pytest.raises(UsageError, match="has no option --nope"):
        flag_argv({"nope": 1}, parser)
    with pytest.raises(UsageError, match="on/off flag"):
        flag_argv({"variational": "maybe"}, parser)


def test_fixed_flags_add_the_search_defaults_once_and_refuse_searched_ones(tmp_path):
    from avemo.training.search.launcher import SearchRequest, fixed_train_argv

    parser = search_worker.train_parser()
    argv, teachers = fixed_train_argv(SearchRequest("quick", build_space("quick"), ["--epochs", "3"]), tmp_path, parser)
    assert argv.count("--contrastive_proj_dim") == 1 and argv[:2] == ["--epochs", "3"] and "8" not in argv
    assert teachers == ["audio", "video"] and str(tmp_path / "teachers/audio/best.pt") in argv
    given_teacher = ["--teacher_audio", "a.pt"]
    argv, teachers = fixed_train_argv(SearchRequest("grid", build_space("grid"), given_teacher), tmp_path, parser)
    assert teachers == [] and "--teacher_video" not in argv
    for bad, message in ((["--delta_va", "0.5"], "what this search varies"), (["--out_dir", "x"], "sets it per trial")):
        with pytest.raises(UsageError, match=message):
            fixed_train_argv(SearchRequest("quick", build_space("quick"), bad), tmp_path, parser)


# ------------------------------------------------------------------------------- study logic (no training)
def _study(tmp_path, space, storage: str | None = None, heartbeat: int = 1):
    storage = storage or str(tmp_path / "study.journal")
    study, _ = st.open_study(st.open_storage(storage, heartbeat, 3), "s", space, "minimize", {"mode": "custom"})
    return study, storage


def _ctx(tmp_path, storage, space) -> search_worker.WorkerContext:
    return search_worker.WorkerContext(
        folder=str(tmp_path), storage=storage, study="s", space=space.to_dict(), train_argv=[],
        objective="val_loss", heartbeat=1, max_retry=3, threads=1, poll=0.05,
    )  # fmt: skip


def test_parallel_workers_never_train_a_point_twice(tmp_path, monkeypatch):
    """Nothing enqueued: GridSampler alone hands out points, and once every point has started it hands
    out running ones again (its known parallel-duplicate behaviour). The guard must keep each point to
    one training."""
    space = build_space("custom", ["a=1,2,3", "b=1,2"])
    study, storage = _study(tmp_path, space)
    trained: list[str] = []
    lock = threading.Lock()

    def fake_trial(ctx, space, trial, point, parser):
        with lock:
            trained.append(point_key(point))
        time.sleep(0.3)
        return float(point["a"] * 10 + point["b"])

    monkeypatch.setattr(search_worker, "run_trial", fake_trial)
    monkeypatch.setattr(search_worker, "train_parser", lambda: None)
    ctx = _ctx(tmp_path, storage, space)
    errors: list[BaseException] = []

    def work():
        try:
            search_worker.run_worker(ctx)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors  # e.g. GridSampler's study.stop() raising outside optimize
    assert sorted(trained) == sorted(point_key(p) for p in space.points())  # each exactly once
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len({point_key(t.params) for t in complete}) == 6
    dups = [t for t in trials if t.state == TrialState.PRUNED]
    assert all("duplicate_of" in t.user_attrs for t in dups)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_dead_workers_trial_is_retried_before_new_points(tmp_path):
    space = build_space("custom", ["a=1,2,3"])
    study, _ = _study(tmp_path, space)
    st.enqueue_missing(study, space, retry_failed=True)
    trial = study.ask()
    point = search_worker.suggest(trial, space)
    st.storage_of(study).set_trial_system_attr(
        trial._trial_id, st.OWNER, {"trial": trial.number, "host": st.this_worker()["host"], "pid": _dead_pid()}
    )
    assert st.recover_stale(study, heartbeat=60, max_retry=3) == [trial.number]  # no grace wait: the pid is gone
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    # waiting trials are popped in number order: the retry queues behind the points queued before it,
    # and no point is skipped or handed out twice
    seen = []
    for _ in range(3):
        t = study.ask()
        seen.append(search_worker.suggest(t, space))
        study.tell(t, 1.0)
    assert sorted(point_key(p) for p in seen) == sorted(point_key(p) for p in space.points())
    assert point in seen
    prog = st.progress_of(study, space)
    assert prog.settled == {point_key(p) for p in space.points()} and not prog.waiting


def test_journal_heartbeat_silence_fails_and_retries(tmp_path):
    space = build_space("custom", ["a=1,2"])
    study, _ = _study(tmp_path, space, heartbeat=1)
    trial = study.ask()
    search_worker.suggest(trial, space)
    # another machine's worker that beat once and went silent
    storage = st.storage_of(study)
    storage.set_trial_system_attr(trial._trial_id, st.OWNER, {"trial": trial.number, "host": "elsewhere", "pid": 1})
    storage.set_trial_system_attr(trial._trial_id, st.BEAT, {"trial": trial.number, "time": time.time()})
    assert st.recover_stale(study, heartbeat=1, max_retry=3) == []  # still within the grace period (3 s)
    time.sleep(3.5)
    assert st.recover_stale(study, heartbeat=1, max_retry=3) == [trial.number]
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == trial.params


def test_rdb_native_heartbeat_and_retry_callback(tmp_path):
    """On an RDB storage Optuna's own heartbeat judges silence; its retry callback queues the copy."""
    space = build_space("custom", ["a=1,2"])
    study, _ = _study(tmp_path, space, storage=f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat=1)
    assert st.native_heartbeat(study)
    trial = study.ask()
    search_worker.suggest(trial, space)
    with st.Heartbeat(study, trial, interval=1):
        time.sleep(1.5)
        assert st.recover_stale(study, heartbeat=1, max_retry=3) == []  # beating: alive
    st.storage_of(study).set_trial_system_attr(trial._trial_id, st.OWNER, {"trial": trial.number, "host": "x"})
    time.sleep(3.5)  # no beat for longer than the grace period
    assert st.recover_stale(study, heartbeat=1, max_retry=3) == [trial.number]
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == trial.number


def test_a_study_refuses_another_search(tmp_path):
    space = build_space("custom", ["a=1,2"])
    storage = str(tmp_path / "study.journal")
    st.open_study(
        st.open_storage(storage, 1, 3), "s", space, "minimize", {"mode": "custom", "train_argv": ["--lr", "1"]}
    )
    with pytest.raises(UsageError, match="already searches something else"):
        st.open_study(st.open_storage(storage, 1, 3), "s", space, "minimize", {"mode": "custom", "train_argv": []})
    assert st.redact("postgresql+psycopg://me:secret@db/avemo") == "postgresql+psycopg://me:***@db/avemo"


def _row(number, flags, value, state="COMPLETE", label=None):
    return {
        "number": number, "state": state, "flags": flags, "value": value, "label": label or str(flags),
        "best_val_loss": value, "val_macro_f1": None if value is None else 1 - value,
        "test_macro_f1": 0.5, "epochs_run": 8,
        "stopped_early": False, "modality_weights": [0.3, 0.7], "seconds": 10.0, "duplicate_of": None,
        "error": None, "run_dir": "r", "train_argv": ["--delta_va", str(flags.get("delta_va"))],
    }  # fmt: skip


def test_reports_rank_by_the_objective_and_draw_two_parameter_spaces(tmp_path):
    from avemo.training.search import report

    rows = [
        _row(0, {"delta_va": 0.3, "delta_nce": 0.001}, 0.9, label="default"),
        _row(1, {"delta_va": 0.5, "delta_nce": 0.001}, 0.7, label="stronger_distillation"),
        _row(2, {"delta_va": 0.3, "delta_nce": 0.01}, 0.8, label="stronger_alignment"),
        _row(3, {"delta_va": 0.8, "delta_nce": 0.05}, None, state="FAIL", label="aggressive") | {"error": "boom"},
    ]
    assert [r["number"] for r in report.ranked(rows, "val_loss")] == [1, 2, 0]
    assert [r["number"] for r in report.ranked(rows, "val_macro_f1")] == [0, 2, 1]  # value holds that objective
    table = report.markdown(rows, "val_loss", "t")
    assert table.index("stronger_distillation") < table.index("stronger_alignment") < table.index("| default")
    assert "1 failed trial(s)" in table and "boom" in table
    assert report.heatmap_axes(rows) == ("delta_va", "delta_nce")
    assert report.plot_heatmap(rows, "val_loss", tmp_path / "h.png", "t")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    three = [_row(i, {"a": i, "b": i % 2, "c": i % 3}, float(i)) for i in range(6)]
    assert report.heatmap_axes(three) is None and not report.plot_heatmap(three, "val_loss", tmp_path / "x.png", "t")
    text = report.best_config_text(report.ranked(rows, "val_loss")[0], "val_loss", "quick", 3)
    assert text.splitlines()[-1] == "avemo train --delta_va 0.5"


# ------------------------------------------------------------------------------------ the real CLI
def _search(tmp_path, corpus, *args, workers: int = 1, popen: bool = False, extra_env=None):
    cmd = [
        *AVEMO, "search", "custom", "--tiny", "--data_root", str(corpus), "--cache_dir", str(tmp_path / "cache"),
        "--epochs", "2", "--max_train_batches", "2", "--batch_size", "8", "--heartbeat", "1",
        "--workers", str(workers), "--no_progress", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    if popen:
        log = open(tmp_path / "search.log", "w")  # noqa: SIM115 - closed by the test
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _complete(folder: Path) -> list[dict]:
    doc = json.loads((folder / "results.json").read_text())
    return [t for t in doc["trials"] if t["state"] == "COMPLETE"]


@pytest.mark.slow
def test_two_workers_on_sqlite_run_each_point_of_a_2x2_grid_once(tiny_corpus, tmp_path):
    folder = tmp_path / "search"
    db = tmp_path / "study.sqlite"
    res = _search(
        tmp_path, tiny_corpus, "--param", "delta_va=0.1,0.3", "--param", "delta_nce=0.001,0.01",
        "--storage", f"sqlite:///{db}", "--dir", str(folder), "--json", workers=2,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    complete = _complete(folder)
    assert len(complete) == 4 and len({point_key(t["point"]) for t in complete}) == 4
    assert doc["finished"] == 4 and doc["best"]["number"] in {t["number"] for t in complete}
    # teachers were trained once, for every trial
    assert (folder / "teachers/audio/best.pt").is_file() and (folder / "teachers/video/best.pt").is_file()
    assert all("--teacher_audio" in t["train_argv"] for t in complete)
    for name in ("results.md", "intermediate_results.json", "search.json", "logs/worker-0.log", "logs/worker-1.log"):
        assert (folder / name).is_file(), name
    assert (folder / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (folder / "results.md").read_text()
    assert table.count("| delta_va=") == 4 and "| 1 | " in table
    # best_config.txt reproduces the best trial: its command line parses to that run's configuration
    from avemo.training.train.compare import comparable

    command = [ln for ln in (folder / "best_config.txt").read_text().splitlines() if ln.startswith("avemo train")]
    argv = shlex.split(command[0])[2:]
    cfg = search_worker.trial_config(argv)
    best = doc["best"]
    ran = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())["config"]
    assert comparable(cfg.to_dict() | {"out_dir": "", "progress": False}) == comparable(ran)
    assert (
        cfg.losses["distill"] == best["flags"]["delta_va"] and cfg.losses["contrastive"] == best["flags"]["delta_nce"]
    )


@pytest.mark.slow
def test_a_killed_search_resumes_without_redoing_finished_trials(tiny_corpus, tmp_path):
    folder = tmp_path / "search"
    params = ("--param", "lr=0.001,0.003", "--param", "weight_decay=0.0,0.01", "--dir", str(folder))
    proc = _search(tmp_path, tiny_corpus, *params, popen=True)
    journal = folder / "study.journal"
    deadline = time.time() + 300
    finished: dict[int, tuple] = {}
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not journal.exists():
                continue
            study = optuna.load_study(study_name="search", storage=st.open_storage(str(journal), 1, 3))
            done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
            if done and running:  # one trial finished, the next one is training: kill everything
                finished = {t.number: (point_key(t.params), t.value, t.user_attrs["run_dir"]) for t in done}
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker, mid-trial
        proc.wait()
    assert finished, (tmp_path / "search.log").read_text()[-3000:]
    mtimes = {n: (Path(run) / "metrics.json").stat().st_mtime_ns for n, (_, _, run) in finished.items()}

    res = _search(tmp_path, tiny_corpus, *params)  # the same command again: resumes the folder
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already finished are not trained again" in res.stderr
    complete = _complete(folder)
    assert len(complete) == 4 and len({point_key(t["point"]) for t in complete}) == 4
    by_number = {t["number"]: t for t in complete}
    for n, (key, value, run) in finished.items():  # the same trials, untouched
        assert point_key(by_number[n]["point"]) == key and by_number[n]["value"] == value
        assert (Path(run) / "metrics.json").stat().st_mtime_ns == mtimes[n]
    # the trial killed mid-training failed, was queued again and resumed from its last.pt or retrained
    doc = json.loads((folder / "results.json").read_text())
    failed = [t for t in doc["trials"] if t["state"] == "FAIL"]
    assert failed and all(t["retried_as"] in by_number for t in failed)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_its_trial_retried(tiny_corpus, tmp_path):
    folder = tmp_path / "search"
    proc = _search(
        tmp_path, tiny_corpus, "--param", "lr=0.001,0.002,0.003", "--dir", str(folder), workers=2, popen=True
    )
    journal, killed = folder / "study.journal", None
    deadline = time.time() + 300
    try:
        while killed is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not journal.exists():
                continue
            study = optuna.load_study(study_name="search", storage=st.open_storage(str(journal), 1, 3))
            for t in study.get_trials(states=(TrialState.RUNNING,)):
                owner = t.system_attrs.get(st.OWNER) or {}
                if owner.get("trial") == t.number:  # training: kill that worker process only
                    os.kill(owner["pid"], signal.SIGKILL)
                    killed = (t.number, point_key(t.params))
                    break
        assert killed is not None, (tmp_path / "search.log").read_text()[-3000:]
        assert proc.wait(timeout=300) == 0, (tmp_path / "search.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    doc = json.loads((folder / "results.json").read_text())
    complete = [t for t in doc["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 3 and len({point_key(t["point"]) for t in complete}) == 3
    lost = next(t for t in doc["trials"] if t["number"] == killed[0])
    assert lost["state"] == "FAIL" and lost["retried_as"] is not None
    retry = next(t for t in doc["trials"] if t["number"] == lost["retried_as"])
    assert retry["state"] == "COMPLETE" and point_key(retry["point"]) == killed[1]
    assert "died" in (tmp_path / "search.log").read_text()  # the launcher started a new worker
