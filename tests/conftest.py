"""Shared fixtures: tiny geometry and model sizes, the tiny generated corpus, a tiny contract-conforming
ONNX model, a clip writer, and the real Triton server (started once per session).

Test modules never import each other (ruff bans ``import tests``): everything shared lives here.
torch / onnx are imported inside the fixtures that need them, so collecting the client tests does not
load PyTorch.

Real Triton: a test that needs the server SKIPS only on a platform with no tritonserver build
(``_triton_platform_skip``). Everywhere else it FAILS when something is missing (``_triton_missing``: the
package, the binary, the stub, the system libpython, each named with how to get it) or when the server does
not start (its own error and log tail). ``AVEMO_SKIP_TRITON=1`` skips instead of failing on something missing.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from avemo.contract.endpoint import MODEL_NAME
from avemo.contract.geometry import WindowGeometry
from avemo.contract.labels import EMOTIONS_4
from avemo.contract.tensors import AUDIO, FRAMES, MODALITY_MASK, MODALITY_WEIGHTS, PROBS

REPO_ROOT = Path(__file__).resolve().parents[1]

# 1 s windows, 0.5 s hop: S = 16000 samples, F = 8 frames of 112 x 112
_TINY_GEOMETRY = WindowGeometry(window_seconds=1.0, hop_seconds=0.5)
# encoder widths small enough that a forward/backward pass takes milliseconds
_TINY_DIMS = {"audio_channels": (8, 16), "video_channels": (8, 16), "embed_dim": 32}


# ------------------------------------------------------------------------------ repository / sizes


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout (the folder holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def geo() -> WindowGeometry:
    """Tiny window geometry for model tests: 1 s windows, 0.5 s hop (S = 16000, F = 8)."""
    return _TINY_GEOMETRY


@pytest.fixture(scope="session")
def tiny_dims() -> dict:
    """ModelConfig keyword arguments for a tiny model: ``ModelConfig(fusion=..., **tiny_dims)``."""
    return dict(_TINY_DIMS)


@pytest.fixture(scope="session")
def tiny_batch(geo) -> Callable:
    """``tiny_batch(b, seed=0, frames_per_window=None) -> (audio, frames, mask)`` torch tensors for ``geo``."""

    def make(b: int = 4, seed: int = 0, frames_per_window: int | None = None):
        import torch

        g = torch.Generator().manual_seed(seed)
        audio = 0.2 * torch.randn(b, geo.window_samples, generator=g)
        f = frames_per_window or geo.frames_per_window
        frames = torch.randint(0, 256, (b, f, geo.face_size, geo.face_size, 3), generator=g, dtype=torch.uint8)
        return audio, frames, torch.ones(b, 2)

    return make


# ------------------------------------------------------------------------------------ tiny corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The tiny generated RAVDESS-layout corpus, built ONCE per session: 3 actors, statement 1,
    repetition 1, intensity 2 (21 MP4 clips, seed 0). Read-only for tests: write caches and runs elsewhere."""
    from avemo.training.synthetic.corpus import generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(
        root, n_actors=3, seed=0, statements=(1,), repetitions=(1,), intensities=(2,), jobs=1, progress=False
    )
    return root


# ------------------------------------------------------------------------------------------ clips


def _write_clip(path: Path, seconds: float = 2.2, fps: int = 12, size: int = 96, sr: int = 16000) -> Path:
    """Grey frames brightening and a 330 Hz tone fading in, written by the corpus's own MP4 writer."""
    from avemo.training.synthetic.corpus import write_mp4

    frames = np.stack([np.full((size, size, 3), (40 * i) % 256, np.uint8) for i in range(int(seconds * fps))])
    n = int(seconds * sr)
    audio = (0.4 * np.sin(2 * np.pi * 330 * np.arange(n) / sr) * np.linspace(0.1, 1, n)).astype(np.float32)
    write_mp4(Path(path), audio, frames, audio_rate=sr, fps=fps)
    return Path(path)


@pytest.fixture(scope="session")
def write_clip() -> Callable[..., Path]:
    """``write_clip(path, seconds=2.2, fps=12, size=96, sr=16000) -> path``: a real H.264/AAC MP4
    (grey frames brightening, a 330 Hz tone fading in)."""
    return _write_clip


@pytest.fixture(scope="session")
def mp4_clip(tmp_path_factory, write_clip) -> Path:
    """One real 2.2 s MP4 clip (read-only)."""
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


# ------------------------------------------------------------------------------- tiny ONNX model


def _build_tiny_model(num_classes: int, seed: int = 0):
    """A torch module with the real serving signature that computes its output from a few statistics:

    audio [B, S] float32, frames [B, F, H, W, 3] uint8, modality_mask [B, 2] float32
    -> probs [B, C] float32 (softmax), modality_weights [B, 2] float32 (sum to 1 over present modalities)
    """
    import torch
    from torch import nn

    class TinyEmotion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.audio_head = nn.Linear(3, num_classes)
            self.video_head = nn.Linear(3, num_classes)
            self.gate = nn.Linear(6, 2)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))

        def forward(self, audio, frames, modality_mask):
            a = torch.stack([audio.mean(dim=1), audio.abs().mean(dim=1), (audio * audio).mean(dim=1)], dim=1)
            f = frames.to(torch.float32) / 255.0
            v = torch.stack(
                [f.mean(dim=(1, 2, 3, 4)), f[..., 0].mean(dim=(1, 2, 3)), f[..., 2].mean(dim=(1, 2, 3))], dim=1
            )
            am = modality_mask[:, 0:1]
            vm = modality_mask[:, 1:2]
            a = a * am
            v = v * vm
            gate = self.gate(torch.cat([a, v], dim=1))
            # absent modalities get (almost) zero weight
            gate = gate + (modality_mask - 1.0) * 1e4
            weights = torch.softmax(gate, dim=1)
            logits = weights[:, 0:1] * self.audio_head(a) + weights[:, 1:2] * self.video_head(v)
            return torch.softmax(logits, dim=1), weights

    return TinyEmotion().eval()


def _tiny_example_inputs(geometry: WindowGeometry, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s, f, size = geometry.window_samples, geometry.frames_per_window, geometry.face_size
    return {
        AUDIO: (0.3 * rng.standard_normal((batch, s))).astype(np.float32),
        FRAMES: rng.integers(0, 256, size=(batch, f, size, size, 3), dtype=np.uint8),
        MODALITY_MASK: np.ones((batch, 2), dtype=np.float32),
    }


def _export_tiny_onnx(path: Path, geometry: WindowGeometry, num_classes: int, seed: int = 0) -> Path:
    """Export the tiny model with a dynamic batch dim to ONE self-contained ONNX file (dynamo, opset 18)."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _build_tiny_model(num_classes, seed)
    ex = _tiny_example_inputs(geometry, batch=2, seed=seed)
    args = tuple(torch.from_numpy(ex[k]) for k in (AUDIO, FRAMES, MODALITY_MASK))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=[AUDIO, FRAMES, MODALITY_MASK],
            output_names=[PROBS, MODALITY_WEIGHTS],
            dynamic_shapes={"audio": {0: batch}, "frames": {0: batch}, "modality_mask": {0: batch}},  # forward args
            opset_version=18,
            dynamo=True,
            external_data=False,
        )
    # make sure the result is a single file, whatever the exporter did
    proto = onnx.load(str(path), load_external_data=True)
    onnx.save(proto, str(path), save_as_external_data=False)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    return path


@pytest.fixture(scope="session")
def export_tiny_onnx() -> Callable[..., Path]:
    """``export_tiny_onnx(path, geometry, num_classes, seed=0) -> path``: a tiny contract-conforming ONNX
    file (real serving signature, dynamic batch) whose export and inference take milliseconds."""
    return _export_tiny_onnx


@pytest.fixture(scope="session")
def serving_labels() -> list[str]:
    """The labels of the tiny served model (4 classes)."""
    return list(EMOTIONS_4)


@pytest.fixture(scope="session")
def served_model_name() -> str:
    """The served model's name (contract.endpoint.MODEL_NAME)."""
    return MODEL_NAME


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, export_tiny_onnx, geo, serving_labels) -> Path:
    """The tiny model for ``geo`` and ``serving_labels``, exported once per session (read-only)."""
    return export_tiny_onnx(tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx", geo, len(serving_labels))


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory, tiny_onnx, geo, serving_labels, served_model_name) -> Path:
    """A Triton model repository holding the tiny ONNX model (written by ``write_model_repository``)."""
    from avemo.export.triton_repo import write_model_repository

    repo_dir = tmp_path_factory.mktemp("triton") / "model_repository"
    write_model_repository(
        repo_dir,
        served_model_name,
        tiny_onnx,
        serving_labels,
        geo,
        max_batch_size=8,
        preferred_batch_sizes=(2, 4),
        extra_parameters={"fusion": "tiny-gated", "checkpoint_sha256": "abc123"},
    )
    return repo_dir


# ----------------------------------------------------------------------------------- real Triton


def _triton_platform_skip() -> str | None:
    """Why this platform cannot run the bundled tritonserver at all (the only reason to skip), or None.

    nvidia-pytriton ships the server for Linux on x86_64 / aarch64 only: the rule `avemo serve` and `avemo demo`
    apply (``avemo.serving.server.embedded_server_problem``).
    """
    from avemo.serving.server import embedded_server_problem

    return embedded_server_problem()


def _triton_missing() -> str | None:
    """What keeps a platform that should run tritonserver from running it, and how to get it, or None.

    - the nvidia-pytriton package (the ``serve`` extra; ``make install`` installs it);
    - the tritonserver binary inside it;
    - the wheel's Python-backend stub for this Python version;
    - the system shared libpython3.X.so.1.0 that the stub links (``make test`` installs it with apt-get).
    """
    if importlib.util.find_spec("pytriton") is None:
        return "nvidia-pytriton is not installed in this environment: pip install -e '.[serve]' (make install does)"
    from avemo.serving import server

    binary = server.pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        return f"the tritonserver binary is not installed (no {binary}): pip install --force-reinstall nvidia-pytriton"
    try:
        server.find_stub()
    except server.TritonServerError as exc:
        return f"no Triton Python-backend stub for this Python: {exc}"
    if server.find_libpython() is None:
        tag = server.python_version_tag()
        return (
            f"libpython{tag}.so.1.0 (linked by the Triton Python stub) is missing: apt-get install libpython{tag} "
            "(make test does where apt-get exists), or use a Python built with --enable-shared"
        )
    return None


def _triton_verdict(platform_skip: str | None, missing: str | None, env: dict) -> tuple[str, str]:
    """("run" | "skip" | "fail", why) for a real-Triton test: skip only on a platform with no tritonserver build
    (or under ``AVEMO_SKIP_TRITON=1``), fail on anything missing elsewhere."""
    if platform_skip is not None:
        return "skip", f"real Triton server not runnable here: {platform_skip}"
    if missing is not None:
        if env.get("AVEMO_SKIP_TRITON") == "1":
            return "skip", f"AVEMO_SKIP_TRITON=1: {missing}"
        return "fail", f"the real Triton server should run here but cannot: {missing} (AVEMO_SKIP_TRITON=1 skips)"
    return "run", ""


@pytest.fixture(scope="session")
def triton_checks() -> SimpleNamespace:
    """The checks behind ``triton_runtime`` (``platform_skip()``, ``missing()``, ``verdict(...)``), for the tests
    that hold them to failing rather than skipping."""
    return SimpleNamespace(platform_skip=_triton_platform_skip, missing=_triton_missing, verdict=_triton_verdict)


@pytest.fixture(scope="session")
def triton_runtime():
    """The ``avemo.serving.server`` module, once the platform is known to be able to run tritonserver.

    Skips (reason printed in the summary) only on platforms with no tritonserver build. On Linux x86_64 /
    aarch64 anything missing FAILS the test, naming it and how to get it; ``AVEMO_SKIP_TRITON=1`` skips instead
    (like ``AVEMO_SKIP_BROWSER`` and ``AVEMO_SKIP_POSTGRES``).
    """
    platform_skip = _triton_platform_skip()
    action, why = _triton_verdict(platform_skip, None if platform_skip else _triton_missing(), dict(os.environ))
    if action == "skip":
        pytest.skip(why)
    if action == "fail":
        pytest.fail(why, pytrace=False)
    from avemo.serving import server

    server.find_tritonserver()  # present but not executable: a broken install, fail with the message
    return server


def _start_server(server_mod, repo: Path, log_file: Path, timeout: float = 120):
    srv = server_mod.TritonServer(repo, server_mod.ServerPorts.free(), log_file=log_file)
    try:
        srv.start(timeout=timeout)
        return srv
    except Exception as exc:  # noqa: BLE001 - any start-up failure fails the test with the server's words
        tail = "" if str(log_file) in str(exc) else f"\nlog ({log_file}) tail:\n{srv.log_tail(3000)}"
        reason = f"the real Triton server should run here but did not start: {type(exc).__name__}: {exc}{tail}"
    pytest.fail(reason, pytrace=False)  # outside the except block: no chained traceback


@pytest.fixture(scope="session")
def triton_server(triton_runtime, triton_repository, tmp_path_factory):
    """ONE real tritonserver for the session, serving a copy of ``triton_repository`` on free local ports.

    Do not stop it in a test (use ``launch_triton`` for a server of your own). A start-up failure is a
    test failure carrying the server's error lines and log tail (cached: reported once per test, started once).
    """
    import shutil

    # serve a copy: the Python backend writes __pycache__ next to model.py, and tests compare the
    # repository with what write_model_repository wrote
    work = tmp_path_factory.mktemp("triton_server")
    served = shutil.copytree(triton_repository, work / "model_repository")
    srv = _start_server(triton_runtime, served, work / "triton.log")
    yield srv
    srv.stop()


@pytest.fixture
def launch_triton(triton_runtime, tmp_path):
    """``launch_triton(repo) -> TritonServer``: a started server of the test's own (free ports),
    stopped at teardown; fails the test with the server's log tail if it does not start."""
    started = []

    def launch(repo: Path, timeout: float = 120):
        import shutil

        # serve a copy, so the caller's repository stays as written (the backend adds __pycache__)
        served = shutil.copytree(repo, tmp_path / f"served_repository{len(started)}")
        srv = _start_server(triton_runtime, served, tmp_path / f"triton{len(started)}.log", timeout)
        started.append(srv)
        return srv

    yield launch
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def mosei_file(tmp_path_factory):
    """A small generated MOSEI-layout feature file (120 / 40 / 40 samples, short sequences), shared by the
    feature training, search and comparison tests (none of them writes to it)."""
    from avemo.training.synthetic.features import write_mmsa_file

    path = tmp_path_factory.mktemp("feat") / "mosei.pkl"
    return write_mmsa_file(
        path, dataset="mosei", samples=(120, 40, 40), seed=0, seq_lens={"text": 8, "audio": 20, "video": 15}
    )


def _fake_pb_utils():
    """Just enough of triton_python_backend_utils to drive serving/backend_model.py in-process."""
    import types

    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED = range(6)

        def __init__(self, msg, code=0):
            super().__init__(msg)
            self.msg, self.code = msg, code

        def message(self):
            return self.msg

    class Tensor:
        def __init__(self, name, arr):
            self._name, self._arr = name, arr

        def name(self):
            return self._name

        def as_numpy(self):
            return self._arr

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Request:
        def __init__(self, arrays, rid=""):
            self.tensors = {k: Tensor(k, v) for k, v in arrays.items()}
            self.rid = rid

        def request_id(self):
            return self.rid

    pb.TritonError = TritonError
    pb.TritonModelException = type("TritonModelException", (Exception,), {})
    pb.Tensor = Tensor
    pb.InferenceResponse = InferenceResponse
    pb.get_input_tensor_by_name = lambda req, name: req.tensors.get(name)
    pb.FakeRequest = Request
    return pb


@pytest.fixture
def load_backend_model(monkeypatch) -> Callable:
    """``load_backend_model(model_dir) -> (model, pb)``: the repository's ``<model_dir>/1/model.py`` (a copy of
    serving/backend_model.py) initialised in-process on its config.pbtxt, with just enough of
    ``triton_python_backend_utils`` (``pb``: ``FakeRequest``, ``TritonError`` codes) to drive ``execute``."""
    import importlib.util
    import json
    import sys

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # leave the shared repository as written

    def load(model_dir: Path):
        spec = importlib.util.spec_from_file_location("avemo_backend_model_under_test", model_dir / "1" / "model.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        model = mod.TritonPythonModel()
        model.initialize(
            {
                "model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                "model_repository": str(model_dir),
                "model_version": "1",
                "model_name": model_dir.name,
                "model_instance_kind": "CPU",
                "model_instance_device_id": "0",
            }
        )
        return model, pb

    return load
