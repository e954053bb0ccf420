"""Export parity: export with one batch size, check onnxruntime against eager on another."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from avemo.contract import tensors
from avemo.export import cli as export_cli
from avemo.export import onnx_export, pipeline
from avemo.training.models.checkpoint import atomic_torch_save, make_checkpoint
from avemo.training.models.config import ModelConfig
from avemo.training.models.model import ExportWrapper, build_model

ATOL = 1e-4  # stated tolerance: probabilities and modality weights, onnxruntime vs eager


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, geo, tiny_dims):
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="gated", num_classes=8, **tiny_dims)
    model = build_model(cfg, geo).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    atomic_torch_save(make_checkpoint(model, cfg, [f"c{i}" for i in range(8)], geo), path)
    return path


def test_export_writes_repository_and_matches_eager(checkpoint, geo, tmp_path):
    report = pipeline.export_checkpoint(checkpoint, tmp_path / "repo", "emo")
    onnx_file = tmp_path / "repo" / "emo" / "1" / "model.onnx"
    assert onnx_file.is_file() and not list(onnx_file.parent.glob("*.data")), "ONNX must be one self-contained file"
    graph = onnx.load(str(onnx_file))
    assert [i.name for i in graph.graph.input] == [t.name for t in tensors.INPUTS]
    assert [o.name for o in graph.graph.output] == [t.name for t in tensors.OUTPUTS]
    assert graph.opset_import[0].version >= 17
    assert all(v <= ATOL for v in report.max_abs_diff.values())
    # independent check on a batch size never used in export (5) with a missing modality
    from avemo.training.models.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    audio, frames, mask = onnx_export.example_inputs(geo, 5, seed=7)
    mask[3] = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        eager = ExportWrapper(model)(audio, frames, mask)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"audio": audio.numpy(), "frames": frames.numpy(), "modality_mask": mask.numpy()})
    np.testing.assert_allclose(got[0], eager[0].numpy(), atol=ATOL)
    np.testing.assert_allclose(got[1], eager[1].numpy(), atol=ATOL)
    assert (tmp_path / "repo" / "emo" / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / "emo" / "labels.txt").read_text().split() == [f"c{i}" for i in range(8)]


def test_export_cli_fails_clearly_on_parity_mismatch(checkpoint, served_model_name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "parity", lambda *a, **k: {"probs": 0.25, "modality_weights": 0.0})
    import argparse

    p = argparse.ArgumentParser()
    export_cli.add_arguments(p)
    rc = export_cli.run(p.parse_args([str(checkpoint), "--model-repository", str(tmp_path / "repo")]))
    err = capsys.readouterr().err
    assert rc == 1
    assert "parity" in err and "probs" in err and "atol" in err
    assert not (tmp_path / "repo" / served_model_name).exists(), "nothing is written when parity fails"


def test_export_cli_reports_missing_checkpoint(tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser()
    export_cli.add_arguments(p)
    assert export_cli.run(p.parse_args([str(tmp_path / "nope.pt")])) == 1
    assert "does not exist" in capsys.readouterr().err
