"""Feature models through export: the feature contract, ONNX / TorchScript parity on batch sizes and valid
lengths the trace never saw, the three Triton flavours under the schema check, and the Python backend's
refusals (wrong dims, lengths beyond the padding, NaN, a mask with nothing present) -- in-process, no server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avemo.cli import main
from avemo.contract.features import FeatureSignature
from avemo.contract.tensors import MODALITY_MASK, MODALITY_WEIGHTS


def _train(root, mosei_file, name, *flags):
    out = root / name
    argv = ["train", "--dataset", "mosei", "--data_root", str(mosei_file), "--cache_dir", str(root / "cache")]
    assert main([*argv, "--out_dir", str(out), "--epochs", "1", "--tiny", "--no_progress", *flags]) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def regression_ckpt(tmp_path_factory, mosei_file):
    """Text-audio-video regression, gated fusion, MLP encoders (the seed-002 model's shape)."""
    return _train(tmp_path_factory.mktemp("fexp"), mosei_file, "reg", "--modalities", "atv", "--task", "regression")


@pytest.fixture(scope="module")
def classification_ckpt(tmp_path_factory, mosei_file):
    """Text-audio, 3 classes, Transformer encoders under cross-attention fusion (padding masks in the graph)."""
    flags = ["--modalities", "ta", "--task", "classification", "--num_classes", "3"]
    flags += ["--feature_encoder", "transformer", "--fusion", "xattn"]
    return _train(tmp_path_factory.mktemp("fexp"), mosei_file, "cls", *flags)


@pytest.fixture(scope="module")
def regression_repo(tmp_path_factory, regression_ckpt):
    from avemo.export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("frepo") / "model_repository"
    report = export_checkpoint(regression_ckpt, repo, backends=("python", "onnxruntime", "libtorch"))
    return repo, report


def test_signature_round_trips_through_config_parameters():
    sig = FeatureSignature(("text", "video"), {"text": 768, "video": 35}, {"text": 50, "video": 375}, "regression",
                           ("sentiment",), "mosei")  # fmt: skip
    assert [t.name for t in sig.inputs] == ["text", "text_lengths", "vision", "vision_lengths", MODALITY_MASK]
    assert [t.dims for t in sig.inputs] == [(50, 768), (1,), (375, 35), (1,), (2,)]
    assert [t.name for t in sig.outputs] == ["prediction", MODALITY_WEIGHTS]
    assert FeatureSignature.from_parameters(sig.parameters()) == sig
    with pytest.raises(ValueError, match="not a feature model"):
        FeatureSignature.from_parameters({**sig.parameters(), "kind": "clip"})
    with pytest.raises(ValueError, match="do not cover the modalities"):
        FeatureSignature.from_parameters({**sig.parameters(), "seq_lens": "text:50"})
    with pytest.raises(ValueError, match="one output name"):
        FeatureSignature(("text",), {"text": 4}, {"text": 3}, "regression", ("a", "b"))


def test_regression_model_exports_three_flavours_that_pass_the_schema(regression_repo, regression_ckpt):
    from avemo.export.config_check import check_model_dir

    repo, report = regression_repo
    assert report.kind == "features" and report.task == "regression"
    assert [(m.flavour, m.name) for m in report.models] == [
        ("python", "mosei"), ("onnxruntime", "mosei_onnx"), ("libtorch", "mosei_libtorch")
    ]  # fmt: skip
    assert set(report.max_abs_diff) == {
        f"{f}/{o}" for f in ("onnx", "torchscript") for o in ("prediction", "modality_weights")
    }
    assert all(v <= report.atol for v in report.max_abs_diff.values())
    sig = _signature(regression_ckpt)
    for m in report.models:
        cfg = check_model_dir(repo / m.name, sig)
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["kind"] == "features" and params["task"] == "regression" and params["dataset"] == "mosei"
        assert params["seq_lens"] == "text:8,audio:20,vision:15"  # the file's padded lengths (conftest)
        assert [o.name for o in cfg.output] == ["prediction", MODALITY_WEIGHTS]
        assert not any(o.label_filename for o in cfg.output)


def test_parity_on_other_batches_and_lengths_and_rows_stay_isolated(regression_repo, regression_ckpt):
    import onnxruntime as ort

    from avemo.export.onnx_export import example_inputs, input_names
    from avemo.export.torchscript_export import load_torchscript
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.models.feature_export import feature_export_wrapper, feature_signature_of

    repo, _ = regression_repo
    model, ckpt = model_from_checkpoint(regression_ckpt)
    sig = feature_signature_of(ckpt)
    wrapper = feature_export_wrapper(model, sig).eval()
    sess = ort.InferenceSession(str(repo / "mosei" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    script = load_torchscript(repo / "mosei_libtorch" / "1" / "model.pt")
    for batch, seed in ((1, 7), (5, 11), (9, 12)):  # traced with batch 2, seed 0
        inputs = example_inputs(sig, batch, seed)
        with torch.no_grad():
            eager = [t.numpy() for t in wrapper(*inputs)]
            traced = [t.numpy() for t in script(*inputs)]
        got = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), inputs)})
        for e, o, t in zip(eager, got, traced):
            np.testing.assert_allclose(o, e, atol=1e-5)
            np.testing.assert_allclose(t, e, atol=1e-5)
    # a row's answer depends on its own inputs only: change row 1 of every input, rows 0 and 2 stay
    inputs = [x.clone() for x in example_inputs(sig, 3, seed=3)]
    base = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), inputs)})
    for x in inputs:
        x[1] = x[1] * 0 + (1 if x.dtype == torch.int64 else 0.5)
    moved = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), inputs)})
    np.testing.assert_allclose(moved[0][[0, 2]], base[0][[0, 2]], atol=1e-6)
    assert not np.allclose(moved[0][1], base[0][1])
    # a lengths input is read: the same features with fewer valid steps give another answer
    inputs = [x.clone() for x in example_inputs(sig, 2, seed=4)]
    inputs[1][:] = sig.seq_lens["text"]
    full = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), inputs)})[0]
    inputs[1][:] = 1
    short = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), inputs)})[0]
    assert not np.allclose(full, short)


def test_classification_model_serves_probs_with_labels(classification_ckpt, tmp_path):
    from avemo.export.config_check import check_model_dir
    from avemo.export.pipeline import export_checkpoint

    report = export_checkpoint(classification_ckpt, tmp_path / "repo", backends=("python", "libtorch"))
    assert report.task == "classification" and report.labels == ["negative", "neutral", "positive"]
    model_dir = tmp_path / "repo" / "mosei"
    text = (model_dir / "config.pbtxt").read_text()
    assert 'name: "probs"' in text and 'label_filename: "labels.txt"' in text and '"prediction"' not in text
    assert (model_dir / "labels.txt").read_text().split() == report.labels
    cfg = check_model_dir(model_dir, _signature(classification_ckpt))
    assert [i.name for i in cfg.input] == ["text", "text_lengths", "audio", "audio_lengths", MODALITY_MASK]


def _signature(ckpt_path):
    from avemo.training.models.checkpoint import load_checkpoint
    from avemo.training.models.feature_export import feature_signature_of

    return feature_signature_of(load_checkpoint(ckpt_path))


def test_schema_check_catches_configs_and_graphs_that_disagree(regression_repo, regression_ckpt, classification_ckpt,
                                                               tmp_path):  # fmt: skip
    import shutil

    from avemo.export.config_check import ConfigError, check_model_dir
    from avemo.export.pipeline import export_checkpoint

    repo, _ = regression_repo
    sig = _signature(regression_ckpt)
    check_model_dir(repo / "mosei", sig)  # as written: passes
    broken = shutil.copytree(repo / "mosei", tmp_path / "mosei")
    cfg = broken / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('string_value: "text:8,', 'string_value: "text:9,'))
    with pytest.raises(ConfigError, match="feature parameters describe"):
        check_model_dir(broken, sig)
    # a graph with other inputs (text + audio, 3 classes) under the regression model's config
    other = export_checkpoint(classification_ckpt, tmp_path / "other", backends=("python",))
    shutil.copytree(repo / "mosei", tmp_path / "swap" / "mosei")
    shutil.copyfile(other.onnx_path, tmp_path / "swap" / "mosei" / "1" / "model.onnx")
    with pytest.raises(ConfigError, match=r"model.onnx inputs .* do not match config.pbtxt"):
        check_model_dir(tmp_path / "swap" / "mosei", sig)


def test_backend_refuses_bad_feature_requests_and_keeps_serving(regression_repo, regression_ckpt, load_backend_model):
    from avemo.export.onnx_export import example_inputs, input_names

    repo, _ = regression_repo
    model, pb = load_backend_model(repo / "mosei")
    sig = _signature(regression_ckpt)
    good = {n: x.numpy() for n, x in zip(input_names(sig), example_inputs(sig, 2, seed=5))}

    def req(rid, **changes):
        return pb.FakeRequest({**good, **changes}, rid)

    steps = sig.seq_lens["text"]
    nan_audio = good["audio"].copy()
    nan_audio[0, 0, 0] = np.nan
    reqs = [
        req("ok"),
        req("dims", text=np.zeros((2, steps, sig.dims["text"] + 1), np.float32)),
        req("long", text_lengths=np.full((2, 1), steps + 1, np.int64)),
        req("negative", vision_lengths=np.full((2, 1), -1, np.int64)),
        req("nan", audio=nan_audio),
        req("empty", modality_mask=np.array([[1, 1, 1], [0, 0, 0]], np.float32)),
        req("ok2"),
    ]
    out = model.execute(reqs)
    errors = {r.rid: o.error for r, o in zip(reqs, out)}
    assert errors["ok"] is None and errors["ok2"] is None
    assert all(e.code == pb.TritonError.INVALID_ARG for k, e in errors.items() if k not in ("ok", "ok2"))
    assert (
        f"input 'text' has shape [2, {steps}, {sig.dims['text'] + 1}], expected [-1, {steps}, 768]"
        in errors["dims"].msg
    )
    assert (
        f"input 'text_lengths' has {steps + 1} steps, beyond the padding of 'text': valid lengths are 0..{steps}"
        in (errors["long"].msg)
    )
    assert "input 'vision_lengths' has -1 steps" in errors["negative"].msg
    assert "input 'audio' contains 1 non-finite values" in errors["nan"].msg
    assert "input 'modality_mask' row 1 has no modality present" in errors["empty"].msg
    got = {t.name(): t.as_numpy() for t in out[0].output_tensors}
    assert got["prediction"].shape == (2, 1) and got[MODALITY_WEIGHTS].shape == (2, 3)
    assert model.audio_abs_max is None  # a feature model's "audio" is features, not PCM: no PCM range check
