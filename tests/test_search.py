"""`avemo search`: spaces, the study logic (duplicates, dead workers, heartbeats), reports, and the real CLI
on the tiny corpus: a 2x2 grid with 2 workers on SQLite, and a search killed mid-way then resumed.

The PostgreSQL run is in test_search_postgres.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import datetime
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


def _ctx(tmp_path, storage, space, heartbeat: int = 1) -> search_worker.WorkerContext:
    return search_worker.WorkerContext(
        folder=str(tmp_path), storage=storage, study="s", space=space.to_dict(), train_argv=[],
        objective="val_loss", heartbeat=heartbeat, max_retry=3, threads=1, poll=0.05,
    )  # fmt: skip


def test_parallel_workers_never_train_a_point_twice(tmp_path, monkeypatch):
    """One point queued twice (what two launchers enqueuing the same point at one moment leave), the rest
    handed out by GridSampler alone, which hands out a point again once its grid is used up (its known
    parallel-duplicate behaviour, which workers racing for the last points may meet). The guard must keep
    each point to one training.

    The queued copy is a duplicate by construction: WAITING trials are popped in number order, so the
    first copy is RUNNING (or done) before the second is popped; which worker pops it does not matter."""
    space = build_space("custom", ["a=1,2,3", "b=1,2"])
    study, storage = _study(tmp_path, space)
    twice = space.points()[0]
    study.enqueue_trial(twice)
    study.enqueue_trial(twice)
    trained: list[str] = []
    lock = threading.Lock()

    def fake_trial(ctx, space, trial, point, parser):
        with lock:
            trained.append(point_key(point))
        time.sleep(0.3)  # the workers overlap; nothing asserted depends on how much
        return float(point["a"] * 10 + point["b"])

    monkeypatch.setattr(search_worker, "run_trial", fake_trial)
    monkeypatch.setattr(search_worker, "train_parser", lambda: None)
    # a grace period (3 x 600 s) no live trial here can outlast: on a loaded machine a 3 s grace could fail a
    # trial that is still training and have it trained twice; this test is about duplicates, not liveness
    ctx = _ctx(tmp_path, storage, space, heartbeat=600)
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
        t.join(timeout=600)  # bounds a hang only
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors  # e.g. GridSampler's study.stop() raising outside optimize
    assert sorted(trained) == sorted(point_key(p) for p in space.points())  # each exactly once
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len({point_key(t.params) for t in complete}) == 6
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs["duplicate_of"] == 0  # the queued copy
    dups = [t for t in trials if t.state == TrialState.PRUNED]
    assert all("duplicate_of" in t.user_attrs for t in dups)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _owned_by_a_dead_worker(study: optuna.Study, trial: optuna.Trial) -> None:
    """Mark ``trial`` as held by a worker process of this machine that has exited."""
    st.storage_of(study).set_trial_system_attr(
        trial._trial_id, st.OWNER, {"trial": trial.number, "host": st.this_worker()["host"], "pid": _dead_pid()}
    )


def _hand_out(study: optuna.Study, space, n: int) -> list[tuple[int, dict, int | None]]:
    """Ask for, and finish, ``n`` trials one after another, as one worker does: [(trial number, its point, the
    number of the trial it retries or None)] in the order ``study.ask()`` handed them out."""
    handed = []
    for _ in range(n):
        trial = study.ask()
        point = search_worker.suggest(trial, space)
        done = study.tell(trial, 1.0)
        handed.append((trial.number, point, done.system_attrs.get("failed_trial")))
    return handed


def test_a_dead_workers_trial_is_retried_before_new_points(tmp_path):
    """A dead worker's trial is failed and a copy of it queued (WAITING, with the same point).
    ``study.ask()`` pops WAITING trials in trial-number order and samples a new point only when none waits.

    So the copy is handed out before every point that is not queued yet (2.), but NOT before the points queued
    ahead of it: those keep their turn, first in, first out (1.). In the product the launcher queues every
    point up front (``prepare_queue``), so there a retry comes after the points still waiting. Either way no
    point is skipped or handed out twice."""
    space = build_space("custom", ["a=1,2,3"])
    a1, a2, a3 = ({"a": v} for v in (1, 2, 3))
    every_key = {point_key(p) for p in space.points()}

    # 1. every point queued up front, as the launcher does: the retry goes to the back of the queue
    study, _ = _study(tmp_path / "queued", space)
    assert st.enqueue_missing(study, space, retry_failed=True) == [a1, a2, a3]
    trial = study.ask()
    assert (trial.number, search_worker.suggest(trial, space)) == (0, a1)
    _owned_by_a_dead_worker(study, trial)
    assert st.recover_stale(study, heartbeat=60, max_retry=3) == [0]  # no grace wait: the pid is gone
    assert study.get_trials()[0].state == TrialState.FAIL
    assert _hand_out(study, space, 3) == [(1, a2, None), (2, a3, None), (3, a1, 0)]
    assert not study.get_trials(states=(TrialState.WAITING,))  # nothing left over: no second copy
    prog = st.progress_of(study, space)
    assert prog.settled == set(prog.complete) == every_key and not prog.running

    # 2. nothing queued (GridSampler samples each new point): the retry comes before any new point
    study, _ = _study(tmp_path / "sampled", space)
    trial = study.ask()
    point = search_worker.suggest(trial, space)
    _owned_by_a_dead_worker(study, trial)
    assert st.recover_stale(study, heartbeat=60, max_retry=3) == [0]
    handed = _hand_out(study, space, 3)
    assert handed[0] == (1, point, 0)
    assert [(n, retried) for n, _, retried in handed[1:]] == [(2, None), (3, None)]
    assert sorted(point_key(p) for _, p, _ in handed) == sorted(every_key)  # the other two, once each
    prog = st.progress_of(study, space)
    assert prog.settled == set(prog.complete) == every_key and not prog.waiting and not prog.running


def test_journal_heartbeat_silence_fails_and_retries(tmp_path):
    """A journal storage has no heartbeat of its own: the worker's BEAT attribute is judged against the clock.
    The clock is passed in (``now``), so the test constructs "within" and "past" the grace period exactly."""
    space = build_space("custom", ["a=1,2"])
    study, _ = _study(tmp_path, space, heartbeat=1)
    trial = study.ask()
    search_worker.suggest(trial, space)
    grace = st.grace_period(1)
    started = study.get_trials()[trial.number].datetime_start.timestamp()
    # another machine's worker that beat once, long after the trial started, and went silent
    storage = st.storage_of(study)
    storage.set_trial_system_attr(trial._trial_id, st.OWNER, {"trial": trial.number, "host": "elsewhere", "pid": 1})
    beat = started + 100 * grace
    storage.set_trial_system_attr(trial._trial_id, st.BEAT, {"trial": trial.number, "time": beat})
    # long past the start, but 1 s short of the grace period after the beat: the beat keeps it alive
    assert st.recover_stale(study, heartbeat=1, max_retry=3, now=beat + grace - 1) == []
    assert study.get_trials()[trial.number].state == TrialState.RUNNING
    # 1 s past the grace period after the beat: silent, failed and retried
    assert st.recover_stale(study, heartbeat=1, max_retry=3, now=beat + grace + 1) == [trial.number]
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == trial.params
    assert waiting[0].system_attrs["failed_trial"] == trial.number


def _db_heartbeat(db: Path, trial_id: int) -> datetime | None:
    """The heartbeat Optuna's RDB storage recorded for a trial (its ``trial_heartbeats`` row), None if none."""
    with closing(sqlite3.connect(db, timeout=60)) as conn:
        row = conn.execute("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)).fetchone()
    return None if row is None else datetime.fromisoformat(row[0])


def test_rdb_native_heartbeat_and_retry_callback(tmp_path):
    """On an RDB storage Optuna's own heartbeat judges silence; its retry callback queues the copy.

    Alive: the beating thread is seen to record a beat (the row moves past the first one) before the trial is
    judged. Silent: the recorded beat is moved back an hour in the database, past any grace period."""
    space = build_space("custom", ["a=1,2"])
    db = tmp_path / "db.sqlite"
    study, _ = _study(tmp_path, space, storage=f"sqlite:///{db}", heartbeat=1)
    assert st.native_heartbeat(study)
    trial = study.ask()
    search_worker.suggest(trial, space)
    with st.Heartbeat(study, trial, interval=1):
        first = _db_heartbeat(db, trial._trial_id)
        assert first is not None  # entering the block beats once
        deadline = time.time() + 120  # bounds a hang only: the thread beats every second
        while (last := _db_heartbeat(db, trial._trial_id)) <= first and time.time() < deadline:
            time.sleep(0.1)
        assert last > first, "the heartbeat thread recorded no beat"
        assert st.recover_stale(study, heartbeat=1, max_retry=3) == []  # beating: alive
    assert study.get_trials()[trial.number].state == TrialState.RUNNING
    st.storage_of(study).set_trial_system_attr(trial._trial_id, st.OWNER, {"trial": trial.number, "host": "x"})
    with closing(sqlite3.connect(db, timeout=60)) as conn, conn:  # the worker went silent an hour ago
        moved = conn.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour') WHERE trial_id = ?", (trial._trial_id,)
        )
        assert moved.rowcount == 1
    assert st.recover_stale(study, heartbeat=1, max_retry=3) == [trial.number]
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == trial.number
    assert waiting[0].params == trial.params


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
# Every dead worker these tests make is a killed process of this machine, which ``recover_stale`` finds at once
# by its pid. The heartbeat is long (a grace period of 3 x 600 s, past every deadline here), so no live trial is
# failed (and retried) for a late heartbeat however loaded the machine is: the tests count the failed trials.
CLI_HEARTBEAT = "600"


def _search(tmp_path, corpus, *args, workers: int = 1, popen: bool = False, extra_env=None):
    cmd = [
        *AVEMO, "search", "custom", "--tiny", "--data_root", str(corpus), "--cache_dir", str(tmp_path / "cache"),
        "--epochs", "2", "--max_train_batches", "2", "--batch_size", "8", "--heartbeat", CLI_HEARTBEAT,
        "--workers", str(workers), "--no_progress", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    if popen:
        log = open(tmp_path / "search.log", "w")  # noqa: SIM115 - closed by the test
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


# A sitecustomize module the search's processes load through PYTHONPATH (see _hold): the trial that is the
# AVEMO_TEST_HOLD_AT-th (from 0) to start training, counted over every worker process, does not train. It writes
# {"trial", "pid"} to held.json and blocks until it is killed. Every other trial trains as usual.
HOLD_HOOK = """
import os

if os.environ.get("AVEMO_TEST_HOLD_DIR"):
    import json
    import time
    from pathlib import Path

    from avemo.training.search import worker

    _train = worker.run_trial

    def _claim(folder):  # this trial's place in the order trials start in, atomic across processes
        i = 0
        while True:
            try:
                os.close(os.open(folder / f"started-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return i
            except FileExistsError:
                i += 1

    def run_trial(ctx, space, trial, point, parser):
        folder = Path(os.environ["AVEMO_TEST_HOLD_DIR"])
        if _claim(folder) != int(os.environ["AVEMO_TEST_HOLD_AT"]):
            return _train(ctx, space, trial, point, parser)
        note = folder / f"held-{os.getpid()}.tmp"
        note.write_text(json.dumps({"trial": trial.number, "pid": os.getpid()}))
        note.rename(folder / "held.json")  # atomic: whoever sees held.json reads it whole
        time.sleep(1800)  # until the test kills this process
        raise RuntimeError("the held trial was never killed")

    worker.run_trial = run_trial
"""


def _hold(tmp_path, at: int) -> tuple[dict, Path]:
    """(environment for ``_search``, the held.json path): the ``at``-th trial to start training (from 0, over
    every worker) holds, RUNNING, with its worker's heartbeat, until killed. A test that waits for held.json
    then kills a trial that is known to be running and cannot finish first."""
    folder = tmp_path / "hold"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOLD_HOOK)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "AVEMO_TEST_HOLD_DIR": str(folder), "AVEMO_TEST_HOLD_AT": str(at)}
    return env, folder / "held.json"


def _wait_for_hold(held: Path, proc: subprocess.Popen, tmp_path) -> dict:
    """{"trial", "pid"} of the held trial, once it holds (the deadline bounds a hang only)."""
    deadline = time.time() + 900
    while not held.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert held.exists(), (tmp_path / "search.log").read_text()[-3000:]
    return json.loads(held.read_text())


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
    env, held_file = _hold(tmp_path, at=1)  # one worker: the first trial finishes, the second holds
    proc = _search(tmp_path, tiny_corpus, *params, popen=True, extra_env=env)
    try:
        held = _wait_for_hold(held_file, proc, tmp_path)
        study = optuna.load_study(study_name="search", storage=st.open_storage(str(folder / "study.journal"), 1, 3))
        trials = study.get_trials()
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        assert [t.number for t in done] == [0] and trials[held["trial"]].state == TrialState.RUNNING
        finished = {t.number: (point_key(t.params), t.value, t.user_attrs["run_dir"]) for t in done}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker, mid-trial
        proc.wait()
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
    # the trial killed mid-trial (and only it) failed, was queued again and trained by the resumed search
    doc = json.loads((folder / "results.json").read_text())
    failed = [t for t in doc["trials"] if t["state"] == "FAIL"]
    assert [t["number"] for t in failed] == [held["trial"]] and failed[0]["retried_as"] in by_number
    assert point_key(by_number[failed[0]["retried_as"]]["point"]) == point_key(trials[held["trial"]].params)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_its_trial_retried(tiny_corpus, tmp_path):
    folder = tmp_path / "search"
    env, held_file = _hold(tmp_path, at=0)  # the first trial to start holds until its worker is killed
    proc = _search(
        tmp_path, tiny_corpus, "--param", "lr=0.001,0.002,0.003", "--dir", str(folder), workers=2, popen=True,
        extra_env=env,
    )  # fmt: skip
    try:
        held = _wait_for_hold(held_file, proc, tmp_path)
        study = optuna.load_study(study_name="search", storage=st.open_storage(str(folder / "study.journal"), 1, 3))
        lost = study.get_trials()[held["trial"]]
        # running, and held by the worker process about to be killed: it cannot finish before the kill
        assert lost.state == TrialState.RUNNING
        assert lost.system_attrs[st.OWNER] == {"trial": lost.number, **st.this_worker(), "pid": held["pid"]}
        os.kill(held["pid"], signal.SIGKILL)  # that worker process only
        assert proc.wait(timeout=900) == 0, (tmp_path / "search.log").read_text()[-3000:]  # bounds a hang only
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    doc = json.loads((folder / "results.json").read_text())
    complete = [t for t in doc["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 3 and len({point_key(t["point"]) for t in complete}) == 3
    failed = [t for t in doc["trials"] if t["state"] == "FAIL"]
    assert [t["number"] for t in failed] == [lost.number] and failed[0]["retried_as"] is not None
    retry = next(t for t in doc["trials"] if t["number"] == failed[0]["retried_as"])
    assert retry["state"] == "COMPLETE" and point_key(retry["point"]) == point_key(lost.params)
    assert "died (exit -9)" in (tmp_path / "search.log").read_text()  # the launcher started a new worker
