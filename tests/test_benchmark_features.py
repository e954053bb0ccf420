"""benchmarks/serving.py on a feature model (benchmarks/serving_features.py): the checkpoint is told apart from
the clip model, only its flavours are measured in process (eager, TorchScript, onnxruntime), the requests are
one sample of the served signature, the two ratios are computed as the issue states; then (slow) the whole
script on the embedded Triton."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from avemo.cli import main


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory, mosei_file):
    """A tiny text-audio-video regression checkpoint (1 epoch on the conftest MOSEI file) and its three flavours."""
    from avemo.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("bench_feat")
    argv = ["train", "--dataset", "mosei", "--data_root", str(mosei_file), "--cache_dir", str(root / "cache")]
    argv += ["--out_dir", str(root / "run"), "--epochs", "1", "--tiny", "--no_progress"]
    assert main([*argv, "--modalities", "atv", "--task", "regression"]) == 0
    ckpt, repo = root / "run" / "best.pt", root / "model_repository"
    export_checkpoint(ckpt, repo, backends=("python", "onnxruntime", "libtorch"))
    return ckpt, repo


def _load_benchmark(repo_root, monkeypatch):
    """benchmarks/serving.py as a module (its folder on sys.path, as when it runs as a script)."""
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    spec = importlib.util.spec_from_file_location("avemo_serving_benchmark", repo_root / "benchmarks" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod, mod.feat


def test_feature_benchmark_in_process_part_and_ratios(feature_repo, repo_root, monkeypatch, capsys):
    from avemo.client.loadgen import ConcurrencyResult, Latency
    from avemo.contract.features import FeatureSignature

    ckpt, repo = feature_repo
    bench, feat = _load_benchmark(repo_root, monkeypatch)
    assert feat.checkpoint_kind(ckpt) == ("features", "mosei")
    models = feat.own_models(bench.scan_repository(repo), "mosei")
    assert sorted((m.name, m.kind) for m in models) == [
        ("mosei", "python"), ("mosei_libtorch", "libtorch"), ("mosei_onnx", "onnxruntime")
    ]  # fmt: skip

    threads = torch.get_num_threads()
    try:
        inproc = bench.measure_in_process(ckpt, models, {"warmup": 1, "iters": 3, "batch_iters": 1}, 1)
    finally:
        torch.set_num_threads(threads)
    assert inproc["eager"]["p50_ms"] > 0 and inproc["eager"]["throughput_b8"] > 0
    assert inproc["torchscript"]["file"].endswith("mosei_libtorch/1/model.pt")
    ort = inproc["onnxruntime"]["mosei"]
    assert ort["p50_ms"] > 0 and inproc["onnxruntime"]["mosei_onnx"] == {"same_as": "mosei"}

    sig = FeatureSignature.from_parameters(inproc["signature"])
    samples = feat.feature_samples(sig, 3)
    assert [s.features["text"].shape for s in samples] == [(1, 8, sig.dims["text"])] * 3  # conftest: text 8 steps
    assert all(s.lengths.shape == (1, 3) and s.lengths.dtype == np.int64 and s.mask.shape == (1, 3) for s in samples)
    assert samples[1].mask.sum() == 2  # example_inputs: row 1 lacks a modality

    def run(c: int, p50: float, throughput: float) -> ConcurrencyResult:
        return ConcurrencyResult("mosei", c, 1.0, False, 10, 0, latency_ms=Latency.of([p50]), throughput=throughput)

    triton = {"models": {"mosei": [run(1, ort["p50_ms"] + 1.0, 1.0), run(8, 9.0, 0.4 * ort["throughput_b8"])]}}
    rows = bench.ratios(inproc, triton, "features", "mosei")
    assert [(r["op"], r["target"], r["met"]) for r in rows] == [("<=", 3.0, True), (">=", 0.5, False)]
    assert rows[0]["value"] == pytest.approx(1.0) and rows[1]["value"] == pytest.approx(0.4)

    env = {"cpu": "cpu", "cores": 1, "checkpoint": str(ckpt), "repository": str(repo), "model_kind": "features"}
    env["model"] = feat.describe(inproc["signature"])
    bench.print_report(env, inproc, None, rows, {"triton streams": feat.STREAMS_SKIPPED})
    out = capsys.readouterr().out
    assert "model kind: features (mosei regression: text [8, " in out and "samples/s batch 8" in out
    assert "1.00 ms (target <= 3 ms) PASS" in out and "0.40 (target >= 0.5) MISS" in out


@pytest.mark.slow
def test_feature_benchmark_quick_on_the_embedded_server(triton_runtime, feature_repo, repo_root, tmp_path):
    import shutil

    ckpt, repo = feature_repo
    repo = shutil.copytree(repo, tmp_path / "repository")  # the backend writes __pycache__
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(repo_root / "benchmarks" / "serving.py"), "--checkpoint", str(ckpt)]
    cmd += ["--model-repository", str(repo), "--quick", "--duration", "0.5", "--concurrency", "1,8", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())

    assert report["environment"]["model_kind"] == "features" and report["environment"]["concurrency"] == [1, 8]
    runs = report["triton"]["models"]["mosei"]  # the python flavour; the embedded server lacks the other two
    assert [r["concurrency"] for r in runs] == [1, 8] and report["triton"]["streams"] is None
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["server"]["compute_infer_us"] > 0 for r in runs)
    assert [r["target"] for r in report["ratios"]] == [3.0, 0.5]
    assert all(r["value"] is not None and r["met"] in (True, False) for r in report["ratios"])
    assert "streams" in report["skipped"]["triton streams"] and "model kind: features" in proc.stdout
