"""Conversation models through export and Triton: one whole dialogue per request ([1, U, D], U dynamic), parity
with eager on dialogue lengths the trace never saw (one utterance included), the exported answers equal to the
trained model's in its padded training batches, a past-only context that stays causal in the graph, the three
flavours under the schema check, the Python backend's refusals, and a split scored through the real server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avemo.cli import main
from avemo.contract.tensors import MODALITY_MASK
from avemo.training.synthetic.dialogues import write_dialogue_file

DIMS = {"text": 6, "audio": 5, "video": 4}


@pytest.fixture(scope="module")
def dialogue_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dlgx") / "iemocap.pkl"
    return write_dialogue_file(path, layout="iemocap", dialogues=(12, 4), utterances=(4, 9), dims=DIMS, seed=0)


def _train(root, data, name, *flags):
    out = root / name
    argv = ["train", "--dataset", "iemocap", "--data_root", str(data), "--out_dir", str(out), "--epochs", "1"]
    assert main([*argv, "--tiny", "--no_progress", "--no-tensorboard", *flags]) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def past_ckpt(tmp_path_factory, dialogue_file):
    """Gated fusion under a past-only speaker-aware context (what a live conversation allows)."""
    return _train(tmp_path_factory.mktemp("dlgx"), dialogue_file, "past", "--context", "past")


@pytest.fixture(scope="module")
def past_repo(tmp_path_factory, past_ckpt):
    from avemo.export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("dlgrepo") / "model_repository"
    return repo, export_checkpoint(past_ckpt, repo, backends=("python", "onnxruntime", "libtorch"))


def _wrapper(ckpt_path):
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.models.feature_export import dialogue_export_wrapper, dialogue_signature_of

    model, ckpt = model_from_checkpoint(ckpt_path)
    sig = dialogue_signature_of(ckpt)
    return model, sig, dialogue_export_wrapper(model, sig).eval()


def test_three_flavours_pass_the_schema_with_a_dynamic_utterance_axis(past_repo, past_ckpt):
    from avemo.export.config_check import check_model_dir

    repo, report = past_repo
    _, sig, _ = _wrapper(past_ckpt)
    assert report.kind == "dialogue" and [m.name for m in report.models] == [
        "iemocap", "iemocap_onnx", "iemocap_libtorch"
    ]  # fmt: skip
    assert all(v <= report.atol for v in report.max_abs_diff.values()) and len(report.max_abs_diff) == 4
    for m in report.models:
        cfg = check_model_dir(repo / m.name, sig)
        assert cfg.max_batch_size == 1 and not cfg.HasField("dynamic_batching")
        assert [(i.name, tuple(i.dims)) for i in cfg.input] == [
            ("text", (-1, 6)), ("audio", (-1, 5)), ("vision", (-1, 4)), ("speakers", (-1,)), (MODALITY_MASK, (-1, 3))
        ]  # fmt: skip
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["kind"] == "dialogue" and params["context"] == "past" and params["num_speakers"] == "2"


def test_exported_dialogue_equals_eager_and_the_training_batch_on_unseen_lengths(past_repo, past_ckpt):
    import onnxruntime as ort

    from avemo.export.onnx_export import dialogue_example_inputs, input_names
    from avemo.export.torchscript_export import load_torchscript

    repo, _ = past_repo
    model, sig, wrapper = _wrapper(past_ckpt)
    sess = ort.InferenceSession(str(repo / "iemocap" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    script = load_torchscript(repo / "iemocap_libtorch" / "1" / "model.pt")
    dialogues = {u: dialogue_example_inputs(sig, u, seed=u) for u in (1, 4, 13)}  # traced with 6 utterances
    for u, inputs in dialogues.items():
        with torch.no_grad():
            eager = [t.numpy() for t in wrapper(*inputs)]
            traced = [t.numpy() for t in script(*inputs)]
        got = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), inputs)})
        assert got[0].shape == (1, u, 6) and got[1].shape == (1, u, 3)
        for e, o, t in zip(eager, got, traced):
            np.testing.assert_allclose(o, e, atol=1e-5)
            np.testing.assert_allclose(t, e, atol=1e-5)
    # the trained model on a padded batch of the 4- and 13-utterance dialogues gives the same per-utterance answers
    batch_x = [torch.zeros(2, 13, sig.dims[m]) for m in sig.modalities]
    mask, speakers, real = torch.zeros(2, 13, 3), torch.zeros(2, 13, dtype=torch.int64), torch.zeros(2, 13, dtype=bool)
    for row, u in enumerate((4, 13)):
        *xs, spk, msk = dialogues[u]
        for i, x in enumerate(xs):
            batch_x[i][row, :u] = x[0]
        mask[row, :u], speakers[row, :u], real[row, :u] = msk[0], spk[0], True
    with torch.no_grad():
        logits = model(*batch_x, mask, speakers, real)["logits"]  # [17, C], row-major
    exported = [sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), dialogues[u])})[0][0] for u in (4, 13)]
    np.testing.assert_allclose(np.concatenate(exported), torch.softmax(logits, -1).numpy(), atol=1e-5)


def test_past_context_stays_causal_in_the_exported_graph(past_repo, past_ckpt):
    import onnxruntime as ort

    from avemo.export.onnx_export import dialogue_example_inputs, input_names

    repo, _ = past_repo
    _, sig, _ = _wrapper(past_ckpt)
    sess = ort.InferenceSession(str(repo / "iemocap" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    long = dialogue_example_inputs(sig, 10, seed=3)
    short = [x[:, :6] for x in long]  # the first 6 utterances, before the rest was said
    a = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), long)})[0][0, :6]
    b = sess.run(None, {n: x.numpy() for n, x in zip(input_names(sig), short)})[0][0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_backend_refuses_bad_dialogues_and_keeps_serving(past_repo, past_ckpt, load_backend_model):
    from avemo.export.onnx_export import dialogue_example_inputs, input_names

    repo, _ = past_repo
    model, pb = load_backend_model(repo / "iemocap")
    _, sig, _ = _wrapper(past_ckpt)
    good = {n: x.numpy() for n, x in zip(input_names(sig), dialogue_example_inputs(sig, 5, seed=1))}
    empty = good[MODALITY_MASK].copy()
    empty[0, 3] = 0
    reqs = [
        pb.FakeRequest(good, "ok"),
        pb.FakeRequest({**good, "speakers": np.array([[0, 1, 2, 0, 1]])}, "speaker"),
        pb.FakeRequest({**good, "audio": good["audio"][:, :4]}, "length"),
        pb.FakeRequest({**good, MODALITY_MASK: empty}, "mask"),
        pb.FakeRequest({k: np.concatenate([v, v]) for k, v in good.items()}, "two"),
        pb.FakeRequest(good, "ok2"),
    ]
    out = model.execute(reqs)
    errors = {r.rid: o.error for r, o in zip(reqs, out)}
    assert errors["ok"] is None and errors["ok2"] is None
    assert all(e.code == pb.TritonError.INVALID_ARG for k, e in errors.items() if k not in ("ok", "ok2"))
    assert "input 'speakers' has speaker 2; the model knows speakers 0..1" in errors["speaker"].msg
    assert "input 'audio' has 4 utterances, but 'text' has 5" in errors["length"].msg
    assert "input 'modality_mask' utterance 3 has no modality present" in errors["mask"].msg
    assert "batch 1..1" in errors["two"].msg  # one dialogue per request
    assert out[0].output_tensors[0].as_numpy().shape == (1, 5, 6)


def test_joyful_checkpoints_are_refused_with_the_reason(tmp_path, dialogue_file):
    pytest.importorskip("torch_geometric")
    from avemo.export.pipeline import export_checkpoint

    ckpt = _train(tmp_path, dialogue_file, "joyful", "--fusion", "joyful")
    with pytest.raises(ValueError, match="JOYFUL model: its relational graph builds its edges"):
        export_checkpoint(ckpt, tmp_path / "repo")


@pytest.mark.slow
def test_a_conversation_split_through_triton_equals_evaluate(past_repo, past_ckpt, dialogue_file, launch_triton,
                                                             capsys):  # fmt: skip
    repo, _ = past_repo
    server = launch_triton(repo)
    common = ["--dataset", "iemocap", "--data_root", str(dialogue_file), "--split", "test", "--json"]
    assert main(["evaluate", str(past_ckpt), *common]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(["predict", "--url", server.url, *common]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["served_model"] == "iemocap" and served["clip"]["n"] == local["clip"]["n"] > 0
    for level in ("window", "clip"):
        for key in ("accuracy", "macro_f1", "weighted_f1"):
            assert served[level][key] == pytest.approx(local[level][key], abs=1e-5), (level, key)
    np.testing.assert_allclose(served["mean_modality_weights"], local["mean_modality_weights"], atol=1e-5)
