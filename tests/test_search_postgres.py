"""The search's shared Optuna storage on a REAL PostgreSQL server, started fresh for this module.

``postgres_url`` initialises a throw-away cluster in a temporary directory (``initdb``), starts it on a free
local TCP port (``pg_ctl start``), creates the ``avemo_search`` database and yields its SQLAlchemy URL
(``postgresql+psycopg://postgres@127.0.0.1:PORT/avemo_search``); afterwards it stops the server
(``pg_ctl stop -m fast``) and deletes the directory.

The programs come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``, highest
version first) or else from PATH. Missing, they FAIL these tests naming what is missing (``make test``
installs Debian's postgresql); ``AVEMO_SKIP_POSTGRES=1`` skips them instead. PostgreSQL refuses to run as
root: as root the server runs as the ``postgres`` system user (made by the Debian package) via ``runuser``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

pytestmark = pytest.mark.slow

PG_USER = "postgres"  # the system user the server runs as under root, and the database superuser
DB_NAME = "avemo_search"
START_TIMEOUT = 60  # seconds for pg_ctl -w to see the server accept connections

# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_postgres_programs() -> tuple[Path, Path] | None:
    """(initdb, pg_ctl): from Debian's highest /usr/lib/postgresql/<version>/bin, else from PATH."""

    def version(folder: Path) -> tuple:
        return tuple(int(p) if p.isdigit() else -1 for p in folder.parent.name.split("."))

    debian = [b for b in Path("/usr/lib/postgresql").glob("*/bin") if (b / "initdb").is_file()]
    for folder in sorted(debian, key=version, reverse=True):
        if (folder / "pg_ctl").is_file():
            return folder / "initdb", folder / "pg_ctl"
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (Path(initdb), Path(pg_ctl)) if initdb and pg_ctl else None


def missing_postgres(reason: str) -> NoReturn:
    """Skip under AVEMO_SKIP_POSTGRES=1, else fail naming what is missing and how to get it."""
    if os.environ.get("AVEMO_SKIP_POSTGRES") == "1":
        pytest.skip(f"{reason} (AVEMO_SKIP_POSTGRES=1)")
    pytest.fail(
        f"{reason}: these tests start a real local PostgreSQL server. `make test` installs Debian's "
        "postgresql, or run `apt-get install postgresql`; AVEMO_SKIP_POSTGRES=1 skips these tests instead.",
        pytrace=False,
    )


def run_as(user_prefix: list[str], *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*user_prefix, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


# ------------------------------------------------------------------------------------------ fixture


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of the ``avemo_search`` database on a fresh throw-away PostgreSQL server."""
    import psycopg

    programs = find_postgres_programs()
    if programs is None:
        missing_postgres("PostgreSQL's initdb and pg_ctl were not found (not in /usr/lib/postgresql/*/bin nor on PATH)")
    initdb, pg_ctl = programs

    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the unprivileged system user
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            missing_postgres(f"running as root, and there is no `{PG_USER}` system user to run PostgreSQL as")
        if shutil.which("runuser"):
            prefix = ["runuser", "-u", PG_USER, "--"]
        elif shutil.which("setpriv"):
            prefix = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups", "--"]
        else:
            missing_postgres("running as root, and neither runuser nor setpriv is here to run PostgreSQL as postgres")

    # a fresh folder directly under /tmp: pytest's own tmp folders (0700, root's) are not traversable by postgres
    root = Path(tempfile.mkdtemp(prefix="avemo-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    started = False
    try:
        os.chmod(root, 0o755)
        data.mkdir(mode=0o700)
        sockets.mkdir(mode=0o755)
        if prefix:
            for path in (root, data, sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)

        made = run_as(
            prefix,
            initdb,
            "-D",
            data,
            "--auth=trust",
            "-U",
            PG_USER,
            "--encoding=UTF8",
            "--no-locale",  # C collation: no dependence on which locales this machine has generated
            "--no-instructions",
            cwd=root,
        )
        if made.returncode != 0:
            pytest.fail(f"initdb failed ({made.returncode}):\n{made.stdout}\n{made.stderr}", pytrace=False)

        port = free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = run_as(
            prefix, pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", str(START_TIMEOUT), "start", cwd=root
        )
        started = True  # pg_ctl may have launched the server even when it reports failure: always stop it
        if start.returncode != 0:
            pytest.fail(
                f"PostgreSQL did not start on port {port} ({start.returncode}): {start.stderr.strip()}\n"
                f"server log tail:\n{log_tail(log)}",
                pytrace=False,
            )

        with psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/{DB_NAME}"
    finally:
        if started:
            stop = run_as(prefix, pg_ctl, "-D", data, "-m", "fast", "-w", "stop", cwd=root)
            if stop.returncode != 0 and (data / "postmaster.pid").exists():
                # last resort: the postmaster's pid is the first line of postmaster.pid
                try:
                    os.kill(int((data / "postmaster.pid").read_text().split()[0]), 9)
                    time.sleep(0.5)
                except (OSError, ValueError, IndexError):
                    pass
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ tests

# A sitecustomize module the launchers' processes load through PYTHONPATH: a worker's first trial waits, before
# it trains, until the worker of the other machine has started a trial too (one marker file per machine folder in
# AVEMO_TEST_MEET_DIR). So both machines hold a trial at one moment and each trains at least one, however unevenly
# the two start; without it, the machine that starts first may rightly train all four points before the other
# asks for one. The deadline bounds a hang only (the test then reports the machine that trained nothing).
MEET_HOOK = """
import os

if os.environ.get("AVEMO_TEST_MEET_DIR"):
    import time
    from pathlib import Path

    from avemo.training.search import worker

    _train = worker.run_trial
    _met = []

    def run_trial(ctx, space, trial, point, parser):
        if not _met:
            _met.append(True)
            meet = Path(os.environ["AVEMO_TEST_MEET_DIR"])
            (meet / f"{Path(ctx.folder).name}.started").touch()
            deadline = time.time() + 300
            while len(list(meet.glob("*.started"))) < 2 and time.time() < deadline:
                time.sleep(0.2)
        return _train(ctx, space, trial, point, parser)

    worker.run_trial = run_trial
"""


def test_two_machines_share_one_study_on_postgresql(postgres_url, tiny_corpus, tmp_path):
    """Two launchers, as on two machines (own folders, one worker each), on one PostgreSQL study: the 2x2
    grid ends with exactly 4 trained points between them, none trained twice, and both machines trained."""
    import optuna
    from optuna.trial import TrialState

    from avemo.training.search import study as st

    # --heartbeat 600: a grace period (3 x 600 s) longer than the test may run, so no live trial is failed for a
    # late heartbeat on a loaded machine (which would have its point trained twice); nothing here dies
    cmd = [
        sys.executable, "-c", "import sys; from avemo.cli import main; sys.exit(main())",
        "search", "custom", "--param", "lr=0.001,0.003", "--param", "batch_size=4,8",
        "--storage", postgres_url, "--study", "shared", "--heartbeat", "600", "--workers", "1", "--no_progress",
        "--tiny", "--data_root", str(tiny_corpus), "--cache_dir", str(tmp_path / "cache"),
        "--epochs", "2", "--max_train_batches", "2",
    ]  # fmt: skip
    meet = tmp_path / "meet"
    meet.mkdir()
    (meet / "sitecustomize.py").write_text(MEET_HOOK)
    path = os.pathsep.join(p for p in (str(meet), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "AVEMO_TEST_MEET_DIR": str(meet)}
    logs = [open(tmp_path / f"machine{i}.log", "w") for i in range(2)]  # noqa: SIM115 - closed below
    procs = [
        subprocess.Popen(
            [*cmd, "--dir", str(tmp_path / f"machine{i}")],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        codes = [p.wait(timeout=1200) for p in procs]  # bounds a hang only
    finally:
        for p, log in zip(procs, logs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the launcher and its worker
            log.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"machine{i}.log").read_text()[-2000:] for i in range(2))
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    points = {json.dumps(t.params, sort_keys=True) for t in complete}
    assert len(complete) == 4 and len(points) == 4
    runs = [run for i in range(2) for run in (tmp_path / f"machine{i}").glob("trials/*/metrics.json")]
    assert len(runs) == 4  # each point trained on one machine only
    # both machines trained: each finished at least one trial, in its own folder, in its own worker process
    # (the pids its worker log names: "worker 0 (pid N) on study ...", once per start)
    for i in range(2):
        machine = tmp_path / f"machine{i}"
        mine = [t for t in complete if Path(t.user_attrs["run_dir"]).resolve().parent.parent == machine.resolve()]
        assert mine, f"machine{i} finished no trial"
        assert len(list(machine.glob("trials/*/metrics.json"))) == len(mine), f"machine{i}: runs != its trials"
        log = (machine / "logs" / "worker-0.log").read_text()
        workers = {int(pid) for pid in re.findall(r"worker 0 \(pid (\d+)\)", log)}
        owners = {t.system_attrs[st.OWNER]["pid"] for t in mine}
        assert owners and owners <= workers, (i, owners, workers)
        assert {t.user_attrs["worker"]["pid"] for t in mine} == owners
    assert sorted(f.name for f in meet.glob("*.started")) == ["machine0.started", "machine1.started"]
    for i in range(2):  # each machine reports the whole study
        doc = json.loads((tmp_path / f"machine{i}" / "results.json").read_text())
        assert doc["finished"] == 4 and doc["storage"].startswith("postgresql+psycopg://")
