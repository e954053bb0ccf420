"""End to end: tiny corpus -> train (and resume) -> export -> real Triton -> gRPC stream -> parity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from avemo.contract import media
from avemo.contract.geometry import DEFAULT_GEOMETRY
from avemo.training.models.config import ModelConfig
from avemo.training.train.config import TrainConfig

pytestmark = pytest.mark.slow


# the tiny corpus (``tiny_corpus``, 3 actors) and the real server (``launch_triton``) are conftest.py fixtures.


def tiny_config(corpus, tmp_path, epochs: int) -> TrainConfig:
    return TrainConfig(
        data_root=str(corpus),
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "run"),
        epochs=epochs,
        batch_size=8,
        lr=3e-3,
        early_stopping_patience=10,
        progress=False,
        model=ModelConfig(fusion="gated", audio_channels=(8, 16), video_channels=(8, 16), embed_dim=32),
    )


def test_train_resume_export_serve_stream(tiny_corpus, triton_runtime, launch_triton, served_model_name, tmp_path):
    from avemo.training.train.loop import train

    # train 1 epoch, then "resume" to 2: the second call continues from last.pt
    first = train(tiny_config(tiny_corpus, tmp_path, epochs=1))
    assert first["epochs_run"] == 1
    second = train(replace(tiny_config(tiny_corpus, tmp_path, epochs=2), resume=True))
    assert second["epochs_run"] == 2 and len(second["history"]) == 2
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "best.pt",
        "last.pt",
        "metrics.json",
        "history.png",
        "confusion_test.png",
    }
    assert not list(run.glob("*.tmp")), "no temporary checkpoint files left"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"]["test"] and set(metrics["split"]["test"]).isdisjoint(metrics["split"]["train"])
    assert 0.0 <= metrics["test"]["clip"]["macro_f1"] <= 1.0

    # export
    from avemo.export.pipeline import export_checkpoint

    repo = tmp_path / "repo"
    report = export_checkpoint(run / "best.pt", repo, served_model_name)
    assert max(report.max_abs_diff.values()) <= 1e-4

    # real Triton, real gRPC stream
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from avemo.client.grpc_client import EmotionClient
    from avemo.client.predict import predict_clip

    clip_path = sorted(tiny_corpus.glob("Actor_03/*.mp4"))[0]
    server = launch_triton(repo)  # fails the test with the server's log tail if it cannot start
    client = EmotionClient(server.url, served_model_name)
    served = client.model()
    assert served.geometry == DEFAULT_GEOMETRY and len(served.labels) == 8
    result = predict_clip(client, clip_path)
    assert result["label"] in served.labels and len(result["timeline"]) >= 1

    # same windows through in-process onnxruntime
    clip = media.decode_clip(clip_path, DEFAULT_GEOMETRY)
    windows = media.make_windows(clip, DEFAULT_GEOMETRY)
    sess = ort.InferenceSession(report.onnx_path, providers=["CPUExecutionProvider"])
    local, _ = sess.run(
        None,
        {
            "audio": np.stack([w.audio for w in windows]),
            "frames": np.stack([w.frames for w in windows]),
            "modality_mask": np.stack([w.mask for w in windows]),
        },
    )
    streamed = client.stream(windows)
    np.testing.assert_allclose(np.stack([r.probs for r in streamed]), local, atol=1e-5)
    np.testing.assert_allclose([result["probs"][lab] for lab in served.labels], local.mean(0), atol=1e-5)

    # a malformed request is refused with a readable message ...
    raw = grpcclient.InferenceServerClient(server.url)
    bad = grpcclient.InferInput("audio", [1, 100], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 100), np.float32))
    frames = grpcclient.InferInput("frames", [1, *windows[0].frames.shape], "UINT8")
    frames.set_data_from_numpy(windows[0].frames[None])
    mask = grpcclient.InferInput("modality_mask", [1, 2], "FP32")
    mask.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException) as err:
        raw.infer(served_model_name, [bad, frames, mask])
    assert "audio" in str(err.value) and str(DEFAULT_GEOMETRY.window_samples) in str(err.value)
    # ... and the server still answers a good request
    probs, weights = client.infer(windows[0].audio, windows[0].frames, windows[0].mask)
    np.testing.assert_allclose(probs[0], local[0], atol=1e-5)
    client.close()
    server.stop()
    assert server.process is None or server.process.poll() is not None


def test_killed_run_resumes_to_identical_weights(tiny_corpus, tmp_path, monkeypatch):
    """A run killed in the middle of epoch 2 and resumed ends with the same weights, bit for bit (CPU)."""
    import torch

    from avemo.training.train import loop as trainer

    straight = trainer.train(tiny_config(tiny_corpus, tmp_path / "straight", epochs=3))
    assert straight["epochs_run"] == 3

    real_evaluate, calls = trainer.evaluate, {"n": 0}

    def killing_evaluate(*args, **kwargs):  # validation of epoch 2 runs after its training steps
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill before epoch 2 is saved")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", killing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(tiny_corpus, tmp_path / "killed", epochs=3))
    monkeypatch.setattr(trainer, "evaluate", real_evaluate)
    killed_dir = tmp_path / "killed" / "run"
    assert torch.load(killed_dir / "last.pt", weights_only=True)["train_state"]["epoch"] == 1
    resumed = trainer.train(replace(tiny_config(tiny_corpus, tmp_path / "killed", epochs=3), resume=True))
    assert resumed["epochs_run"] == 3 and len(resumed["history"]) == 3
    a = torch.load(tmp_path / "straight" / "run" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(killed_dir / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
