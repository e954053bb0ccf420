"""The client side runs WITHOUT PyTorch: the base install (contract + client) streams clips to Triton.

Each check runs in a fresh interpreter whose ``sys.meta_path`` starts with a finder that refuses
torch, torchvision, onnx, onnxscript, tensorboard and wandb (as on a machine where they are not
installed) before anything of ours is imported. The packaging metadata must agree: those packages are
only pulled in by an ``extra``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "tensorboard", "wandb")

# prepended to every subprocess script: installed before the first import of ours
_BLOCKER = r"""
import sys

BLOCKED = __BLOCKED__


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the client side must run without it")
        return None


sys.meta_path.insert(0, _Blocker())
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "imported before the blocker"
""".replace("__BLOCKED__", repr(set(BLOCKED)))

_REPORT = r"""
import json
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("@@RESULT@@" + json.dumps({"result": RESULT, "loaded": loaded, "torch": "torch" in sys.modules}))
"""


def run_blocked(script: str, cwd, *args: str, timeout: float = 180) -> dict:
    """Run ``script`` (which sets RESULT) behind the import blocker; return RESULT and what got loaded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKER + script + _REPORT, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@RESULT@@")]
    assert lines, proc.stdout[-3000:]
    return json.loads(lines[-1][len("@@RESULT@@") :])


def test_blocker_really_blocks(tmp_path):
    out = run_blocked(
        "try:\n    import torch\n    RESULT = 'imported'\nexcept ImportError as exc:\n    RESULT = str(exc)\n", tmp_path
    )
    assert "torch is blocked" in out["result"] and not out["torch"] and out["loaded"] == []


def test_client_and_serving_modules_import_without_torch(tmp_path):
    """Every client / contract / server-launcher module, and the `avemo predict` parser, import without torch."""
    script = r"""
import importlib, pkgutil
import avemo.contract, avemo.client, avemo.serving
names = []
for pkg in (avemo.contract, avemo.client, avemo.serving):
    names.append(pkg.__name__)
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name != "avemo.serving.backend_model":  # runs inside the Triton stub only
            importlib.import_module(info.name)
            names.append(info.name)
from avemo.cli import build_parser
args = build_parser("predict").parse_args(["predict", "clip.mp4", "--url", "127.0.0.1:1"])
RESULT = {"names": names, "command": args.command}
"""
    out = run_blocked(script, tmp_path)
    assert {"avemo.client.cli", "avemo.client.grpc_client", "avemo.client.predict"} <= set(out["result"]["names"])
    assert {"avemo.serving.server", "avemo.serving.cli", "avemo.contract.media"} <= set(out["result"]["names"])
    assert out["result"]["command"] == "predict"
    assert out["loaded"] == [] and not out["torch"]


@pytest.mark.slow
def test_predict_streams_a_real_clip_to_real_triton_without_torch(triton_server, mp4_clip, serving_labels, tmp_path):
    """`avemo predict CLIP --url ... --json` (the CLI's own path: avemo.cli -> client.cli -> EmotionClient
    + predict_clip) against the real server serving the tiny ONNX model, in a process without torch."""
    script = r"""
import contextlib, io, json
from avemo.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main(["predict", sys.argv[1], "--url", sys.argv[2], "--json"])
RESULT = {"rc": rc, "predictions": json.loads(buf.getvalue()) if buf.getvalue().strip() else None}
"""
    out = run_blocked(script, tmp_path, str(mp4_clip), triton_server.url)
    assert out["result"]["rc"] == 0, out
    preds = out["result"]["predictions"]
    assert isinstance(preds, list) and len(preds) == 1, preds
    pred = preds[0]
    assert pred["clip"] == str(mp4_clip) and pred["label"] in serving_labels
    assert set(pred["probs"]) == set(serving_labels) and abs(sum(pred["probs"].values()) - 1) < 1e-4
    assert pred["windows"] == len(pred["timeline"]) >= 1
    assert all(w["label"] in serving_labels for w in pred["timeline"])
    assert not out["torch"], "torch was imported"
    assert out["loaded"] == [], f"blocked packages in sys.modules: {out['loaded']}"


def test_packaging_metadata_keeps_torch_in_extras():
    """The base install needs no torch: torch & co. come only with an extra; the client's deps always."""
    reqs = [Requirement(r) for r in requires("avemo") or []]
    by_name: dict[str, list[Requirement]] = {}
    for r in reqs:
        by_name.setdefault(r.name.lower(), []).append(r)

    for name in BLOCKED:
        assert name in by_name, f"{name} is not a dependency of any extra: {sorted(by_name)}"
        for r in by_name[name]:
            assert r.marker is not None and "extra ==" in str(r.marker), f"{r} is required by the base install"
            assert not r.marker.evaluate({"extra": ""}), f"{r} applies without an extra"
    for name in ("numpy", "av", "tritonclient"):
        assert name in by_name, f"{name} missing from the requirements: {sorted(by_name)}"
        assert any(r.marker is None for r in by_name[name]), f"{name} is not an unconditional dependency"
    # and none of them is among the unconditional requirements
    base = sorted(r.name for r in reqs if r.marker is None)
    assert not set(n.lower() for n in base) & set(BLOCKED), base
