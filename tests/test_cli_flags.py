"""`avemo` training CLIs built from the config dataclasses: defaults, aliases, help and refused flags (no training)."""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

import pytest

from avemo.cli import build_parser, main
from avemo.contract.options import UsageError, add_fields, add_option, config_from_args, default_text, given, is_option
from avemo.training.cli import (
    compare_config_from_args,
    evaluate_config_from_args,
    train_config_from_args,
)
from avemo.training.losses.total import LossWeights
from avemo.training.models.config import ModelConfig
from avemo.training.train.config import TrainConfig, check_config


def parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser(command).parse_args([command, *argv])


def train_cfg(*argv: str) -> TrainConfig:
    return train_config_from_args(parse("train", *argv))


# ---------------------------------------------------------------- defaults
def test_no_flags_equal_the_dataclass_defaults():
    assert train_cfg() == TrainConfig(out_dir="runs/gated", losses=LossWeights().to_dict())
    assert train_cfg("--fusion", "late").out_dir == "runs/late"  # out_dir follows the fusion unless given
    assert train_cfg("--fusion", "late", "--out_dir", "x").out_dir == "x"
    # compare takes every train option (loss weights too), so its base config spells the loss weights out
    assert compare_config_from_args(parse("compare")) == TrainConfig(losses=LossWeights().to_dict())
    assert evaluate_config_from_args(parse("evaluate", "best.pt")) == TrainConfig()
    args = parse("cache")
    assert config_from_args(TrainConfig, args) == TrainConfig() and args.jobs == 2


def test_parser_defaults_are_the_field_defaults():
    args = parse("train")
    for cls in (TrainConfig, ModelConfig, LossWeights):
        for f in dataclasses.fields(cls):
            if is_option(f):
                assert getattr(args, f.name) == getattr(cls(), f.name), (cls.__name__, f.name)


def _help(command: str) -> str:
    return " ".join(build_parser(command).commands[command].format_help().split())  # undo line wrapping


def test_help_shows_the_dataclass_defaults():
    text = _help("train")
    for cls in (TrainConfig, ModelConfig, LossWeights):
        for f in dataclasses.fields(cls):
            value = getattr(cls(), f.name)
            if not is_option(f) or f.metadata.get("hidden") or f.metadata.get("negate"):
                continue
            if isinstance(value, bool) and not value:  # a plain --flag: no default shown
                continue
            shown = f.metadata.get("default_text") or default_text(value)
            assert f"{f.metadata['help']} (default: {shown})" in text, f.name
    assert "(default: runs/<fusion>)" in text and "--max_train_batches" not in text and "--tiny" not in text
    assert "(default: 0.002)" in _help("compare") and "(default: auto)" in _help("cache")


def test_help_and_default_follow_the_field():
    @dataclasses.dataclass
    class Demo:
        rate: float = dataclasses.field(default=0.25, metadata={"help": "a rate", "flag": "rate_x"})
        on: bool = dataclasses.field(default=True, metadata={"help": "switch"})
        internal: int = 3

    p = argparse.ArgumentParser(prog="demo")
    assert add_fields(p, Demo) == ["rate", "on"]
    text = " ".join(p.format_help().split())
    assert "a rate (default: 0.25)" in text and "switch (default: on)" in text and "internal" not in text
    assert config_from_args(Demo, p.parse_args([])) == Demo()
    args = p.parse_args(["--rate-x", "0.5", "--no-on"])
    assert config_from_args(Demo, args) == Demo(rate=0.5, on=False)
    assert given(args) == {"rate": "--rate-x", "on": "--no-on"}


def test_add_option_aliases_and_given():
    p = argparse.ArgumentParser()
    add_option(p, "data_root", "root", default="a")
    add_option(p, "flag_x", action="store_true")
    add_option(p, "keep", action=argparse.BooleanOptionalAction, default=True)
    for spelling in ("--data_root", "--data-root", "--root"):
        args = p.parse_args([spelling, "b"])
        assert args.data_root == "b" and given(args) == {"data_root": spelling}
    args = p.parse_args(["--flag-x", "--no-keep"])
    assert args.flag_x is True and args.keep is False and set(given(args)) == {"flag_x", "keep"}
    assert given(p.parse_args([])) == {}


# ---------------------------------------------------------------- aliases
@pytest.mark.parametrize(
    "a, b",
    [
        (["--data_root", "d", "--cache_dir", "c"], ["--data-root", "d", "--cache-dir", "c"]),
        (["--no-class_weight"], ["--no-class-weight"]),
        (["--no-use_cosine_annealing"], ["--no-use-cosine-annealing"]),
        (
            ["--cl_loss_weight", "0.5", "--contrastive_proj_dim", "8"],
            ["--contrastive-weight", "0.5", "--contrastive-proj-dim", "8"],
        ),
        (["--focal_gamma", "2", "--label_smoothing", "0.1"], ["--focal-gamma", "2", "--label-smoothing", "0.1"]),
        (["--face_crop", "haar", "--no_progress"], ["--face-crop", "haar", "--no-progress"]),
        (["--channels_last", "off", "--batch_size", "4"], ["--channels-last", "off", "--batch-size", "4"]),
        (
            ["--loss_weighting", "inverse_ema", "--loss_weighting_momentum", "0.5"],
            ["--loss-weighting", "inverse_ema", "--loss-weighting-momentum", "0.5"],
        ),
    ],
)
def test_dashed_aliases_give_the_same_config(a, b):
    assert train_cfg(*a) == train_cfg(*b) != train_cfg()


def test_loss_flags_reach_the_config():
    cfg = train_cfg(
        "--fusion", "hierarchical", "--focal-gamma", "2", "--no-class_weight", "--use_smooth_l1",
        "--encoder_loss_weight", "0.1", "--gate_reg_weight", "0.02", "--variational", "--kl_weight", "0.1",
        "--focal_alpha", "1,2,3,4,5,6,7,8", "--loss_weighting", "log_norm", "--aux_weight", "0.2",
    )  # fmt: skip
    w = LossWeights.from_dict(cfg.losses)
    assert (w.focal_gamma, w.use_class_weight, w.use_smooth_l1, w.kl, w.reconstruction, w.gate_reg, w.aux) == (
        2.0, False, True, 0.1, 0.1, 0.02, 0.2,
    )  # fmt: skip
    assert w.focal_alpha == tuple(float(i) for i in range(1, 9)) and cfg.loss_weighting == "log_norm"
    assert cfg.model.fusion == "hierarchical" and cfg.model.variational


def test_delta_nce_wins_over_the_contrastive_weight_in_any_order():
    on = ("--contrastive_proj_dim", "16")
    for argv in (
        ["--contrastive_weight", "0.5", "--delta_nce", "0.7"],
        ["--delta_nce", "0.7", "--cl_loss_weight", "0.5"],
    ):
        assert train_cfg(*on, *argv).losses["contrastive"] == 0.7
    assert train_cfg(*on, "--cl_loss_weight", "0.5").losses["contrastive"] == 0.5


def test_tiny_and_hidden_flags():
    cfg = train_cfg("--tiny", "--max_train_batches", "2")
    assert cfg.model.embed_dim == 32 and cfg.max_train_batches == 2


# ---------------------------------------------------------------- refused flags
REFUSED = [
    (["--gate_alpha", "0.3"], "--gate_alpha only applies to --fusion gated_uncertainty (got gated)"),
    (["--fold", "1"], "--fold only applies to --split_mode kfold (got actor)"),
    (["--folds", "3", "--split_mode", "stratified"], "--folds only applies to --split_mode kfold (got stratified)"),
    (["--contrastive_weight", "0.2"], "--contrastive_weight needs --contrastive_proj_dim > 0"),
    (["--cl-loss-weight", "0.2"], "--cl-loss-weight needs --contrastive_proj_dim > 0"),
    (["--delta_nce", "0.2"], "--delta_nce needs --contrastive_proj_dim > 0"),
    (["--contrastive_temperature", "0.1"], "--contrastive_temperature needs --contrastive_proj_dim > 0"),
    (["--fusion", "audio", "--contrastive_proj_dim", "8"], "--contrastive_proj_dim needs two or more modalities"),
    (["--fusion", "video", "--contrastive_proj_dim", "8", "--cl_loss_weight", "1"], "needs two or more modalities"),
    (["--fusion", "audio", "--aux_weight", "0.5"], "--aux_weight weights the unimodal auxiliary heads"),
    (["--encoder_loss_weight", "0.1"], "--encoder_loss_weight only applies to --fusion hierarchical"),
    (["--use_smooth_l1", "--fusion", "gated_uncertainty"], "--use_smooth_l1 only applies to --fusion hierarchical"),
    (["--gate_reg_weight", "0.1"], "--gate_reg_weight only applies to --fusion hierarchical or gated_uncertainty"),
    (["--kl_weight", "0.1"], "--kl_weight needs variational encoders"),
    (["--kl_weight", "0"], "--kl_weight needs variational encoders"),
    (["--teacher_audio", "a.pt"], "--teacher_audio needs --delta_va > 0"),
    (["--teacher_video", "v.pt", "--delta_va", "0"], "--teacher_video needs --delta_va > 0"),
    (["--delta_va", "0.5"], "--delta_va needs a teacher"),
    (["--fusion", "audio", "--teacher_audio", "a.pt", "--delta_va", "1"], "--teacher_audio distils into the unimodal"),
    (["--focal_alpha", "1,2,3"], "--focal_alpha needs one value per class: 8 for --num_classes 8 (got 3)"),
    (["--num_classes", "4", "--focal_alpha", "1,1,1,1,1,1,1,1"], "--focal_alpha needs one value per class: 4"),
    (["--loss_weighting_momentum", "0.5"], "--loss_weighting_momentum only applies to --loss_weighting inverse_ema"),
    (["--loss_weighting_every", "5"], "--loss_weighting_every only applies to --loss_weighting grad_balance"),
    (["--split_mode", "kfold", "--fold", "5"], "--fold must be in 0..4"),
]


@pytest.mark.parametrize("argv, message", REFUSED)
def test_refused_flags_name_the_flag(argv, message):
    with pytest.raises(UsageError) as e:
        train_cfg(*argv)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--fusion", "gated_uncertainty", "--gate_alpha", "0.3", "--gate_reg_weight", "0.1", "--kl_weight", "0.1"],
        ["--fusion", "hierarchical", "--encoder_loss_weight", "0.1", "--use_smooth_l1", "--gate_reg_weight", "0"],
        ["--split_mode", "kfold", "--fold", "4", "--folds", "5"],
        ["--contrastive_proj_dim", "8", "--cl_loss_weight", "0.3", "--contrastive_temperature", "0.1"],
        ["--teacher_audio", "a.pt", "--teacher_video", "v.pt", "--delta_va", "0.5"],
        ["--variational", "--kl_weight", "0.01", "--focal_alpha", "1,1,1,1,1,1,1,2"],
        ["--loss_weighting", "grad_balance", "--loss_weighting_every", "5"],
        ["--fusion", "audio"],  # non-zero loss defaults that do not apply are never refused
    ],
)
def test_flags_that_apply_are_accepted(argv):
    train_cfg(*argv)


def test_usage_error_reads_like_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--fusion", "gated", "--gate_alpha", "0.3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: avemo train" in err
    assert "avemo train: error: --gate_alpha only applies to --fusion gated_uncertainty (got gated)" in err


def test_evaluate_and_compare_refuse_fold_outside_kfold():
    with pytest.raises(UsageError, match="--folds only applies to --split_mode kfold"):
        evaluate_config_from_args(parse("evaluate", "best.pt", "--folds", "3"))
    # compare's --folds K runs all K folds (it sets fold / folds itself) and refuses another split mode
    args = parse("compare", "--folds", "3")
    assert args.cv_folds == 3 and compare_config_from_args(args).folds == TrainConfig().folds
    with pytest.raises(UsageError, match="--split_mode does not apply with --folds"):
        compare_config_from_args(parse("compare", "--folds", "3", "--split-mode", "kfold"))
    with pytest.raises(UsageError, match="--folds must be 0 .off. or at least 2"):  # argparse reads --fold as --folds
        compare_config_from_args(parse("compare", "--fold", "1"))


def test_check_config_values_and_train_refuses_before_work(tmp_path):
    check_config(TrainConfig())
    bad = TrainConfig(out_dir=str(tmp_path / "run"), teacher_audio="a.pt")
    with pytest.raises(ValueError, match="--teacher_audio needs --delta_va > 0"):
        check_config(bad)
    with pytest.raises(ValueError, match="--kl_weight needs variational"):
        check_config(TrainConfig(losses={"kl": 0.1}))
    check_config(TrainConfig(losses={"kl": 0.1}, model=ModelConfig(fusion="uncertainty")))
    with pytest.raises(ValueError, match="--face_crop must be one of"):
        check_config(TrainConfig(face_crop="nose"))
    from avemo.training.train.loop import train

    with pytest.raises(ValueError, match="--teacher_audio"):
        train(bad)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- corpus and cache
def test_corpus_flags_reach_generate_corpus(monkeypatch, tmp_path, capsys):
    import avemo.training.synthetic.corpus as corpus

    seen = {}
    monkeypatch.setattr(corpus, "generate_corpus", lambda root, **kw: seen.update(kw, root=root) or [])
    argv = ["corpus", "--root", str(tmp_path), "--emotions", "1", "5", "--no_progress", "--actors", "2"]
    assert main(argv) == 0
    assert seen["emotions"] == [1, 5] and seen["progress"] is False and seen["n_actors"] == 2
    assert seen["root"] == tmp_path and seen["jobs"] == 2 and seen["overwrite"] is False
    assert seen["repetitions"] == (1,)  # the default corpus: one repetition
    main(argv + ["--repetitions", "1", "2"])
    assert seen["repetitions"] == (1, 2)
    with pytest.raises(SystemExit):
        parse("corpus", "--emotions", "9")


def test_face_crop_reaches_the_cache(monkeypatch, tmp_path):
    import avemo.training.data.cache as cache
    import avemo.training.data.prepare as prepare
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.training.data import ravdess

    seen = []

    class Stop(Exception):
        pass

    def fake_build_cache(sources, cache_dir, geometry, *, face_crop="auto", **kw):
        seen.append(face_crop)
        raise Stop

    item = SimpleNamespace(path=tmp_path / "a.mp4")
    monkeypatch.setattr(ravdess, "scan", lambda *a, **kw: ([item], []))
    monkeypatch.setattr(ravdess, "make_splits", lambda *a, **kw: {"train": [], "val": [], "test": []})
    monkeypatch.setattr(ravdess, "check_no_leak", lambda splits: None)
    monkeypatch.setattr(prepare, "build_cache", fake_build_cache)
    monkeypatch.setattr(cache, "build_cache", fake_build_cache)
    with pytest.raises(Stop):
        prepare.prepare_data(tmp_path, tmp_path, DEFAULT_GEOMETRY, face_crop="center", progress=False)
    with pytest.raises(Stop):
        main(["cache", "--data_root", str(tmp_path), "--face-crop", "haar", "--no_progress"])
    assert seen == ["center", "haar"]
    assert train_cfg("--face_crop", "center").face_crop == "center"


def test_build_cache_refuses_an_unknown_face_crop(tmp_path):
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.training.data.cache import build_cache

    with pytest.raises(ValueError, match="face_crop"):
        build_cache([], tmp_path, DEFAULT_GEOMETRY, face_crop="nose")


def test_demo_trains_the_fusion_model_for_its_own_epochs(monkeypatch):
    """`avemo demo`: the baselines train --epochs, the fusion model --fusion-epochs (its default is the larger)."""
    import argparse as ap

    from avemo import demo
    from avemo.training.train import compare

    p = ap.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args([])
    assert (args.epochs, args.fusion_epochs) == (12, 16)
    seen = {}

    def fake_train_or_reuse(cfg, retrain=False, tag=None):
        seen[cfg.model.fusion] = (cfg.epochs, cfg.out_dir)
        return {"fusion": cfg.model.fusion}, False

    monkeypatch.setattr(compare, "train_or_reuse", fake_train_or_reuse)
    args = p.parse_args(["--epochs", "3", "--fusion-epochs", "5", "--runs", "r"])
    for fusion in ("audio", "video", "gated", "xattn"):
        assert demo.train_or_reuse(fusion, args) == {"fusion": fusion}
    assert seen == {"audio": (3, "r/audio"), "video": (3, "r/video"), "gated": (5, "r/gated"), "xattn": (5, "r/xattn")}
