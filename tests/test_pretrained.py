"""Pretrained encoders, offline: the real architectures with random weights, weights this test writes itself
read back through the same loading paths (a state dict file, a save_pretrained folder, the hub and torch.hub
caches), the messages when weights cannot be had, and freezing / cached features / encoder learning rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avemo.training.models.config import ModelConfig
from avemo.training.models.pretrained import (
    SPEECH_ENCODERS,
    PretrainedWeightsUnavailable,
    SpeechEncoder,
    check_sources,
    load_resnet18_weights,
    load_speech_weights,
)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def speech(name: str = "wav2vec2_base", layers: int = 1, seed: int = 0) -> SpeechEncoder:
    torch.manual_seed(seed)
    return SpeechEncoder(name, layers, embed_dim=16, sequence_dim=8).eval()


@pytest.mark.parametrize("name", sorted(SPEECH_ENCODERS))
def test_speech_encoders_are_the_base_architectures(name):
    enc = speech(name, layers=1)
    x = 0.1 * torch.randn(2, 16000)  # 1 s at 16 kHz
    with torch.no_grad():
        feats = enc.features(x)
        emb, tokens = enc.forward_with_sequence(x)
    assert feats.shape == (2, 768, 49)  # one 768-d frame per 20 ms
    assert emb.shape == (2, 16) and tokens.shape == (2, 49, 8)
    # the waveform is normalised per window: gain does not change the answer
    with torch.no_grad():
        assert torch.allclose(enc(x), enc(3.0 * x), atol=1e-4)
    # the whole base model: 12 layers, about 94 M parameters, of which the layers are what --audio_layers cuts
    full = sum(p.numel() for p in SpeechEncoder(name, 12, 16).speech.parameters())
    assert 94e6 < full < 95e6
    assert sum(p.numel() for p in enc.speech.parameters()) < full - 10 * 7e6


def test_a_local_state_dict_loads_through_the_same_path(tmp_path):
    from safetensors.torch import save_file

    source = speech(layers=2, seed=0)
    target = speech(layers=1, seed=1)
    assert not same_weights(source.speech.encoder.layers[0], target.speech.encoder.layers[0])
    # a task model's keys (wav2vec2.<name>), with more layers than kept: the prefix is stripped, the rest ignored
    path = tmp_path / "w2v.pt"
    torch.save({f"wav2vec2.{k}": v for k, v in source.speech.state_dict().items()}, path)
    line = load_speech_weights(target, str(path))
    assert "from" in line and str(path) in line
    assert same_weights(source.speech.encoder.layers[0], target.speech.encoder.layers[0])
    assert same_weights(source.speech.feature_extractor, target.speech.feature_extractor)
    # safetensors
    other = speech(layers=1, seed=2)
    save_file({k: v.contiguous() for k, v in speech(layers=1, seed=3).speech.state_dict().items()},
              str(tmp_path / "w.safetensors"))  # fmt: skip
    load_speech_weights(other, str(tmp_path / "w.safetensors"))
    assert same_weights(other.speech, speech(layers=1, seed=3).speech)


def test_weights_of_another_architecture_are_refused_naming_the_mismatch(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not fit .* missing"):
        load_speech_weights(speech(), str(path))
    with pytest.raises(PretrainedWeightsUnavailable, match="no such file or folder"):
        load_speech_weights(speech(), str(tmp_path / "absent"))
    (tmp_path / "notweights.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception, match="notweights|pickle|load"):
        load_speech_weights(speech(), str(tmp_path / "notweights.pt"))


HUB_SCRIPT = r"""
import json, sys, torch
from avemo.training.models.pretrained import SpeechEncoder, load_speech_weights, PretrainedWeightsUnavailable
torch.manual_seed(5)
enc = SpeechEncoder("wav2vec2_base", 1, 16)
try:
    line = load_speech_weights(enc, sys.argv[1])
except PretrainedWeightsUnavailable as e:
    print(json.dumps({"error": str(e)}))
else:
    sd = enc.speech.state_dict()
    print(json.dumps({"line": line, "sum": float(sum(v.double().sum() for v in sd.values()))}))
"""


def run_hub(source: str, cache: Path) -> dict:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run([sys.executable, "-c", HUB_SCRIPT, source], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_weights_come_through_the_hub_cache_and_a_missing_download_says_what_it_needed(tmp_path):
    """``--audio_pretrained default`` = transformers' from_pretrained of the hub id, read from the hub cache; a
    ``save_pretrained`` folder is the offline PATH. Run in subprocesses: the hub reads its cache path at import."""
    source = speech(layers=1, seed=7)
    folder = tmp_path / "w2v-folder"
    source.speech.save_pretrained(folder)
    want = float(sum(v.double().sum() for v in source.speech.state_dict().values()))
    got = run_hub(str(folder), tmp_path / "empty-cache")
    assert got["sum"] == pytest.approx(want, rel=1e-9, abs=1e-6)
    # nothing in the cache, no network: the message names the hub id, its URL, the cache and the way out
    err = run_hub("default", tmp_path / "empty-cache")["error"]
    for part in ("facebook/wav2vec2-base", "https://huggingface.co/facebook/wav2vec2-base",
                 str(tmp_path / "empty-cache"), "--audio_pretrained DIR", "--audio_pretrained none"):  # fmt: skip
        assert part in err, (part, err)
    # the same folder put in the hub cache's layout: "default" finds it there, offline
    snap = tmp_path / "cache" / "models--facebook--wav2vec2-base" / "snapshots" / ("0" * 40)
    snap.parent.mkdir(parents=True)
    folder.rename(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    got = run_hub("default", tmp_path / "cache")
    assert got["sum"] == pytest.approx(want, rel=1e-9, abs=1e-6) and "facebook/wav2vec2-base" in got["line"]


def test_imagenet_weights_come_from_torch_hub_cache_or_a_file(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(url, *a, **k):  # what an offline machine gives
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = resnet18(weights=None)
    net.fc = torch.nn.Identity()
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        load_resnet18_weights(net, "imagenet")
    msg = str(err.value)
    assert ResNet18_Weights.DEFAULT.url in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "--video_pretrained FILE" in msg and "--video_pretrained none" in msg
    # the file torchvision would have downloaded, put in its cache: torchvision's own loader reads it
    torch.manual_seed(3)
    weights = resnet18(weights=None).state_dict()  # with fc: ignored by the trunk
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(weights, tmp_path / "hub" / "checkpoints" / Path(ResNet18_Weights.DEFAULT.url).name)
    line = load_resnet18_weights(net, "imagenet")
    assert "ResNet18_Weights.IMAGENET1K_V1" in line
    assert torch.equal(net.conv1.weight, weights["conv1.weight"]) and torch.equal(
        net.layer4[1].bn2.running_var, weights["layer4.1.bn2.running_var"]
    )
    # a local file (PATH)
    torch.manual_seed(4)
    other = resnet18(weights=None).state_dict()
    torch.save(other, tmp_path / "r18.pt")
    load_resnet18_weights(net, str(tmp_path / "r18.pt"))
    assert torch.equal(net.layer1[0].conv1.weight, other["layer1.0.conv1.weight"])


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(audio_pretrained="/some/file.pt"), "cnn audio encoder has no pretrained weights"),
        (dict(audio_layers=4), "--audio_layers applies to the speech encoders"),
        (dict(video_pretrained="/some/file.pt"), "the cnn video encoder has none"),
        (dict(audio_encoder="whisper"), "--audio_encoder must be one of"),
    ],
)
def test_weight_sources_that_cannot_apply_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        check_sources(ModelConfig(**fields))


def test_training_options_that_cannot_work_are_refused(tmp_path):
    from avemo.training.train.config import TrainConfig, check_config

    speech_cfg = ModelConfig(audio_encoder="hubert_base", spec_augment=True)
    with pytest.raises(ValueError, match="--spec_augment masks the log-mel"):
        check_config(TrainConfig(data_root=str(tmp_path), model=speech_cfg))
    with pytest.raises(ValueError, match="--unfreeze_after needs --freeze_encoders"):
        check_config(TrainConfig(data_root=str(tmp_path), unfreeze_after=2))


def test_optimizer_gives_pretrained_trunks_their_own_learning_rate(geo):
    from avemo.training.models.model import build_model
    from avemo.training.train.config import TrainConfig
    from avemo.training.train.frozen import trunk_parameter_ids
    from avemo.training.train.loop import make_optimizer

    cfg = ModelConfig(audio_encoder="wavlm_base_plus", audio_layers=1, video_encoder="resnet18", embed_dim=16)
    model = build_model(cfg, geo)
    trunk = trunk_parameter_ids(model)
    speech_ids = {id(p) for p in model.encoders["audio"].speech.parameters()}
    resnet_ids = {id(p) for p in model.encoders["video"].net.parameters()}
    assert trunk == speech_ids | resnet_ids
    for scope, groups in (("all", 2), ("matrices", 4)):
        opt = make_optimizer(model, TrainConfig(lr=1e-3, encoder_lr=2e-5, weight_decay_scope=scope))
        assert len(opt.param_groups) == groups and opt.param_groups[0]["lr"] == 1e-3
        for g in opt.param_groups:
            ids = {id(p) for p in g["params"]}
            assert ids <= trunk if g["lr"] == 2e-5 else not ids & trunk
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_cached_features_are_what_the_frozen_encoder_computes(tiny_corpus, tmp_path):
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.training.data.prepare import prepare_data
    from avemo.training.models.model import build_model
    from avemo.training.train.frozen import FrozenFeatureDataset, features_given

    datasets, _ = prepare_data(tiny_corpus, tmp_path / "cache", DEFAULT_GEOMETRY, progress=False)
    cfg = ModelConfig(audio_encoder="hubert_base", audio_layers=1, video_encoder="resnet18", embed_dim=16)
    model = build_model(cfg, DEFAULT_GEOMETRY).eval()
    ds = FrozenFeatureDataset(datasets["val"], model, {"audio": "audio", "frames": "video"}, batch_size=4)
    assert len(ds) == len(datasets["val"]) and ds.labels == datasets["val"].labels
    raw, cached = datasets["val"][1], ds[1]
    with torch.no_grad():
        want_a = model.encoders["audio"].features(raw["audio"][None])[0]
        want_v = model.encoders["video"].features(raw["frames"][None])[0]
    assert cached["audio"].shape == (768, 99) and cached["frames"].shape == (512, 16)
    assert torch.allclose(cached["audio"], want_a, atol=2e-2 * want_a.abs().max().item())  # float16 storage
    assert torch.allclose(cached["frames"], want_v, atol=2e-2 * want_v.abs().max().item() + 1e-3)
    # the model on cached features answers what it answers on the raw window
    batch = [torch.stack([cached["audio"]]), torch.stack([cached["frames"]]), cached["mask"][None]]
    with torch.no_grad(), features_given(model, ["audio", "video"]):
        from_cache = torch.softmax(model(*batch)["logits"], -1)
    with torch.no_grad():
        from_raw = torch.softmax(model(raw["audio"][None], raw["frames"][None], raw["mask"][None])["logits"], -1)
    assert torch.allclose(from_cache, from_raw, atol=1e-2)
    assert not model.encoders["audio"].features_given  # the switch is off outside the block


# ------------------------------------------------------------------------ train, resume, export, serve
@pytest.mark.slow
def test_frozen_speech_encoder_trains_resumes_exports_and_serves(
    tiny_corpus, tmp_path, capsys, launch_triton, served_model_name
):
    """wav2vec2 (2 layers, weights from a local file) + ResNet18: frozen, features cached; a second run
    unfreezes the speech transformer after epoch 1 with the front end kept frozen; the frozen run resumes,
    exports in every format with parity on a batch it was not traced with, and the Python flavour answers in
    the real Triton what onnxruntime answers in process."""
    from dataclasses import replace

    from avemo.export.pipeline import export_checkpoint
    from avemo.training.models.checkpoint import load_checkpoint
    from avemo.training.train.config import TrainConfig
    from avemo.training.train.loop import train

    weights = speech(layers=2, seed=11).speech.state_dict()
    torch.save(weights, tmp_path / "w2v.pt")
    model_cfg = ModelConfig(
        fusion="gated",
        audio_encoder="wav2vec2_base",
        audio_layers=2,
        audio_pretrained=str(tmp_path / "w2v.pt"),
        video_encoder="resnet18",
        video_pretrained="none",
        embed_dim=16,
    )
    base = TrainConfig(
        data_root=str(tiny_corpus),
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "frozen"),
        epochs=1,
        batch_size=8,
        progress=False,
        freeze_encoders=True,
        model=model_cfg,
        use_cosine_annealing=False,
    )  # fmt: skip  (a cosine schedule of 1 epoch ends at lr 0)
    first = train(base)
    log = capsys.readouterr().out
    assert "pretrained wav2vec2_base: " in log and "cached frozen audio, video features" in log
    ckpt = load_checkpoint(tmp_path / "frozen" / "best.pt")
    sd = ckpt["state_dict"]
    for k, v in weights.items():  # the frozen trunk is exactly the file's weights
        assert torch.equal(sd[f"encoders.audio.speech.{k}"], v), k
    assert first["epochs_run"] == 1
    resumed = train(replace(base, epochs=2, resume=True))
    assert resumed["epochs_run"] == 2 and "pretrained wav2vec2_base" not in capsys.readouterr().out
    last = load_checkpoint(tmp_path / "frozen" / "last.pt")["state_dict"]
    assert all(torch.equal(last[f"encoders.audio.speech.{k}"], v) for k, v in weights.items())
    assert not torch.equal(last["encoders.audio.proj.weight"], sd["encoders.audio.proj.weight"])  # heads trained

    # unfreeze after epoch 1: the transformer moves at --encoder_lr, the convolutional front end does not
    train(replace(base, out_dir=str(tmp_path / "unfrozen"), epochs=2, unfreeze_after=2, encoder_lr=1e-3))
    assert "epoch 2: pretrained encoders unfrozen" in capsys.readouterr().out
    sd2 = load_checkpoint(tmp_path / "unfrozen" / "last.pt")["state_dict"]
    layer = "encoder.layers.0.attention.k_proj.weight"
    assert not torch.equal(sd2[f"encoders.audio.speech.{layer}"], weights[layer])
    front = [k for k in weights if k.startswith("feature_extractor.")]
    assert front and all(torch.equal(sd2[f"encoders.audio.speech.{k}"], weights[k]) for k in front)

    # export every format; parity is checked on batch 3 against the trace's batch 2
    repo = tmp_path / "repo"
    flavours = ("python", "onnxruntime", "libtorch")
    report = export_checkpoint(tmp_path / "frozen" / "best.pt", repo, served_model_name, backends=flavours)
    assert {"onnx/probs", "torchscript/probs"} <= set(report.max_abs_diff)
    assert max(report.max_abs_diff.values()) <= report.atol and report.onnx_exporter == "dynamo"
    import onnxruntime as ort

    from avemo.client.grpc_client import EmotionClient
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.export.onnx_export import example_inputs

    audio, frames, mask = (t.numpy() for t in example_inputs(DEFAULT_GEOMETRY, 3, seed=4))
    sess = ort.InferenceSession(report.onnx_path, providers=["CPUExecutionProvider"])
    local, _ = sess.run(None, {"audio": audio, "frames": frames, "modality_mask": mask})
    server = launch_triton(repo)
    with EmotionClient(server.url, served_model_name) as client:
        for i in range(3):
            probs, _ = client.infer(audio[i], frames[i], mask[i])
            np.testing.assert_allclose(probs[0], local[i], atol=1e-5)
    server.stop()


def test_the_legacy_exporter_takes_over_where_dynamo_fails(geo, tmp_path, monkeypatch, tiny_dims):
    from avemo.export import onnx_export
    from avemo.training.models.model import ExportWrapper, build_model

    wrapper = ExportWrapper(build_model(ModelConfig(fusion="gated", **tiny_dims), geo))

    def dynamo_fails(*a, **k):
        raise RuntimeError("Failed to export the model with torch.export.\nmore detail")

    monkeypatch.setattr(onnx_export, "to_onnx", dynamo_fails)
    path, used = onnx_export.to_onnx_with_fallback(wrapper, geo, tmp_path / "m.onnx")
    assert used == "legacy (dynamo failed: RuntimeError: Failed to export the model with torch.export.)"
    diffs = onnx_export.parity(wrapper, path, geo, batch=3, seed=1)  # another batch size than the trace
    assert max(diffs.values()) <= onnx_export.PARITY_ATOL
    import onnx

    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == ["audio", "frames", "modality_mask"]


@pytest.mark.slow
def test_encoder_benchmark_prints_every_figure_for_each_pair(repo_root, tmp_path, triton_runtime):
    """``benchmarks/serving.py --audio_encoder ... --video_encoder ...``: one row per pair, in process, through
    the embedded Triton and through ``avemo predict`` (fast and paced), int8 parity within its tolerance."""
    out = tmp_path / "enc.json"
    argv = [sys.executable, str(repo_root / "benchmarks" / "serving.py"), "--audio_encoder", "cnn,wavlm_base_plus",
            "--audio_layers", "1", "--video_encoder", "cnn", "--quick", "--int8", "--json", str(out)]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["pair"] for r in rows] == ["cnn+cnn", "wavlm_base_plus:1+cnn"]
    for r in rows:
        assert r["exporter"] == "dynamo" and r["parity"] <= 1e-4
        assert r["ort_p50_ms"] > 0 and r["triton_c1_p50_ms"] > 0 and 0 < r["rtf"]
        assert r["live_windows"] >= 6 and r["live_shed"] + r["live_late"] <= r["live_windows"]
        assert r["int8_within_atol"] and r["int8_max_abs_diff"] <= 0.05
    assert rows[1]["parameters_m"] > 10 * rows[0]["parameters_m"]  # the speech transformer is there
    table = run.stdout
    assert "| cnn+cnn |" in table and "| wavlm_base_plus:1+cnn |" in table and "RTF" in table


def test_train_without_the_weights_ends_with_the_message_not_a_traceback(tiny_corpus, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "avemo.cli", "train", "--data_root", str(tiny_corpus), "--cache_dir",
            str(tmp_path / "cache"), "--out_dir", str(tmp_path / "run"), "--epochs", "1", "--no_progress",
            "--audio_encoder", "hubert_base", "--audio_layers", "1", "--video_encoder", "resnet18",
            "--video_pretrained", "none"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "avemo: could not load the hubert_base weights" in run.stderr
    assert "https://huggingface.co/facebook/hubert-base-ls960" in run.stderr and str(tmp_path / "empty") in run.stderr
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.slow
def test_unfreezing_under_ddp_keeps_every_rank_on_the_same_weights(tiny_corpus, tmp_path):
    """DDP hooks only the parameters that wanted gradients when it was built: unfreezing the speech transformer
    rebuilds it, else the ranks' trunks drift apart (weights_spread > 0; measured 5.9 without the rebuild)."""
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "avemo.cli",
            "train", "--data_root", str(tiny_corpus), "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(out),
            "--fusion", "gated", "--tiny", "--epochs", "2", "--batch_size", "4", "--device", "cpu", "--no_progress",
            "--no-tensorboard", "--json", "--audio_encoder", "wav2vec2_base", "--audio_layers", "1",
            "--audio_pretrained", "none", "--freeze_encoders", "--unfreeze_after", "2",
            "--encoder_lr", "1e-3"]  # fmt: skip
    run = subprocess.run(argv, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "epoch 2: pretrained encoders unfrozen" in run.stderr + run.stdout
    assert json.loads(run.stdout)["ddp"] == {"world_size": 2, "backend": "gloo", "weights_spread": 0.0}
