"""Start and stop the tritonserver binary bundled in the nvidia-pytriton wheel (embedded default).

No Docker, no GPU: ``pytriton/tritonserver/bin/tritonserver`` with the Python backend only. The
backend needs the stub built for the running Python inside ``backends/python/``; the wheel ships the
stubs separately (``pytriton/tritonserver/python_backend_stubs/<X.Y>/``), so ``prepare_backends``
assembles a backend directory in a cache dir (symlinks; nothing is written into site-packages).
The stub links the system ``libpython3.X.so.1.0`` and imports onnxruntime from this environment's
site-packages (passed via PYTHONPATH).

    with TritonServer(Path("model_repository"), ServerPorts.free()) as server:
        client = EmotionClient(server.url)
"""

from __future__ import annotations

import atexit
import ctypes.util
import importlib.util
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from avemo.contract.endpoint import GRPC_PORT, HOST, HTTP_PORT, METRICS_PORT

DEFAULT_CACHE_DIR = Path(os.environ.get("AVEMO_CACHE_DIR", Path.home() / ".cache" / "avemo")) / "triton-backends"


class TritonServerError(RuntimeError):
    """The server could not be started (message carries the tail of the server log)."""


@dataclass
class ServerPorts:
    grpc: int = GRPC_PORT
    http: int = HTTP_PORT
    metrics: int = METRICS_PORT

    @classmethod
    def free(cls) -> ServerPorts:
        """Three distinct free ports on 127.0.0.1 (for tests and side-by-side servers)."""
        ports: list[int] = []
        socks = []
        try:
            while len(ports) < 3:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
                ports.append(s.getsockname()[1])
        finally:
            for s in socks:
                s.close()
        return cls(grpc=ports[0], http=ports[1], metrics=ports[2])


def _port_in_use(host: str, port: int) -> bool:
    bind_host = "" if host in ("0.0.0.0", "") else host
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------------------------- locating


EMBEDDED_MACHINES = ("x86_64", "aarch64")  # nvidia-pytriton ships tritonserver for Linux on these alone


def embedded_server_problem() -> str | None:
    """Why this machine cannot run the embedded tritonserver at all, or None where it can.

    The one platform rule (``platform.system()`` / ``platform.machine()``, which tests monkeypatch): the
    nvidia-pytriton wheels, and the server inside them, exist for Linux x86_64 and aarch64 only. Elsewhere
    the package is not installed (its dependency carries a Linux marker) and a Triton server runs outside
    this Python: the Docker image or another machine (docs/platforms.md)."""
    system, machine = platform.system(), platform.machine()
    if system == "Linux" and machine in EMBEDDED_MACHINES:
        return None
    return f"the embedded Triton server runs on Linux x86_64/aarch64 only (this is {system} {machine})"


def pytriton_dir() -> Path:
    problem = embedded_server_problem()
    if problem is not None:
        raise TritonServerError(f"{problem}; see docs/platforms.md")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed (pip install nvidia-pytriton)")
    return Path(list(spec.submodule_search_locations)[0])


def find_tritonserver() -> Path:
    """The tritonserver binary inside the installed pytriton package."""
    binary = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonServerError(f"tritonserver binary not found at {binary} (reinstall nvidia-pytriton)")
    if not os.access(binary, os.X_OK):
        raise TritonServerError(f"{binary} is not executable")
    return binary


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_stub(version: str | None = None) -> Path:
    version = version or python_version_tag()
    stub = pytriton_dir() / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonServerError(f"no Python backend stub for Python {version} in nvidia-pytriton ({stub})")
    return stub


def find_libpython(version: str | None = None) -> Path | None:
    """The shared libpython the stub links (``libpython3.X.so.1.0``), or None if missing."""
    version = version or python_version_tag()
    name = f"libpython{version}.so.1.0"
    candidates = [
        Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent") / name,
        Path("/usr/lib/x86_64-linux-gnu") / name,
        Path("/usr/lib/aarch64-linux-gnu") / name,
        Path("/usr/lib64") / name,
        Path("/usr/lib") / name,
        Path("/usr/local/lib") / name,
    ]
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if d:
            candidates.append(Path(d) / name)
    for c in candidates:
        if c.is_file():
            return c
    found = ctypes.util.find_library(f"python{version}")
    if found:
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
            if (Path(d) / found).exists():
                return Path(d) / found
    return None


def server_libs_dir() -> Path:
    """nvidia_pytriton.libs: the vendored shared libraries of the server, backend and stub."""
    return pytriton_dir().parent / "nvidia_pytriton.libs"


def site_packages_dirs() -> list[str]:
    """This environment's site-packages (so model.py inside the stub can import onnxruntime)."""
    dirs = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in dirs and os.path.isdir(p):
            dirs.append(p)
    return dirs


def prepare_backends(cache_dir: Path | None = None) -> Path:
    """A backend directory whose ``python/`` holds the Python backend plus the stub for this Python.

    Built with symlinks under ``cache_dir`` (default ~/.cache/avemo/triton-backends/py<X.Y>); returns
    the directory to pass as ``--backend-directory``. Idempotent and safe to call concurrently.
    """
    src = pytriton_dir() / "tritonserver" / "backends" / "python"
    stub = find_stub()
    if not (src / "libtriton_python.so").is_file():
        raise TritonServerError(f"Python backend library missing: {src / 'libtriton_python.so'}")
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR / f"py{python_version_tag()}"
    backends = root / "backends"
    dst = backends / "python"
    dst.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in src.iterdir() if p.is_file()}
    wanted["triton_python_backend_stub"] = stub
    for name, target in wanted.items():
        link = dst / name
        try:
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
        except OSError:
            pass
        tmp = dst / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.symlink(target, tmp)
        except OSError:  # filesystems without symlinks: copy
            import shutil

            shutil.copy2(target, tmp)
        os.replace(tmp, link)
    return backends


def models_in_repository(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file())


_BACKEND_RE = re.compile(r'^\s*backend\s*:\s*"([^"]+)"', re.M)


def model_backend(model_dir: Path) -> str:
    """The ``backend`` a model's config.pbtxt names ("" when it names none)."""
    m = _BACKEND_RE.search((Path(model_dir) / "config.pbtxt").read_text())
    return m.group(1) if m else ""


def split_loadable(repo: Path, backend_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(models whose backend is in ``backend_dir``, {model: backend} of the others). The embedded server
    has only the Python backend; the native flavours written by ``avemo export --backend all`` are for
    the production image, and loading them here would stop the server with exit-on-error."""
    loadable, skipped = [], {}
    for name in models_in_repository(repo):
        backend = model_backend(repo / name)
        if backend and (Path(backend_dir) / backend).is_dir():
            loadable.append(name)
        else:
            skipped[name] = backend or "?"
    return loadable, skipped


# ---------------------------------------------------------------------------------------- server

_RUNNING: set[TritonServer] = set()  # strong refs: a forgotten server is still stopped at exit


@atexit.register
def _stop_all() -> None:  # a crashed caller must not leave an orphan server behind
    for server in list(_RUNNING):
        try:
            server.stop(timeout=10)
        except Exception:
            pass


class TritonServer:
    """The bundled tritonserver as a managed subprocess (context manager)."""

    def __init__(
        self,
        model_repository: Path,
        ports: ServerPorts | None = None,
        host: str = HOST,
        log_file: Path | None = None,
        log_verbose: int = 0,
        model_control: str = "none",
        extra_args: Sequence[str] = (),
        backend_cache_dir: Path | None = None,
        allow_metrics: bool = True,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.ports = ports or ServerPorts()
        self.host = host
        self.log_file = Path(log_file) if log_file else None
        self.log_verbose = int(log_verbose)
        self.model_control = model_control
        self.extra_args = list(extra_args)
        self.backend_cache_dir = backend_cache_dir
        self.allow_metrics = allow_metrics
        self.process: subprocess.Popen | None = None
        self.command: list[str] = []
        self.models: list[str] = []
        self.skipped_models: dict[str, str] = {}  # model -> backend this server lacks (not loaded)
        self._log_handle: BinaryIO | None = None
        self._own_log = False
        self.delete_own_log = True  # a temp log created by start() is removed by a clean stop()
        self._start_failed = False
        self._stopping = threading.Event()  # set by stop(): a start-up wait in progress gives up

    # -------------------------------------------------------------- properties

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def url(self) -> str:
        """gRPC URL for tritonclient.grpc / EmotionClient."""
        return f"{self.client_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.client_host}:{self.ports.http}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -------------------------------------------------------------- command / env

    def build_command(self, backend_dir: Path) -> list[str]:
        cmd = [
            str(find_tritonserver()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.allow_metrics:
            cmd += [
                "--allow-metrics=true",
                f"--metrics-address={self.host}",
                f"--metrics-port={self.ports.metrics}",
                "--allow-gpu-metrics=false",
            ]
        else:
            cmd += ["--allow-metrics=false"]
        explicit_loads = any(a.startswith("--load-model") for a in self.extra_args)
        if self.skipped_models and not explicit_loads:
            # load only what this server's backends can run (explicit mode + one --load-model each)
            cmd[cmd.index(f"--model-control-mode={self.model_control}")] = "--model-control-mode=explicit"
            cmd += [f"--load-model={name}" for name in self.models]
        elif self.model_control == "explicit" and not explicit_loads:
            cmd.append("--load-model=*")
        # a distinct shared-memory prefix so several servers on one machine never collide
        cmd.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        cmd += self.extra_args
        return cmd

    def build_env(self) -> dict[str, str]:
        env = os.environ.copy()
        py_paths = site_packages_dirs()  # model.py imports numpy and onnxruntime from here; nothing of ours
        if env.get("PYTHONPATH"):
            py_paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(py_paths)
        env.pop("PYTHONHOME", None)
        ld = [str(server_libs_dir())]
        libpython = find_libpython()
        if libpython is not None:
            ld.append(str(libpython.parent))
        if env.get("LD_LIBRARY_PATH"):
            ld.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    # -------------------------------------------------------------- lifecycle

    def log_tail(self, n_chars: int = 4000) -> str:
        if not self.log_file or not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_chars))
            return f.read().decode("utf-8", errors="replace")

    # harmless on a CPU-only machine (no NVML / CUDA driver)
    _BENIGN = ("CudaDriverHelper has not been initialized", "NVML", "DCGM")

    def startup_errors(self, max_lines: int = 12) -> str:
        """The error lines of the server log (E-level lines, UNAVAILABLE models, fatal errors)."""
        text = self.log_tail(1 << 20)
        picked = []
        for line in text.splitlines():
            s = line.strip()
            is_err = (len(s) > 1 and s[0] == "E" and s[1:5].isdigit()) or "UNAVAILABLE" in s or s.startswith("error:")
            if is_err and not any(b in s for b in self._BENIGN):
                picked.append(s if len(s) < 1500 else s[:1500] + " ...")
        return "\n".join(picked[-max_lines:])

    def _failure(self, headline: str) -> TritonServerError:
        errors = self.startup_errors()
        return TritonServerError(
            f"{headline}\ncommand: {' '.join(self.command)}\n"
            + (f"errors:\n{errors}\n" if errors else "")
            + f"log ({self.log_file}) tail:\n{self.log_tail(1500)}"
        )

    def start(self, timeout: float = 120) -> None:
        if self.is_running():
            return
        self._start_failed = False
        self._stopping.clear()
        if not self.model_repository.is_dir():
            raise TritonServerError(
                f"model repository {self.model_repository} does not exist (run `avemo export` first)"
            )
        self.models = models_in_repository(self.model_repository)
        if not self.models:
            raise TritonServerError(
                f"model repository {self.model_repository} holds no model (no <model>/config.pbtxt); "
                "run `avemo export` first"
            )
        if find_libpython() is None:
            raise TritonServerError(
                f"libpython{python_version_tag()}.so.1.0 not found: the Triton Python backend stub links it "
                f"(Debian/Ubuntu: apt-get install libpython{python_version_tag()})"
            )
        for name, port in (("gRPC", self.ports.grpc), ("HTTP", self.ports.http)) + (
            (("metrics", self.ports.metrics),) if self.allow_metrics else ()
        ):
            if _port_in_use(self.host, port):
                raise TritonServerError(f"{name} port {port} on {self.host} is already in use")

        backend_dir = prepare_backends(self.backend_cache_dir)
        self.models, self.skipped_models = split_loadable(self.model_repository, backend_dir)
        if not self.models:
            raise TritonServerError(
                f"no model in {self.model_repository} runs on this server's backends "
                f"({', '.join(f'{m}: {b}' for m, b in self.skipped_models.items())}); the embedded server has the "
                "Python backend only: `avemo export --backend python` (the native flavours need the Docker image)"
            )
        self.command = self.build_command(backend_dir)
        if self.log_file is None:
            fd, path = tempfile.mkstemp(prefix="avemo-triton-", suffix=".log")
            os.close(fd)
            self.log_file = Path(path)
            self._own_log = True
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_file, "ab")
        try:
            self._spawn(timeout)
        except BaseException:
            self._start_failed = True
            self.stop(timeout=10)
            raise

    def _spawn(self, timeout: float) -> None:
        """Run ``self.command`` (logging to the open log) and wait until the server and models are ready."""
        self.process = subprocess.Popen(
            self.command,
            env=self.build_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop the server cleanly
        )
        _RUNNING.add(self)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.url)
        not_ready = list(self.models)
        assert self.process is not None  # _spawn started it
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise self._failure(f"tritonserver exited with code {code} during start-up")
                if self._stopping.is_set():
                    raise TritonServerError("stopped while waiting for tritonserver to become ready")
                try:
                    if client.is_server_live() and client.is_server_ready():
                        not_ready = [m for m in self.models if not client.is_model_ready(m)]
                        if not not_ready:
                            return
                except Exception:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise self._failure(f"tritonserver not ready after {timeout:.0f} s (models not ready: {not_ready})")
                time.sleep(0.25)
        finally:
            client.close()

    def ready_models(self) -> list[tuple[str, str]]:
        """(name, version) of every model the running server reports READY."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        try:
            index = client.get_model_repository_index(as_json=True).get("models", [])
            return [(m["name"], m.get("version", "")) for m in index if m.get("state") == "READY"]
        finally:
            client.close()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), SIGKILL after ``timeout``; returns the exit code."""
        self._stopping.set()
        proc = self.process
        code = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait(timeout=10)
                except ProcessLookupError:
                    code = proc.poll()
            else:
                code = proc.returncode
            self._kill_stray_stubs(proc.pid)
            self._remove_shared_memory()
        _RUNNING.discard(self)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
            if self._own_log and self.delete_own_log and not self._start_failed and self.log_file is not None:
                try:
                    self.log_file.unlink()
                except OSError:
                    pass
        return code

    @property
    def shm_prefix(self) -> str:
        """Prefix of the Python backend's shared-memory regions (``/dev/shm/<prefix><uuid>``) of this server."""
        return f"avemo{os.getpid()}_{self.ports.grpc}_"

    def _remove_shared_memory(self) -> None:
        """Unlink this server's regions: a stub killed with the server never removes its own."""
        shm = Path("/dev/shm")
        if shm.is_dir():
            for region in shm.glob(f"{self.shm_prefix}*"):
                try:
                    region.unlink()
                except OSError:
                    pass

    @staticmethod
    def _kill_stray_stubs(server_pid: int) -> None:
        """Stubs are in the server's process group (own session); kill any left after a SIGKILL."""
        try:
            os.killpg(server_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"TritonServer({self.model_repository}, url={self.url}, {state})"
