"""Unseen people: identity augmentation, `prepare_split`, fresh corpora, k-fold + fresh-corpus comparison tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avemo.training.data.dataset import augment, hue_rotation, identity_augment
from avemo.training.synthetic.fresh import FRESH_SEED_OFFSET, corpus_meta, fresh_corpora, fresh_seeds
from avemo.training.train.generalisation import markdown, mean_std, summarise


# ---------------------------------------------------------------- identity augmentation
def test_hue_rotation_keeps_grey_and_turns_a_third_into_a_channel_shift():
    assert np.allclose(hue_rotation(0.0), np.eye(3), atol=1e-6)
    grey = np.array([100.0, 100.0, 100.0])
    for angle in (0.7, 2.0, 4.5):
        assert np.allclose(hue_rotation(angle) @ grey, grey, atol=1e-3)  # the grey axis is the rotation axis
    # a third of a turn maps red -> green -> blue
    assert np.allclose(hue_rotation(2 * math.pi / 3) @ np.array([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-6)


def _face_window(n: int = 4, size: int = 112) -> np.ndarray:
    f = np.zeros((n, size, size, 3), np.uint8)
    f[:] = (40, 120, 200)  # backdrop
    f[:, 30:80, 35:75] = (230, 180, 140)  # a skin-coloured "head" left of centre
    return f


def test_identity_augment_changes_colour_and_geometry_not_shape():
    frames = _face_window()
    out = identity_augment(frames, np.random.default_rng(0))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frames)
    # one draw per window: every frame of the window gets the same transform
    assert all(np.array_equal(out[0], out[k]) for k in range(1, len(out)))
    # the same generator state gives the same window; a different one another
    assert np.array_equal(identity_augment(frames, np.random.default_rng(0)), out)
    assert not np.array_equal(identity_augment(frames, np.random.default_rng(1)), out)
    # over many draws the backdrop colour takes many hues (identity colours carry no information)
    rng = np.random.default_rng(3)
    corners = np.array([identity_augment(frames, rng)[0, 2, 2].astype(float) for _ in range(40)])
    assert corners.std(0).min() > 15
    assert identity_augment(np.zeros((0, 112, 112, 3), np.uint8), rng).shape == (0, 112, 112, 3)


def test_window_dataset_applies_identity_augment_only_in_training(tiny_corpus, geo, tmp_path, monkeypatch):
    from avemo.contract import media
    from avemo.training.data import dataset as dataset_mod
    from avemo.training.data.dataset import WindowDataset
    from avemo.training.data.prepare import prepare_data

    with pytest.raises(ValueError, match="video_augment must be one of basic, identity"):
        WindowDataset([], [], None, video_augment="faces")
    # basic augmentation leaves the colour order of a pixel alone (no hue change)
    audio, out = augment(np.zeros(8, np.float32), _face_window(), np.random.default_rng(0))
    px = out[0, 2, 2].astype(int)
    assert px[0] < px[1] < px[2]

    # real cached clips, as `avemo train --video_augment identity` prepares them
    datasets, _ = prepare_data(tiny_corpus, tmp_path / "cache", geo, video_augment="identity", progress=False)
    train = datasets["train"]
    assert train.train and train.video_augment == "identity"
    assert all(not d.train and d.video_augment == "identity" for d in (datasets["val"], datasets["test"]))
    clips, labels = train.clips, train.labels

    calls = []

    def recorder(frames, rng):
        calls.append(frames.shape)
        return identity_augment(frames, rng)

    monkeypatch.setattr(dataset_mod, "identity_augment", recorder)

    # evaluation with identity augment asked for: the raw window at the fixed starts, the same on every read
    evaluated = WindowDataset(clips, labels, geo, train=False, video_augment="identity")
    for k in (0, len(evaluated) - 1):
        item = evaluated[k]
        i, start = evaluated.index[k]
        a, f = media.window_arrays(*evaluated.arrays[i], geo, start)
        assert item["start"] == start
        assert np.array_equal(item["audio"].numpy(), a), f"eval item {k}: audio is not the raw window"
        assert np.array_equal(item["frames"].numpy(), f), f"eval item {k}: frames are not the raw window"
        again = evaluated[k]
        assert all(np.array_equal(item[key], again[key]) for key in ("audio", "frames", "mask")), k
    assert calls == []  # never called outside training

    # training: for the same generator state, identity = the basic window passed through identity_augment
    basic = WindowDataset(clips, labels, geo, train=True, video_augment="basic")
    identity = WindowDataset(clips, labels, geo, train=True, video_augment="identity")
    for k in (0, len(basic) // 2, len(basic) - 1):
        for ds in (basic, identity):
            ds.set_epoch(3, seed=7)
        b, d = basic[k], identity[k]
        assert b["start"] == d["start"] and np.array_equal(b["audio"].numpy(), d["audio"].numpy())
        assert not np.array_equal(b["frames"].numpy(), d["frames"].numpy()), f"train item {k}: identity = basic"
    assert calls == [tuple(d["frames"].shape)] * 3  # once per training item, none for basic
    # ... and exactly that: replaying the generator gives the identity item from the basic one
    rng = np.random.default_rng([7, 3])
    span = max(clips[0].duration - geo.window_seconds, 0.0)
    start = float(rng.uniform(0.0, span)) if span > 0 else 0.0
    a, f = augment(*media.window_arrays(*identity.arrays[0], geo, start), rng)
    identity.set_epoch(3, seed=7)
    first = identity[0]
    assert first["start"] == start and np.array_equal(first["frames"].numpy(), identity_augment(f, rng))


# ---------------------------------------------------------------- fresh corpora
def test_fresh_seeds_and_meta(tmp_path):
    assert fresh_seeds(0, 3) == [FRESH_SEED_OFFSET, FRESH_SEED_OFFSET + 1, FRESH_SEED_OFFSET + 2]
    assert fresh_seeds(7, 1) == [7 + FRESH_SEED_OFFSET]
    with pytest.raises(ValueError, match="no readable corpus.json.*avemo corpus"):
        corpus_meta(tmp_path)
    (tmp_path / "corpus.json").write_text("{}")
    with pytest.raises(ValueError, match="lacks seed / n_actors"):
        corpus_meta(tmp_path)


def test_fresh_corpora_repeat_the_plan_with_new_people(tiny_corpus, tmp_path):
    roots = fresh_corpora(tiny_corpus, 1, tmp_path / "fresh", jobs=1, progress=False)
    assert roots == [tmp_path / "fresh" / f"seed-{FRESH_SEED_OFFSET}"]
    base, fresh = corpus_meta(tiny_corpus), corpus_meta(roots[0])
    assert fresh["seed"] == base["seed"] + FRESH_SEED_OFFSET
    assert fresh["files"] == base["files"] and fresh["filters"] == base["filters"]  # same plan
    # new people: the same clip name renders different audio
    import av

    def first_audio(path):
        with av.open(str(path)) as c:
            return next(c.decode(audio=0)).to_ndarray()

    name = base["files"][0]
    assert not np.allclose(first_audio(tiny_corpus / name)[:, :2000], first_audio(roots[0] / name)[:, :2000])
    mtime = (roots[0] / name).stat().st_mtime_ns
    fresh_corpora(tiny_corpus, 1, tmp_path / "fresh", jobs=1, progress=False)  # reused, not rendered again
    assert (roots[0] / name).stat().st_mtime_ns == mtime


# ---------------------------------------------------------------- tables from records
def _rec(fold, fusion, corpus, cond, f1):
    kind = "test" if corpus.startswith("test") else "fresh"
    return {
        "fold": fold,
        "fusion": fusion,
        "corpus": corpus,
        "kind": kind,
        "condition": cond,
        "macro_f1": f1,
        "accuracy": f1 + 0.01,
        "clips": 10,
    }


def test_summarise_pairs_differences_by_fold_and_corpus():
    records = []
    for fold, (a, v, g, ga, gv) in enumerate([(0.5, 0.6, 0.9, 0.55, 0.45), (0.7, 0.4, 0.8, 0.35, 0.72)]):
        records += [
            _rec(fold, "audio", f"test fold {fold}", "full", a),
            _rec(fold, "video", f"test fold {fold}", "full", v),
        ]
        records += [_rec(fold, "gated", f"test fold {fold}", "full", g)]
        records += [
            _rec(fold, "gated", f"test fold {fold}", "no_audio", ga),
            _rec(fold, "gated", f"test fold {fold}", "no_video", gv),
        ]
        records += [
            _rec(fold, "audio", "seed-1001", "full", a - 0.1),
            _rec(fold, "video", "seed-1001", "full", v - 0.2),
        ]
        records += [_rec(fold, "gated", "seed-1001", "full", g - 0.1)]
        records += [
            _rec(fold, "gated", "seed-1001", "no_audio", 0.3),
            _rec(fold, "gated", "seed-1001", "no_video", 0.5),
        ]
    s = summarise(records, ["audio", "video", "gated"])
    gated = s["fusions"]["gated"]
    assert gated["test"]["macro_f1"] == pytest.approx({"mean": 0.85, "std": 0.05, "n": 2})
    assert gated["fresh"]["macro_f1"]["mean"] == pytest.approx(0.75)
    assert gated["fresh_minus_test"] == pytest.approx(-0.10)
    rows = {r["condition"]: r for r in s["missing_modality"]}
    # audio dropped is measured against the video-only model of the same fold: (0.55-0.6, 0.35-0.4)
    assert rows["no_audio"]["against"] == "video"
    assert rows["no_audio"]["test"]["minus_unimodal"]["mean"] == pytest.approx(-0.05)
    assert rows["no_audio"]["test"]["minus_unimodal"]["std"] == pytest.approx(0.0, abs=1e-12)
    # video dropped against audio-only: (0.45-0.5, 0.72-0.7) -> mean -0.015, std 0.035
    assert rows["no_video"]["test"]["minus_unimodal"]["mean"] == pytest.approx(-0.015)
    assert rows["no_video"]["test"]["minus_unimodal"]["std"] == pytest.approx(0.035)
    # fresh: 0.3 - (0.4, 0.2) -> (-0.1, +0.1)
    assert rows["no_audio"]["fresh"]["minus_unimodal"]["mean"] == pytest.approx(0.0, abs=1e-12)
    # gain over the better unimodal model per fold: (0.9-0.6, 0.8-0.7) -> 0.2 +- 0.1
    assert s["fusion_gain"]["gated"]["test"] == pytest.approx({"mean": 0.2, "std": 0.1, "n": 2})
    md = markdown(s, 2, 1)
    assert "| gated | 0.850 ± 0.050 | 0.860 ± 0.050 | 0.750 ± 0.050 |" in md
    assert "| gated, video dropped (vs audio-only) | 0.585 ± 0.135 | -0.015 ± 0.035 |" in md
    assert "| gated | +0.200 ± 0.100 |" in md


def test_mean_std_ignores_missing_values():
    assert mean_std([])["n"] == 0 and math.isnan(mean_std([None])["mean"])
    assert mean_std([0.2, float("nan"), 0.4]) == pytest.approx({"mean": 0.3, "std": 0.1, "n": 2})


# ---------------------------------------------------------------- compare --folds --fresh-corpora, evaluate roots
@pytest.mark.slow
def test_compare_folds_and_fresh_corpora_end_to_end(tiny_corpus, tmp_path, capsys):
    from avemo.cli import main

    out, fresh = tmp_path / "cmp", tmp_path / "fresh"
    args = ["compare", "--fusions", "audio,video,gated", "--epochs", "1", "--tiny", "--batch_size", "8",
            "--max_train_batches", "2", "--data_root", str(tiny_corpus), "--cache_dir", str(tmp_path / "cache"),
            "--out", str(out), "--folds", "3", "--fresh-corpora", "1", "--fresh-root", str(fresh),
            "--fusion_epochs", "2", "--distill_baselines", "0.5",
            "--no-tensorboard", "--no_progress", "--json"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    # --fusion_epochs: the fusion model trains 2 epochs, the baselines keep --epochs 1
    runs = {f: json.loads((out / "fold-0" / f / "metrics.json").read_text()) for f in ("audio", "video", "gated")}
    assert {f: len(m["history"]) for f, m in runs.items()} == {"audio": 1, "video": 1, "gated": 2}
    assert doc["config"]["fusion_epochs"] == 2 and "(2 for the fusion models)" in (out / "comparison.md").read_text()
    # --distill_baselines: the fold's own baselines are the gated model's teachers, at that weight
    gated_cfg = runs["gated"]["config"]
    assert (gated_cfg["teacher_audio"], gated_cfg["teacher_video"]) == (
        str(out / "fold-0" / "audio" / "best.pt"),
        str(out / "fold-0" / "video" / "best.pt"),
    )
    assert gated_cfg["losses"]["distill"] == 0.5 and runs["video"]["config"]["losses"]["distill"] == 0.0
    assert runs["gated"]["history"][0]["train_loss_distill"] > 0
    # every actor is a test actor exactly once
    tests = [json.loads((out / f"fold-{k}" / "gated" / "metrics.json").read_text())["split"]["test"] for k in range(3)]
    assert sorted(a for t in tests for a in t) == [1, 2, 3]
    for k in range(3):
        for fusion in ("audio", "video", "gated"):
            assert (out / f"fold-{k}" / fusion / "best.pt").exists()
    assert (out / "generalisation.png").stat().st_size > 1000
    md = (out / "comparison.md").read_text()
    assert "| fold | fusion | test macro-F1 |" in md and md.count("\n| 2 | ") == 3  # one line per run
    assert "| gated, audio dropped (vs video-only) |" in md
    # 3 folds x (audio, video: full; gated: full, no_audio, no_video) x (own test actors, 1 fresh corpus)
    records = doc["records"]
    assert len(records) == 3 * 5 * 2
    assert {r["clips"] for r in records if r["kind"] == "fresh"} == {21}
    # the test records agree with what training measured on the same split
    for r in (r for r in records if r["kind"] == "test" and r["condition"] == "full"):
        metrics = json.loads((out / f"fold-{r['fold']}" / r["fusion"] / "metrics.json").read_text())
        assert r["macro_f1"] == pytest.approx(metrics["test"]["clip"]["macro_f1"])
    # a dropped modality has no weight
    assert all(r["modality_weights"][0] == pytest.approx(0) for r in records if r["condition"] == "no_audio")
    assert doc["summary"] == json.loads((out / "comparison.json").read_text())["summary"]
    assert doc["summary"]["fusions"]["gated"]["fresh"]["macro_f1"]["n"] == 3

    # evaluate: several roots, split "all" -> the same figure compare recorded, plus the mean of the roots
    ckpt = out / "fold-1" / "gated" / "best.pt"
    root = fresh / f"seed-{FRESH_SEED_OFFSET}"
    common = ["evaluate", str(ckpt), "--cache_dir", str(tmp_path / "cache"), "--split", "all", "--no_progress"]
    assert main(common + ["--data_root", str(root), str(tiny_corpus), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert [r["data_root"] for r in ev["roots"]] == [str(root), str(tiny_corpus)]
    recorded = next(r for r in records if (r["fold"], r["fusion"], r["corpus"], r["condition"]) ==
                    (1, "gated", root.name, "full"))  # fmt: skip
    assert ev["roots"][0]["clip"]["macro_f1"] == pytest.approx(recorded["macro_f1"])
    assert ev["roots"][0]["clip"]["n"] == 21 and ev["roots"][0]["actors"] == [1, 2, 3]
    assert ev["mean"]["macro_f1"]["mean"] == pytest.approx(np.mean([r["clip"]["macro_f1"] for r in ev["roots"]]))
    assert main(common + ["--data_root", str(root), str(tiny_corpus)]) == 0
    assert "over 2 roots: macro-F1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--folds", "3", "--split_mode", "stratified"], "--split_mode does not apply with --folds"),
        (["compare", "--folds", "1"], r"--folds must be 0 \(off\) or at least 2 \(got 1\)"),
        (["compare", "--fusion_epochs", "-1"], r"--fusion_epochs must be >= 0 \(got -1\)"),
        (  # no teacher to distil
            ["compare", "--distill_baselines", "0.5", "--fusions", "gated,late"],
            r"--distill_baselines needs audio and/or video in --fusions",
        ),
        (  # the weight given twice
            ["compare", "--distill_baselines", "0.5", "--fusions", "audio,gated", "--delta_va", "0.2"],
            "--distill_baselines sets the teachers and --delta_va itself",
        ),
        (  # applies to none of the fusions
            ["compare", "--fusions", "audio,gated", "--gate_alpha", "0.3"],
            r"--gate_alpha only applies to --fusion gated_uncertainty \(got audio\)",
        ),
        (  # a value one fusion cannot take: refused before any training
            ["compare", "--fusions", "audio,gated", "--teacher_audio", "t.pt", "--delta_va", "0.3"],
            "--teacher_audio distils into the unimodal auxiliary heads of a fusion model; --fusion audio has none",
        ),
        (["evaluate", "best.pt", "--data_root", "{tmp}/nope"], "--data_root: no such folder {tmp}/nope"),
    ],
    ids=["split_mode", "folds", "fusion_epochs", "no_teacher", "delta_va_twice", "gate_alpha", "teacher", "root"],
)
def test_compare_and_evaluate_usage_errors(tmp_path, capsys, argv, message):
    """Each usage error exits 2 with its own message (argparse's "avemo <command>: error: ..."): an unknown
    flag or a typo would exit 2 too, with another message."""
    import re

    from avemo.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    message = message.replace("{tmp}", re.escape(str(tmp_path)))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage lines
    assert re.fullmatch(rf"avemo {argv[0]}: error: {message}.*", error), error
