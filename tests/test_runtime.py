"""Runtime: device / AMP choices, W&B logging that never fails a run, torchrun DDP on CPU, GPU smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avemo.training.models.config import ModelConfig
from avemo.training.train.compare import TINY_MODEL
from avemo.training.train.config import TrainConfig
from avemo.training.train.runtime import make_runtime

# the tiny corpus (``tiny_corpus``, 3 actors) is a conftest.py fixture, generated once per session.


def tiny_config(corpus: Path, out: Path, **kw) -> TrainConfig:
    kw = {"epochs": 1, "batch_size": 8, "progress": False, "tensorboard": False} | kw
    return TrainConfig(
        data_root=str(corpus),
        cache_dir=str(out.parent / "cache"),
        out_dir=str(out),
        model=ModelConfig(fusion="gated", **TINY_MODEL),
        **kw,
    )


def test_cpu_runtime_defaults():
    rt = make_runtime("cpu", "auto", "auto")
    assert rt.device.type == "cpu" and rt.amp_dtype is None and not rt.channels_last
    assert not rt.distributed and rt.is_main and rt.broadcast_float(0.25) == 0.25
    assert rt.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages given without a GPU")
def test_gpu_options_without_gpu_are_refused_clearly():
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        make_runtime("cuda")
    with pytest.raises(SystemExit, match="bfloat16"):
        make_runtime("cpu", "bf16")
    with pytest.raises(ValueError, match="device must be one of"):
        make_runtime("tpu")


def test_wandb_mode_follows_the_api_key(monkeypatch, tmp_path):
    from avemo.training.train.logger import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


@pytest.mark.slow
def test_wandb_logs_offline_without_a_key(tiny_corpus, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from avemo.training.train.loop import train

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    results = train(tiny_config(tiny_corpus, out, wandb=True, max_train_batches=2))
    assert results["epochs_run"] == 1
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb folder"
    assert list(runs[0].glob("*.wandb")), "the offline run holds its event file"


@pytest.mark.slow
def test_wandb_that_cannot_start_never_fails_the_run(tiny_corpus, tmp_path, monkeypatch, capsys):
    from avemo.training.train.loop import train

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    results = train(tiny_config(tiny_corpus, tmp_path / "run", wandb=True, max_train_batches=2))
    assert results["epochs_run"] == 1 and (tmp_path / "run" / "best.pt").exists()
    assert "W&B logging off" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_corpus, tmp_path):
    """`torchrun --nproc_per_node 2 avemo train`: gloo DDP, each rank half the windows, one set of outputs."""
    out = tmp_path / "ddp"
    # no checkout on PYTHONPATH: the ranks import the installed `avemo` package, as a user's would
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "avemo.cli",
        "train",
        "--data_root",
        str(tiny_corpus),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--out_dir",
        str(out),
        "--fusion",
        "gated",
        "--tiny",
        "--epochs",
        "2",
        "--batch_size",
        "4",
        "--device",
        "cpu",
        "--no_progress",
        "--no-tensorboard",
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # --json: stdout holds only rank 0's JSON document
    assert printed["ddp"]["world_size"] == 2 and printed["checkpoint"] == str(out / "best.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ddp"] == {"world_size": 2, "backend": "gloo", "weights_spread": 0.0}
    assert "DDP rank 0/2 (gloo)" in metrics["runtime"]
    assert metrics["epochs_run"] == 2
    # the two ranks together saw every training window exactly once per epoch (DistributedSampler
    # pads an odd count with one repeat)
    n_train = metrics["windows"]["train"]
    assert all(n_train <= h["train_windows"] <= n_train + 1 for h in metrics["history"])
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "metrics.json", "history.png"}
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["model_config"]["fusion"] == "gated"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_channels_last_run(tiny_corpus, tmp_path):
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.train.loop import train

    cfg = tiny_config(tiny_corpus, tmp_path / "gpu", epochs=2, device="cuda", amp="bf16", channels_last="on")
    results = train(cfg)
    assert "bf16 autocast" in results["runtime"] and "channels_last on" in results["runtime"]
    assert results["epochs_run"] == 2 and results["history"][-1]["train_loss_total"] > 0
    model, _ = model_from_checkpoint(results["checkpoint"])  # loads on CPU, NCHW weights
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())
    # a float32 CPU copy of the checkpoint agrees with a float32 GPU copy
    gpu_model, _ = model_from_checkpoint(results["checkpoint"])
    gpu_model = gpu_model.cuda().to(memory_format=torch.channels_last)
    audio, frames = torch.randn(3, 32000) * 0.1, torch.randint(0, 255, (3, 16, 112, 112, 3), dtype=torch.uint8)
    mask = torch.ones(3, 2)
    with torch.no_grad():
        cpu = torch.softmax(model(audio, frames, mask)["logits"], -1)
        gpu = torch.softmax(gpu_model(audio.cuda(), frames.cuda(), mask.cuda())["logits"], -1).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)
