"""The Optuna side of ``avemo search``: storage, the study, liveness of trials, and what is left to run.

Storage: Optuna's journal file in the search folder by default (many processes on one machine append
to one file under a file lock; SQLite would lock under parallel writers), a journal file at a path,
or any SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://user@host/db``) through
``RDBStorage`` to share one study between machines.

Liveness: a worker records a heartbeat for its running trial (Optuna's own heartbeat on an RDB
storage; a ``avemo_heartbeat`` system attribute on a journal, which has none). ``recover_stale``
fails a RUNNING trial whose heartbeat is older than the grace period, or whose worker process on
this host is gone, and hands it to Optuna's ``RetryHeartbeatStaleTrialCallback``, which enqueues a
copy with the same grid point (WAITING). Waiting trials are popped first by ``study.ask()``, so a
retried point never costs another point its turn.

Duplicates: every point is enqueued once up front, and ``duplicate_of`` makes a worker that got a point
another trial already holds (GridSampler hands out running points again once every point has
started; two machines can enqueue the same point at the same moment) give it up before training: the
lowest-numbered live trial of a point is the one that trains.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna
import optuna.storages.journal
from optuna.trial import FrozenTrial, TrialState

from avemo.contract.options import UsageError
from avemo.training.search.space import Space, point_key

OWNER = "avemo_owner"  # system attr: {"trial": number, "host": ..., "pid": ...} of the worker running it
BEAT = "avemo_heartbeat"  # system attr on a journal storage: {"trial": number, "time": unix seconds}
SPEC = "avemo_spec"  # study user attr: what the study searches (a second launcher must match it)
ENQUEUED = "avemo_enqueued"  # study user attr: the creator has queued every point

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry callback
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def is_url(storage: str) -> bool:
    return "://" in storage


def redact(storage: str) -> str:
    """The storage as it may be printed: a URL's password replaced by ***."""
    if not is_url(storage):
        return storage
    scheme, rest = storage.split("://", 1)
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}{at}{host}"


def open_storage(storage: str, heartbeat: int, max_retry: int):
    """An Optuna storage for ``storage`` (URL or journal file path) with heartbeats every ``heartbeat`` s."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    if is_url(storage):
        engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
        for attempt in range(5):  # launchers starting together on an empty database race to create the tables
            try:
                return optuna.storages.RDBStorage(
                    storage,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=grace_period(heartbeat),
                    heartbeat_stale_trial_callback=retry,
                )
            except Exception as e:  # noqa: BLE001 - driver errors come in many types
                if attempt == 4:
                    raise UsageError(f"--storage {redact(storage)}: cannot open it: {type(e).__name__}: {e}") from None
                time.sleep(1.0 + attempt)
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))


def grace_period(heartbeat: int) -> int:
    """Seconds without a heartbeat after which a running trial counts as dead."""
    return 3 * heartbeat


def _wait_for_attr(study: optuna.Study, key: str, seconds: float):
    deadline = time.time() + seconds
    while (value := study.user_attrs.get(key)) is None and time.time() < deadline:
        time.sleep(0.2)
    return value


class QueueGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its ``after_trial`` stop: once the grid is used up it calls
    ``study.stop()``, which raises outside ``Study.optimize`` (the workers here ask and tell themselves,
    and decide from the study when every point is settled)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def grid_sampler(space: Space) -> QueueGridSampler:
    return QueueGridSampler(space.grid, seed=0)  # the same seed everywhere: one grid order for every process


def open_study(
    storage, name: str, space: Space, direction: Literal["minimize", "maximize"], spec: dict
) -> tuple[optuna.Study, bool]:
    """(study, created): create the study, or load it; a loaded study must search the same space the same
    way (``spec``). Creation is atomic in every storage, so exactly one launcher is the creator."""
    sampler = grid_sampler(space)
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction=direction)
        study.set_user_attr(SPEC, spec)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    stored = _wait_for_attr(study, SPEC, 30.0)  # the creator writes it right after creating the study
    if stored is None:
        study.set_user_attr(SPEC, spec)
    elif stored != spec:
        diff = [f"{k}: study has {stored.get(k)!r}, this command {v!r}" for k, v in spec.items() if stored.get(k) != v]
        raise UsageError(
            f"study {name!r} already searches something else; use another --study or the same command line:\n  "
            + "\n  ".join(diff)
        )
    if study.direction.name.lower() != direction:
        raise UsageError(f"study {name!r} was created to {study.direction.name.lower()}, not {direction}")
    return study, False


def prepare_queue(study: optuna.Study, space: Space, created: bool) -> list[dict]:
    """Queue the points; returns those queued now.

    The creator queues every point once. Any later launcher (another machine, or a restart) waits until
    the creator has done so, then queues again only the points whose trials all failed (retry on
    resume); so points are not queued twice by launchers starting together."""
    if not created:
        _wait_for_attr(study, ENQUEUED, 60.0)
    added = enqueue_missing(study, space, retry_failed=not created)
    study.set_user_attr(ENQUEUED, True)
    return added


def storage_of(study: optuna.Study):
    return study._storage  # the storage Optuna wraps (caching); what optuna.storages.fail_stale_trials uses


def trial_point(t: FrozenTrial, space: Space) -> dict | None:
    """The grid point a trial holds: its params, else its enqueued fixed params, else its grid id."""
    names = list(space.grid)
    if all(n in t.params for n in names):
        return {n: t.params[n] for n in names}
    fixed = t.system_attrs.get("fixed_params")
    if fixed and all(n in fixed for n in names):
        return {n: fixed[n] for n in names}
    if "grid_id" in t.system_attrs:  # sampled, params not suggested yet: the sampler's own grid order
        sampler = grid_sampler(space)
        gid = t.system_attrs["grid_id"]
        if 0 <= gid < len(sampler._all_grids):
            return dict(zip(sampler._param_names, sampler._all_grids[gid]))
    return None


def enqueue_missing(study: optuna.Study, space: Space, retry_failed: bool) -> list[dict]:
    """Enqueue every point that has no trial yet (and, with ``retry_failed``, every point whose trials all
    failed); returns the points enqueued. Run by the launcher before its workers start."""
    prog = progress_of(study, space)
    keys = [point_key(p) for p in space.points()]
    unstarted = set(prog.unstarted(keys))
    failed = prog.settled - set(prog.complete) if retry_failed else set()  # failed, nothing left to retry them
    added = []
    for p, key in zip(space.points(), keys):
        if key in unstarted or key in failed:
            study.enqueue_trial(p, user_attrs={"retried_after_failure": key in failed})
            added.append(p)
    return added


@dataclass
class Progress:
    """Where a study stands, per point (keys from ``point_key``)."""

    complete: dict[str, FrozenTrial] = field(default_factory=dict)  # the point's first COMPLETE trial
    waiting: set[str] = field(default_factory=set)
    running: dict[str, list[FrozenTrial]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # has a FAIL trial

    @property
    def settled(self) -> set[str]:
        """Points with a COMPLETE trial, or that failed with nothing queued or running to retry them."""
        return set(self.complete) | (self.failed - self.waiting - set(self.running))

    def unstarted(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k not in self.settled and k not in self.waiting and k not in self.running]


def progress_of(study: optuna.Study, space: Space) -> Progress:
    prog = Progress()
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        p = trial_point(t, space)
        if p is None:
            continue
        key = point_key(p)
        if t.state == TrialState.COMPLETE:
            prog.complete.setdefault(key, t)
        elif t.state == TrialState.WAITING:
            prog.waiting.add(key)
        elif t.state == TrialState.RUNNING:
            prog.running.setdefault(key, []).append(t)
        elif t.state == TrialState.FAIL:
            prog.failed.add(key)
    return prog


def duplicate_of(study: optuna.Study, trial_number: int, point: dict, space: Space) -> int | None:
    """Number of a trial that already holds ``point``: a COMPLETE one, or a RUNNING one with a lower number.

    Waiting trials are popped in number order, so a lower-numbered copy of a point is RUNNING before a
    higher one is popped. A lower-numbered RUNNING trial whose point is not written yet (just asked) is
    waited for, up to 10 s, so two trials asked at the same moment see each other."""
    key = point_key(point)
    running = (TrialState.COMPLETE, TrialState.RUNNING)
    deadline = time.time() + 10.0
    trials = study.get_trials(deepcopy=False, states=running)
    while time.time() < deadline and any(
        t.state == TrialState.RUNNING and t.number < trial_number and trial_point(t, space) is None for t in trials
    ):
        time.sleep(0.05)
        trials = study.get_trials(deepcopy=False, states=running)
    for t in trials:
        if t.number == trial_number or (p := trial_point(t, space)) is None or point_key(p) != key:
            continue
        if t.state == TrialState.COMPLETE or t.number < trial_number:
            return t.number
    return None


# ---------------------------------------------------------------- liveness
def this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def native_heartbeat(study: optuna.Study) -> bool:
    storage = storage_of(study)  # RDBStorage (wrapped in Optuna's cache) with heartbeat_interval set
    return callable(getattr(storage, "get_heartbeat_interval", None)) and storage.get_heartbeat_interval() is not None


class Heartbeat:
    """``with Heartbeat(study, trial, interval):`` marks the trial as this process's and beats every
    ``interval`` seconds in a daemon thread until the block ends."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float) -> None:
        self.storage, self.trial_id, self.number = storage_of(study), trial._trial_id, trial.number
        self.interval, self.native = interval, native_heartbeat(study)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{self.number}")

    def beat(self) -> None:
        if self.native:
            self.storage.record_heartbeat(self.trial_id)
        else:
            self.storage.set_trial_system_attr(self.trial_id, BEAT, {"trial": self.number, "time": time.time()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a finished trial or a storage hiccup: the next beat tries again
                pass

    def __enter__(self) -> Heartbeat:
        self.storage.set_trial_system_attr(self.trial_id, OWNER, {"trial": self.number, **this_worker()})
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _stale(t: FrozenTrial, native: bool, grace: float, me: dict, now: float) -> bool:
    owner = t.system_attrs.get(OWNER) or {}
    if owner.get("trial") == t.number and owner.get("host") == me["host"] and owner.get("pid") != me["pid"]:
        if not _pid_alive(int(owner["pid"])):
            return True  # its worker on this machine is gone: no need to wait for the grace period
    if native:
        return False  # Optuna's own heartbeat (optuna.storages.fail_stale_trials) judges the rest
    beat = t.system_attrs.get(BEAT) or {}
    last = beat.get("time", 0.0) if beat.get("trial") == t.number else 0.0  # a retried copy carries the old one
    started = t.datetime_start.timestamp() if t.datetime_start else now
    return now - max(last, started) > grace


def recover_stale(study: optuna.Study, heartbeat: int, max_retry: int, now: float | None = None) -> list[int]:
    """Fail the running trials whose worker is gone and enqueue their retry; returns their numbers.

    ``now`` (unix seconds) is the time a journal heartbeat is judged against; None (every caller in the
    product): the clock. It is there for tests, which pass a time within or past the grace period instead
    of sleeping through it. Optuna's native heartbeat on an RDB storage is judged by the database's clock."""
    storage, native = storage_of(study), native_heartbeat(study)
    me, now = this_worker(), time.time() if now is None else now
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if native:
        optuna.storages.fail_stale_trials(study)  # heartbeat older than the grace period -> FAIL + retry callback
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _stale(t, native, grace_period(heartbeat), me, now):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first (and retried it)
        retry(study, storage.get_trial(t._trial_id))
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - after - {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))})
