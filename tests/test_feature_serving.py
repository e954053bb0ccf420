"""A feature model on the real embedded Triton server, beside the clip model: `avemo predict --dataset mosei`
gives the metrics of `avemo evaluate` through gRPC, bad requests are refused by name while the server keeps
serving, and `avemo demo --dataset mosei` runs the whole feature path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from avemo.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feature_ckpt(tmp_path_factory, mosei_file):
    root = tmp_path_factory.mktemp("fserve")
    argv = ["train", "--dataset", "mosei", "--data_root", str(mosei_file), "--cache_dir", str(root / "cache")]
    argv += ["--out_dir", str(root / "run"), "--epochs", "2", "--tiny", "--no_progress", "--modalities", "atv"]
    assert main([*argv, "--task", "regression"]) == 0
    return root / "run" / "best.pt"


@pytest.fixture(scope="module")
def both_models(tmp_path_factory, triton_repository, feature_ckpt):
    """A repository with the clip model (conftest's tiny one) and the feature model under the dataset's name."""
    from avemo.export.pipeline import export_checkpoint

    repo = shutil.copytree(triton_repository, tmp_path_factory.mktemp("both") / "model_repository")
    report = export_checkpoint(feature_ckpt, repo)
    assert report.models[0].name == "mosei"
    return repo


def test_predict_through_triton_equals_evaluate(both_models, feature_ckpt, mosei_file, launch_triton, served_model_name,
                                                tmp_path, capsys):  # fmt: skip
    server = launch_triton(both_models)
    assert {name for name, _ in server.ready_models()} >= {served_model_name, "mosei"}  # one server, both models
    cache = ["--cache_dir", str(tmp_path / "cache")]
    common = ["--dataset", "mosei", "--data_root", str(mosei_file), "--split", "test", "--json", *cache]
    assert main(["evaluate", str(feature_ckpt), *common]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(["predict", "--url", server.url, *common]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["served_model"] == "mosei" and served["n"] == local["n"] == 40
    assert set(served["regression"]) == set(local["regression"]) >= {"Corr", "MAE", "Non0_acc_2", "Mult_acc_7"}
    for key, value in local["regression"].items():
        assert served["regression"][key] == pytest.approx(value, abs=1e-5), key
    np.testing.assert_allclose(served["mean_modality_weights"], local["mean_modality_weights"], atol=1e-5)
    assert main(["predict", "--url", server.url, "--dataset", "mosei", "--data_root", str(mosei_file), *cache]) == 0
    text = capsys.readouterr().out
    assert "model mosei at" in text and "test (every modality): 40 examples" in text and "Corr" in text


def test_bad_feature_requests_are_refused_by_name_and_the_server_keeps_serving(both_models, launch_triton):
    from avemo.client.features import FeatureClient
    from avemo.client.grpc_client import EmotionClient
    from avemo.client.grpc_stream import EmotionClientError

    server = launch_triton(both_models)
    client = FeatureClient(server.url, "mosei")
    sig = client.signature()
    assert sig.modalities == ("text", "audio", "video") and sig.task == "regression" and sig.dataset == "mosei"
    rng = np.random.default_rng(0)
    feats = {m: rng.normal(size=(3, sig.seq_lens[m], sig.dims[m])).astype(np.float32) for m in sig.modalities}
    lengths = np.array([[8, 20, 15], [3, 5, 1], [1, 1, 1]], np.int64)
    good = client.infer(feats, lengths)
    assert good.values.shape == (3,) and good.modality_weights.shape == (3, 3) and np.isfinite(good.values).all()

    def refused(**change) -> str:
        args = {"features": feats, "lengths": lengths, "mask": np.ones((3, 3), np.float32)} | change
        with pytest.raises(EmotionClientError) as info:
            client._request(args["features"], args["lengths"], args["mask"])
        return str(info.value)

    wide = {**feats, "text": np.zeros((3, sig.seq_lens["text"], sig.dims["text"] + 2), np.float32)}
    assert "unexpected shape for input 'text'" in refused(features=wide)
    long = lengths.copy()
    long[1, 1] = sig.seq_lens["audio"] + 1
    assert "input 'audio_lengths' has 21 steps, beyond the padding of 'audio'" in refused(lengths=long)
    nan = feats["video"].copy()
    nan[2, 0, 0] = np.nan
    assert "input 'vision' contains 1 non-finite values" in refused(features={**feats, "video": nan})
    empty = np.ones((3, 3), np.float32)
    empty[1] = 0
    assert "input 'modality_mask' row 1 has no modality present" in refused(mask=empty)
    again = client.infer(feats, lengths)  # still serving, and the same answers
    np.testing.assert_allclose(again.values, good.values, atol=1e-6)
    client.close()
    with EmotionClient(server.url) as clip_client:  # the clip model beside it is unaffected
        assert clip_client.is_ready()


def test_feature_demo_runs_end_to_end(mosei_file, tmp_path, capsys):
    argv = [
        "demo",
        "--dataset",
        "mosei",
        "--data-root",
        str(mosei_file),
        "--feature-epochs",
        "1",
        "--runs",
        str(tmp_path),
    ]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--model-repository", str(tmp_path / "repo")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "feature_demo" / "summary.json").read_text())
    assert set(summary["test"]) == {"audio teacher", "video teacher", "tva"}
    assert summary["max_abs_metric_diff"] <= 1e-5
    assert summary["tva_through_triton"]["Corr"] == pytest.approx(summary["tva_in_process"]["Corr"], abs=1e-5)
    assert (tmp_path / "repo" / "mosei" / "config.pbtxt").is_file()
    assert "tva through Triton" in out and "audio teacher (in-process)" in out
