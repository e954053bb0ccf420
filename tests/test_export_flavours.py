"""Production serving export: conv front end (no STFT/DFT), TorchScript, three Triton flavours whose
configs pass Triton's own schema, versions, warm-up, and a graph that never returns a non-finite output."""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import pytest
import torch

from avemo.contract import tensors
from avemo.export import cli as export_cli
from avemo.export import onnx_export, pipeline
from avemo.export.config_check import ConfigError, check_model_dir, parse_config
from avemo.export.torchscript_export import load_torchscript
from avemo.export.triton_config import parse_version_policy, warmup_samples
from avemo.training.models.checkpoint import atomic_torch_save, make_checkpoint, model_from_checkpoint
from avemo.training.models.config import ModelConfig
from avemo.training.models.frontend import STFT_PARITY_ATOL, LogMel
from avemo.training.models.model import ExportWrapper, build_model

ATOL = 1e-4  # exported (ONNX, TorchScript) vs eager, probabilities and modality weights
LABELS = [f"c{i}" for i in range(6)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, geo, tiny_dims):
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="gated", num_classes=len(LABELS), **tiny_dims)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    atomic_torch_save(make_checkpoint(build_model(cfg, geo).eval(), cfg, LABELS, geo), path)
    return path


@pytest.fixture(scope="module")
def repo_all(tmp_path_factory, checkpoint):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    report = pipeline.export_checkpoint(checkpoint, repo, "emo", backends=list(pipeline.BACKENDS), device="gpu")
    return repo, report


def _run_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    export_cli.add_arguments(p)
    return export_cli.run(p.parse_args(["--model-name", "emo", *argv]))


# ------------------------------------------------------------------------------------- front end


def test_conv_front_end_equals_torch_stft_and_keeps_checkpoints_loadable():
    lm = LogMel(16000, 400, 160, 64, -6.0, 4.0)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(24000) / 16000
    cases = {
        "noise": 0.3 * torch.randn(3, 24000, generator=g),
        "tone": 0.5 * torch.sin(2 * torch.pi * 440 * t)[None],
        "half silence": torch.cat([torch.zeros(1, 12000), 0.1 * torch.randn(1, 12000, generator=g)], 1),
    }
    for name, audio in cases.items():
        diff = (lm.log_mel(audio) - lm.log_mel_stft(audio)).abs().max().item()
        assert diff <= STFT_PARITY_ATOL, f"{name}: conv DFT log-mel differs from torch.stft by {diff}"
    # no learned or stored front-end tensors beyond the normalisation: old checkpoints load unchanged
    assert list(lm.state_dict()) == ["norm"]


def test_exported_graphs_hold_no_stft_or_dft(repo_all, geo, tiny_dims, tmp_path):
    repo, report = repo_all
    assert not {"STFT", "DFT"} & onnx_export.graph_op_types(repo / "emo" / "1" / "model.onnx")
    assert "Conv" in onnx_export.graph_op_types(repo / "emo_onnx" / "1" / "model.onnx")
    wrapper = ExportWrapper(build_model(ModelConfig(fusion="audio", **tiny_dims), geo)).eval()
    path = onnx_export.to_onnx(wrapper, geo, tmp_path / "audio.onnx")
    assert not {"STFT", "DFT"} & onnx_export.graph_op_types(path)


def test_forbidden_op_check_can_fail(geo, tiny_dims, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "FORBIDDEN_OPS", ("Conv",))  # every graph here has a Conv
    wrapper = ExportWrapper(build_model(ModelConfig(fusion="audio", **tiny_dims), geo)).eval()
    with pytest.raises(onnx_export.ParityError, match="Conv"):
        onnx_export.to_onnx(wrapper, geo, tmp_path / "audio.onnx")


# ------------------------------------------------------------------------------------ TorchScript


def test_torchscript_matches_eager_on_another_shape(repo_all, checkpoint, geo):
    repo, report = repo_all
    assert report.formats == ["onnx", "torchscript"]
    assert all(v <= ATOL for k, v in report.max_abs_diff.items()), report.max_abs_diff
    assert {k.split("/")[0] for k in report.max_abs_diff} == {"onnx", "torchscript"}
    model, _ = model_from_checkpoint(checkpoint)
    audio, frames, mask = onnx_export.example_inputs(geo, 5, seed=11)  # traced with batch 2
    mask[4] = torch.tensor([0.0, 1.0])
    scripted = load_torchscript(repo / "emo_libtorch" / "1" / "model.pt")
    with torch.no_grad():
        eager = ExportWrapper(model)(audio, frames, mask)
        got = scripted(audio, frames, mask)
    for a, b in zip(got, eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=ATOL)


def test_export_cli_exits_1_when_torchscript_disagrees(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "torchscript_parity", lambda *a, **k: {"probs": 0.3, "modality_weights": 0.0})
    rc = _run_export([str(checkpoint), "--model-repository", str(tmp_path / "r"), "--backend", "libtorch"])
    err = capsys.readouterr().err
    assert rc == 1 and "torchscript/probs" in err and "atol" in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "libtorch", "--format", "onnx"], "leaves out"),
        (["--backend", "tensorflow"], "unknown backend"),
        (["--tensorrt"], "onnxruntime flavour"),
        (["--version-policy", "newest:2"], "version policy"),
    ],
)
def test_export_cli_refuses_inconsistent_options(checkpoint, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) if "tensorflow" in argv else _nullcontext():
        rc = _run_export([str(checkpoint), "--model-repository", str(tmp_path / "r"), *argv])
        assert rc in (1, 2)
    assert message in capsys.readouterr().err


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------ flavours + schema


def test_backend_all_writes_three_flavours_that_pass_the_schema(repo_all, geo):
    from tritonclient.grpc import model_config_pb2 as mc

    repo, report = repo_all
    assert sorted(p.name for p in repo.iterdir()) == ["emo", "emo_libtorch", "emo_onnx"]
    expected = {"emo": ("python", "model.onnx"), "emo_onnx": ("onnxruntime", "model.onnx")}
    expected["emo_libtorch"] = ("pytorch_libtorch", "model.pt")
    for name, (backend, filename) in expected.items():
        cfg = check_model_dir(repo / name, geo)
        assert cfg.backend == backend and (repo / name / "1" / filename).is_file()
        assert (repo / name / "labels.txt").read_text().split() == LABELS
        kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}
        assert kinds == ({"KIND_CPU"} if backend == "python" else {"KIND_GPU"})
        assert [w.batch_size for w in cfg.model_warmup] == [1, 8]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 0  # a lone request does not wait
        assert cfg.version_policy.latest.num_versions == 1
    assert (repo / "emo" / "1" / "model.py").is_file()
    assert [m.name for m in report.models] == ["emo", "emo_onnx", "emo_libtorch"]


def test_warmup_files_hold_one_realistic_window(repo_all, geo):
    repo, _ = repo_all
    samples = warmup_samples(geo)
    for name, arr in samples.items():
        raw = (repo / "emo_onnx" / "warmup" / name).read_bytes()
        assert np.array_equal(np.frombuffer(raw, dtype=arr.dtype).reshape(arr.shape), arr)
    assert np.abs(samples["audio"]).max() <= 1.0 and samples["frames"].std() > 0


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("dims: [ 2 ]", "dims: [ 3 ]", 1), "differ from the contract"),
        (lambda t: t.replace('name: "probs"', 'name: "prob"', 1), "outputs"),
        (lambda t: t.replace("max_batch_size: 32", "max_batch_size: 32\nmax_batch_sise: 4"), "ModelConfig"),
        (lambda t: t.replace("TYPE_UINT8", "TYPE_FP32", 1), "differ from the contract"),
    ],
)
def test_schema_check_catches_a_bad_config(repo_all, geo, tmp_path, edit, message):
    import shutil

    repo, _ = repo_all
    for name in ("emo_onnx", "emo_libtorch"):
        broken = tmp_path / name
        shutil.copytree(repo / name, broken)
        cfg = broken / "config.pbtxt"
        cfg.write_text(edit(cfg.read_text()))
        with pytest.raises(ConfigError, match=message):
            check_model_dir(broken, geo)


def _rename_graph_tensor(path, old: str, new: str) -> None:
    """Rename one graph input or output of the ONNX file at ``path`` (and every node edge that names it): a
    valid graph that binds other tensor names than the config next to it."""
    import onnx

    proto = onnx.load(str(path))
    g = proto.graph
    for value in [*g.input, *g.output, *g.value_info]:
        if value.name == old:
            value.name = new
    for node in g.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


@pytest.mark.parametrize(
    "old, new, side",
    [(tensors.MODALITY_MASK, "mask", "inputs"), (tensors.PROBS, "probabilities", "outputs")],
)
def test_schema_check_catches_a_graph_that_disagrees_with_its_config(repo_all, geo, tmp_path, old, new, side):
    import shutil

    repo, _ = repo_all
    broken = tmp_path / "emo_onnx"
    shutil.copytree(repo / "emo_onnx", broken)
    check_model_dir(broken, geo)  # the copy as exported: config and graph agree
    # the config is untouched (it still names the contract's tensors); only the graph binds another name
    _rename_graph_tensor(broken / "1" / "model.onnx", old, new)
    with pytest.raises(ConfigError, match=rf"model\.onnx {side} \[.*'{new}'.*\] do not match config\.pbtxt") as e:
        check_model_dir(broken, geo)
    problems = str(e.value).split("\n  - ")[1:]
    assert len(problems) == 1, problems  # the graph comparison, and nothing else, refused it
    assert parse_config((broken / "config.pbtxt").read_text()).name == "emo_onnx"
    (broken / "1" / "model.onnx").unlink()
    with pytest.raises(ConfigError, match="no model.onnx"):
        check_model_dir(broken, geo)


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # Triton's libtorch backend still loads this format
def test_schema_check_catches_a_torchscript_whose_arguments_disagree_with_its_config(repo_all, geo, tmp_path):
    """The libtorch backend binds inputs by ``forward``'s argument names: a model.pt taking ``mask`` where the
    config names ``modality_mask`` would not be served."""
    import shutil

    repo, _ = repo_all
    broken = tmp_path / "emo_libtorch"
    shutil.copytree(repo / "emo_libtorch", broken)
    check_model_dir(broken, geo)
    inner = load_torchscript(broken / "1" / "model.pt")

    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, audio: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor):
            return self.inner(audio, frames, mask)

    torch.jit.save(torch.jit.script(Renamed()), str(broken / "1" / "model.pt"))
    with pytest.raises(ConfigError, match=r"model\.pt inputs \[.*'mask'.*\] do not match config\.pbtxt") as e:
        check_model_dir(broken, geo)
    assert len(str(e.value).split("\n  - ")[1:]) == 1, str(e.value)


def test_versions_are_kept_and_the_policy_says_which_are_served(checkpoint, tmp_path, geo):
    repo = tmp_path / "repo"
    assert _run_export([str(checkpoint), "--model-repository", str(repo)]) == 0
    assert (
        _run_export(
            [str(checkpoint), "--model-repository", str(repo), "--version", "2", "--version-policy", "latest:2"]
        )
        == 0
    )
    assert sorted(p.name for p in (repo / "emo").iterdir() if p.name.isdigit()) == ["1", "2"]
    cfg = check_model_dir(repo / "emo", geo)
    assert cfg.version_policy.latest.num_versions == 2
    assert (repo / "emo" / "1" / "model.onnx").is_file() and (repo / "emo" / "2" / "model.py").is_file()
    assert parse_version_policy("specific:2,1") == "version_policy: { specific: { versions: [ 1, 2 ] } }"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging dirs left behind


def test_format_all_keeps_the_unserved_format_next_to_the_graph(checkpoint, tmp_path):
    repo = tmp_path / "repo"
    assert _run_export([str(checkpoint), "--model-repository", str(repo), "--format", "all"]) == 0
    assert sorted(p.name for p in (repo / "emo" / "1").iterdir()) == ["model.onnx", "model.pt", "model.py"]


# ------------------------------------------------------------------- absurd input, batch isolation


def _feeds(geo, batch=3):
    audio, frames, mask = onnx_export.example_inputs(geo, batch, seed=5)
    return audio, frames, torch.ones_like(mask)


def test_absurd_audio_never_gives_a_non_finite_output_and_rows_stay_isolated(repo_all, geo):
    repo, _ = repo_all
    sess = ort.InferenceSession(str(repo / "emo_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = load_torchscript(repo / "emo_libtorch" / "1" / "model.pt")

    def run_both(audio, frames, mask):
        feed = {"audio": audio.numpy(), "frames": frames.numpy(), "modality_mask": mask.numpy()}
        with torch.no_grad():
            ts = [t.numpy() for t in scripted(audio, frames, mask)]
        return sess.run([t.name for t in tensors.OUTPUTS], feed), ts

    audio, frames, mask = _feeds(geo)
    clean = run_both(audio, frames, mask)
    absurd = audio.clone()
    absurd[1] = 1e19  # finite, absurd
    absurd[2, ::7] = -3e38
    for outs in run_both(absurd, frames, mask):
        assert all(np.isfinite(o).all() for o in outs)
        np.testing.assert_allclose(outs[0].sum(-1), 1.0, atol=1e-5)
    for clean_outs, outs in zip(clean, run_both(absurd, frames, mask)):
        # row 0 is untouched by what rows 1 and 2 carry (the old `touch` term summed across the batch)
        np.testing.assert_array_equal(outs[0][0], clean_outs[0][0])
    poisoned = audio.clone()
    poisoned[1, 5] = float("nan")
    for outs in run_both(poisoned, frames, mask):
        assert all(np.isfinite(o).all() for o in outs)
