"""progaug.evaluation: statistics, per-draw replacement, classifier training, the protocol's choices, the
selective filter and the report's verdicts."""

import dataclasses
import math
import os
import re
import signal
import sys

import pytest
import torch

from progaug.data.tiles import TileSet
from progaug.evaluation.arms import Arm, all_arms, arm_named
from progaug.evaluation.protocol import (GeneratedSets, ProtocolConfig, _add_paired, class_orders, needed_positions, planned_runs, real_subset,
                                         plateau, run_protocol, sanity)
from progaug.evaluation.report import _choosing_block_lines, _per_class_lines, judge, plot, render_markdown, seed_ranges
from progaug.evaluation.stats import interval, paired, paired_runs, verdict, welch
from progaug.evaluation.training import LabelledImages, Recipe, TrainSpec, _apply_mixup, _batches, auroc, score, train_classifier
from progaug.replacement import check_probability, replace_draws, replacement_index
from progaug.selection import agreement_mask, calibrated_labels

# ---------------------------------------------------------------------------------------- statistics


def test_interval_golden_values():
    d = interval([0.80, 0.82, 0.84, 0.86, 0.88])
    # mean 0.84, sd 0.0316228, t(4) = 2.776
    assert d["mean"] == pytest.approx(0.84) and d["half_width"] == pytest.approx(2.776 * 0.0316228 / math.sqrt(5), rel=1e-5)
    assert interval([0.5])["half_width"] == 0.0
    with pytest.raises(ValueError, match="finite numbers"):
        interval([0.5, float("nan")])


def test_paired_differences_and_verdicts():
    d = paired([0.9, 0.92, 0.91], [0.85, 0.86, 0.88])
    assert d["per_seed"] == pytest.approx([0.05, 0.06, 0.03]) and d["verdict"] == "better"
    assert verdict(interval([-0.02, -0.03, -0.025])) == "worse"
    assert verdict(interval([0.05, -0.04, 0.01])) == "not told apart"
    with pytest.raises(ValueError, match="one value per seed"):
        paired([0.1, 0.2], [0.1])


def test_paired_runs_pairs_by_seed_and_refuses_other_seeds():
    runs = [{"seed": s, "accuracy": a} for s, a in ((0, 0.9), (1, 0.92), (2, 0.91))]
    base = [{"seed": s, "accuracy": a} for s, a in ((0, 0.85), (1, 0.86), (2, 0.88))]
    assert paired_runs(runs, base, "accuracy")["per_seed"] == pytest.approx([0.05, 0.06, 0.03])
    with pytest.raises(ValueError, match=r"same seeds in the same order, got \[0, 1, 2\] and \[1, 0, 2\]"):
        paired_runs(runs, [base[1], base[0], base[2]], "accuracy")
    with pytest.raises(ValueError, match="'val_accuracy': 6 run"):
        paired_runs(runs, base, "val_accuracy")


def test_welch_golden_values_and_refusals():
    d = welch([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0])
    # s1^2/n1 = 1.6667/4, s2^2/n2 = 0.3333/3; df = 4.349 -> 4, t = 2.776
    se = math.sqrt(5 / 12 + 1 / 9)
    assert d["mean"] == pytest.approx(2.5 - 4 / 3) and d["df"] == pytest.approx(4.3494, abs=1e-3)
    assert d["half_width"] == pytest.approx(2.776 * se) and d["verdict"] == "not told apart"
    assert (d["n"], d["n_other"]) == (4, 3)
    # far apart with little spread: told apart, either sign
    assert welch([0.9, 0.91, 0.92], [0.80, 0.82, 0.81])["verdict"] == "better"
    assert welch([0.80, 0.82, 0.81], [0.9, 0.91, 0.92])["verdict"] == "worse"
    # one constant side: the other's spread alone, its own degrees of freedom
    assert welch([1.0, 2.0, 3.0], [5.0, 5.0])["df"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="two or more values on each side"):
        welch([0.1], [0.2, 0.3])
    with pytest.raises(ValueError, match="both sides are constant"):
        welch([0.1, 0.1], [0.2, 0.2])


# --------------------------------------------------------------------------------------- replacement


def test_replacement_probability_endpoints_and_rate():
    real = torch.arange(10_000)
    gen = torch.Generator().manual_seed(0)
    replaced, index = replace_draws(real, 50, 0.0, gen)
    assert not replaced.any() and torch.equal(index, real)
    replaced, index = replace_draws(real, 50, 1.0, gen)
    assert replaced.all() and index.max() < 50
    replaced, index = replace_draws(real, 50, 0.3, gen)
    assert abs(replaced.float().mean().item() - 0.3) < 0.02
    assert torch.equal(index[~replaced], real[~replaced]) and index[replaced].max() < 50
    assert not replace_draws(real, 0, 0.9, gen)[0].any()  # nothing to draw from: nothing replaced


@pytest.mark.parametrize("bad, error, match", [(1.5, ValueError, r"`p` must lie in \[0, 1\], got 1.5"),
                                               (float("nan"), ValueError, "must lie in"), ("0.1", TypeError, "must be a number")])
def test_replacement_probability_is_checked(bad, error, match):
    with pytest.raises(error, match=match):
        check_probability("p", bad)


def test_replacement_index_depends_only_on_seed_epoch_index():
    draws = [replacement_index(i, 40, 0.5, seed=3, epoch=0) for i in range(400)]
    assert draws == [replacement_index(i, 40, 0.5, seed=3, epoch=0) for i in range(400)]
    assert draws != [replacement_index(i, 40, 0.5, seed=3, epoch=1) for i in range(400)]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.4 < share < 0.6 and all(d is None or 0 <= d < 40 for d in draws)
    assert all(replacement_index(i, 40, 0.0, seed=3, epoch=0) is None for i in range(50))


def test_replacement_keeps_every_real_tile_equally_often_and_uniform_crowds_them_out():
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(20)
    for _ in range(50):  # 50 epochs over 20 real tiles, 500 generated images, p = 0.5
        for mask, index in _batches(20, 500, Recipe(replace_prob=0.5), 8, gen):
            counts.index_add_(0, index[~mask], torch.ones(int((~mask).sum())))
    assert counts.sum() == pytest.approx(500, rel=0.15) and counts.min() > 10  # about half of 50 per tile
    uniform = torch.zeros(20)
    for _ in range(50):
        for mask, index in _batches(20, 500, Recipe(uniform=True), 8, gen):
            uniform.index_add_(0, index[~mask], torch.ones(int((~mask).sum())))
    assert uniform.sum() < 0.1 * counts.sum()  # 20 of 520 rows: real tiles are crowded out


# ------------------------------------------------------------------------------------------ training


def separable(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark tiles (class 0) and bright tiles (class 1) with noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 1, 180, 60)
    return (base + torch.randint(-40, 40, (n, 3, size, size), generator=gen)).clamp(0, 255).to(torch.uint8), labels


def test_recipe_and_spec_validate_their_settings():
    with pytest.raises(ValueError, match=r"`replace_prob` must lie in \[0, 1\]"):
        Recipe(replace_prob=2.0)
    with pytest.raises(ValueError, match="`stain_sigma` must be a number >= 0, got -0.1"):
        Recipe(stain_sigma=-0.1)
    with pytest.raises(ValueError, match="`classifier` must be one of"):
        TrainSpec(classifier="resnet")
    with pytest.raises(ValueError, match="`epochs` must be >= 1, got 0"):
        TrainSpec(epochs=0)
    with pytest.raises(TypeError, match="`batch_size` must be an int, got float 32.0"):
        TrainSpec(batch_size=32.0)
    with pytest.raises(TypeError, match="`mixup_alpha` must be a number, got str '0.4'"):
        Recipe(mixup_alpha="0.4")
    with pytest.raises(ValueError, match="`mixup_alpha` must be a number >= 0, got inf"):
        Recipe(mixup_alpha=float("inf"))
    assert TrainSpec(epochs=3, batch_size=32).steps(50) == 6 and Recipe.from_json(Recipe(mixup_alpha=0.4).to_json()) == Recipe(mixup_alpha=0.4)


def test_cnn_learns_a_separable_task_and_the_seed_decides_the_run():
    x, y = separable(64)
    real = LabelledImages(x, torch.nn.functional.one_hot(y, 2).float())
    vx, vy = separable(32, seed=1)
    spec = TrainSpec(classifier="cnn", epochs=4, batch_size=16, eval_every=2)
    model, val = train_classifier(real, None, Recipe(), spec, seed=0, val=(vx, vy))
    assert val >= 0.9 and score(model, vx, vy)["accuracy"] == val
    again, _ = train_classifier(real, None, Recipe(), spec, seed=0, val=(vx, vy))
    assert score(again, vx, vy)["predictions_sha"] == score(model, vx, vy)["predictions_sha"]


def test_score_gives_per_class_recall_and_a_threshold_free_auroc():
    class Fixed(torch.nn.Module):  # p(class 1) = the image's first pixel / 255, whatever the normalisation
        def forward(self, x):
            p = (x[:, 0, 0, 0] - x[:, 0, 0, 0].min()) / (x[:, 0, 0, 0].max() - x[:, 0, 0, 0].min())
            return torch.stack([1 - p, p], 1).clamp(1e-6, 1).log()
    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([0, 40, 160, 100, 200, 255])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    out = score(Fixed(), images, labels)
    # p(1): 0, .16, .63, .39, .78, 1 -> predictions 0 0 1 0 1 1: class 0 recall 2/3, class 1 recall 2/3
    assert out["recall"] == pytest.approx([2 / 3, 2 / 3]) and out["balanced_accuracy"] == pytest.approx(2 / 3)
    assert out["auroc"] == pytest.approx(8 / 9)  # of the 9 (positive, negative) pairs only (100, 160) is misordered
    # a shifted threshold changes recall, not AUROC: the same order of scores
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.9]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)  # a tie counts half
    with pytest.raises(ValueError, match="`labels` must hold both classes, got 2 positives and 0 negatives"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))
    assert "auroc" not in score(Fixed(), images, torch.ones(6, dtype=torch.long))
    gen = torch.Generator().manual_seed(0)  # the rank form equals the pairwise count, ties included
    for _ in range(50):
        s, y = torch.randint(0, 5, (30,), generator=gen).float(), torch.arange(30) % 2
        pos, neg = s[y == 1], s[y == 0]
        pairwise = ((pos[:, None] > neg).double().sum() + 0.5 * (pos[:, None] == neg).double().sum()) / (15 * 15)
        assert auroc(s, y) == pytest.approx(float(pairwise), abs=1e-12)


@pytest.mark.parametrize("fast", [{"channels_last": True}, {"bf16": True}, {"channels_last": True, "bf16": True}])
def test_fast_training_settings_learn_the_same_task_and_are_logged_apart(fast):
    x, y = separable(64)
    real = LabelledImages(x, torch.nn.functional.one_hot(y, 2).float())
    vx, vy = separable(32, seed=1)
    spec = TrainSpec(classifier="cnn", epochs=4, batch_size=16, eval_every=2)
    plain, _ = train_classifier(real, None, Recipe(), spec, seed=0, val=(vx, vy))
    model, val = train_classifier(real, None, Recipe(), dataclasses.replace(spec, **fast), seed=0, val=(vx, vy))
    assert val >= 0.9 and score(model, vx, vy)["accuracy"] == val
    conv = model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == fast.get("channels_last", False)
    assert conv.dtype == torch.float32  # autocast: the weights stay float32
    first = dict(plain.named_parameters())["features.0.weight"]
    assert torch.allclose(conv, first, atol=0.1)  # other rounding at most: the same training
    # a run with a fast setting is another run; the keys of runs without one are what they were before the fields existed
    assert dataclasses.replace(spec, **fast).run_fields() == {**spec.run_fields(), **fast}
    assert set(spec.run_fields()) == {"classifier", "epochs", "batch_size", "lr", "weight_decay", "eval_every"}


def test_the_last_checkpoint_is_the_end_of_the_schedule_scored_once(monkeypatch):
    from progaug.evaluation import training

    x, y = separable(64)
    real = LabelledImages(x, torch.nn.functional.one_hot(y, 2).float())
    vx, vy = separable(32, seed=1)
    calls = []  # the weights at each validation
    real_score = training.score

    def recording_score(model, *args, **kwargs):
        calls.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_score(model, *args, **kwargs)

    monkeypatch.setattr(training, "score", recording_score)
    spec = TrainSpec(classifier="cnn", epochs=4, batch_size=16, eval_every=1, lr=0.05)
    last, last_val = train_classifier(real, None, Recipe(), dataclasses.replace(spec, checkpoint="last"), seed=0, val=(vx, vy))
    assert len(calls) == 1  # validation read once, after the last epoch
    calls.clear()
    best, best_val = train_classifier(real, None, Recipe(), spec, seed=0, val=(vx, vy))
    assert len(calls) == 4 and best_val >= last_val  # the best checkpoint: a maximum over the four
    for name, w in last.state_dict().items():  # validating every epoch did not change the training: the same end
        assert torch.equal(w, calls[-1][name]), name
    assert real_score(last, vx, vy)["accuracy"] == last_val
    assert dataclasses.replace(spec, checkpoint="last").run_fields() == {**spec.run_fields(), "checkpoint": "last"}
    assert "checkpoint" not in spec.run_fields()  # default keys as before the field existed
    with pytest.raises(ValueError, match="`checkpoint` must be one of \\('best', 'last'\\), got 'final'"):
        TrainSpec(checkpoint="final")


def test_protocol_with_the_last_checkpoint_scores_both_regions_and_is_logged_apart():
    splits = tiny_splits()
    base = dict(n=("2",), seeds=(0, 1), tune_seeds=(5,), curve_epochs=(1,), batch_size=8)
    memo, other = {}, {}
    res = run_protocol(splits, ("a", "b"), GeneratedSets(pro={}), [Arm("real")], ProtocolConfig(**base, checkpoint="last"), memo=memo)
    assert all('"checkpoint": "last"' in key for key in memo)
    runs = res["curve"]["2"]["arms"]["real"]["runs"]
    assert all(0 <= r["val_f1_macro"] <= 1 and "accuracy" in r for r in runs)  # both held-out splits scored
    for r in runs:  # per-class recall and AUROC on both blocks; the balanced accuracy is the recalls' mean
        assert len(r["recall"]) == len(r["val_recall"]) == 2 and 0 <= r["auroc"] <= 1 and 0 <= r["val_auroc"] <= 1
        assert r["balanced_accuracy"] == pytest.approx(sum(r["recall"]) / 2)
    assert ProtocolConfig().checkpoint == "last" and ProtocolConfig(**base) == ProtocolConfig(**base, checkpoint="last")  # the default
    run_protocol(splits, ("a", "b"), GeneratedSets(pro={}), [Arm("real")], ProtocolConfig(**base, checkpoint="best"), memo=other)
    assert not set(other) & set(memo) and not any("checkpoint" in key for key in other)  # best: the keys logged before it existed
    assert not any("val_f1_macro" in r for r in other.values())
    res["counts"] = {split: splits[split].counts() for split in splits}
    assert "with the last checkpoint (no checkpoint selection" in render_markdown(res)
    assert "| real | " in render_markdown(res).split("Per class (scored split")[1]  # the runs log recall and AUROC
    entry = {"arms": {"real": {"runs": [{"val_accuracy": 0.5 + s / 10, "val_f1_macro": 0.5} for s in range(3)]},
                      "+x": {"runs": [{"val_accuracy": 0.6 + s / 10, "val_f1_macro": 0.55} for s in range(3)]}}}
    line = _choosing_block_lines(entry, "validation", "last")[0]
    assert "chosen by nothing" in line and line.endswith("+x +10.0 [+10.0, +10.0] (macro-F1 +5.0 [+5.0, +5.0]).")
    assert len(_choosing_block_lines(entry, "validation", "last")) == 2  # no standard arm: no line against one
    entry["arms"]["+stain"] = {"runs": [{"val_accuracy": 0.7 + s / 10, "val_f1_macro": 0.6} for s in range(3)]}
    entry["arms"]["real, no flips"] = {"runs": [{"val_accuracy": 0.1, "val_f1_macro": 0.1} for _ in range(3)]}
    lines = _choosing_block_lines(entry, "validation", "last")
    assert lines[2] == "On the validation split, against the standard augmentations: +x vs +stain -10.0 [-10.0, -10.0] (macro-F1 -5.0 [-5.0, -5.0])."
    assert len(_choosing_block_lines(entry, "validation", "best")) == 2  # the best checkpoint's maxima: vs real only
    assert ProtocolConfig.from_json(ProtocolConfig(checkpoint="last").to_json()).spec(3).checkpoint == "last"


def test_per_class_table_pairs_recall_and_auroc_with_real_per_seed():
    def runs(recalls, aurocs):
        return [{"seed": s, "accuracy": 0.8, "f1_macro": 0.8, "recall": list(r), "auroc": a}
                for s, (r, a) in enumerate(zip(recalls, aurocs))]
    entry = {"arms": {"real": {"runs": runs([(0.8, 0.7), (0.9, 0.7)], [0.90, 0.92])},
                      "+gen": {"runs": runs([(0.7, 0.9), (0.8, 0.9)], [0.90, 0.92])}}}
    _add_paired(entry)  # the protocol pairs per seed; the table formats what it paired
    stroma, tumour = entry["arms"]["+gen"]["paired_recall"]
    assert stroma["per_seed"] == pytest.approx([-0.1, -0.1]) and tumour["per_seed"] == pytest.approx([0.2, 0.2])
    assert "paired_recall" not in entry["arms"]["real"]
    lines = _per_class_lines(entry, ["stroma", "tumour"])
    assert "| stroma recall % | vs real | tumour recall % | vs real | AUROC | vs real |" in lines[2]
    assert lines[4] == "| real | 85.0 | - | 70.0 | - | 0.910 | - |"
    # stroma -10 and tumour +20 on both seeds (zero width), AUROC unchanged: a moved threshold
    assert lines[5] == "| +gen | 75.0 | -10.0 [-10.0, -10.0] | 90.0 | +20.0 [+20.0, +20.0] | 0.910 | +0.000 [+0.000, +0.000] |"
    entry["arms"]["+gen"]["runs"][1]["seed"] = 7  # other seeds are never paired silently
    with pytest.raises(ValueError, match="paired differences need the same seeds in the same order"):
        _add_paired(entry)
    entry["arms"]["+gen"]["runs"][1]["seed"] = 1
    del entry["arms"]["+gen"]["runs"][0]["auroc"]  # runs logged before session 53: no table, no pairs
    assert _per_class_lines(entry, ["stroma", "tumour"]) == []
    _add_paired(entry)
    assert "paired_auroc" not in entry["arms"]["+gen"]


    with pytest.raises(ValueError, match="`checkpoint` must be one of \\('best', 'last'\\), got 'first'"):
        ProtocolConfig(checkpoint="first")


def test_run_keys_of_the_log_are_the_ones_written_before_the_added_fields_existed():
    # the run log is keyed by these exact strings: a change here orphans every logged training
    import json

    from progaug.config import config_to_dict_without_defaults

    assert json.dumps(TrainSpec().run_fields()) == ('{"classifier": "cnn", "epochs": 100, "batch_size": 32, "lr": 0.002, '
                                                    '"weight_decay": 0.05, "eval_every": 5}')
    assert json.dumps(arm_named("+stain").run_fields()) == ('{"name": "+stain", "generated": null, "measure": null, "flips": true, '
                                                            '"stain": true, "mixup": false, "uniform": false, "filtered": false}')
    assert json.dumps(TrainSpec(bf16=True).run_fields()).endswith('"eval_every": 5, "bf16": true}')
    with pytest.raises(ValueError, match="'bf17' is not a field of TrainSpec"):
        config_to_dict_without_defaults(TrainSpec(), ("bf17",))


def test_fast_training_settings_are_checked_and_reach_the_spec():
    with pytest.raises(TypeError, match="`bf16` must be True or False, got 'yes'"):
        TrainSpec(bf16="yes")
    with pytest.raises(TypeError, match="`channels_last` must be True or False, got 1"):
        TrainSpec(channels_last=1)
    spec = ProtocolConfig(train_channels_last=True, train_bf16=True).spec(20)
    assert spec.channels_last and spec.bf16 and spec.epochs == 20
    assert not ProtocolConfig(train_bf16=False).spec(20).bf16
    with pytest.raises(TypeError, match="`train_bf16` must be True, False or None \\(automatic\\), got 'yes'"):
        ProtocolConfig(train_bf16="yes")


@pytest.mark.parametrize("native", [True, False])
def test_fast_training_settings_default_to_the_cnn_on_native_bf16(monkeypatch, native):
    import progaug.runtime

    monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: native)
    cnn, vit = ProtocolConfig(), ProtocolConfig(classifier="vit")
    assert (cnn.train_bf16, cnn.train_channels_last) == (native, True)
    assert (vit.train_bf16, vit.train_channels_last) == (False, False)
    assert not {"bf16", "channels_last"} & set(ProtocolConfig(train_bf16=False, train_channels_last=False).spec(20).run_fields())
    assert ProtocolConfig.from_json(cnn.to_json()) == cnn  # the JSON holds what ran, not "automatic"


def test_mixup_keeps_soft_rows_soft():
    from timm.data import Mixup

    torch.manual_seed(0)
    rows = torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.0, 1.0], [0.6, 0.4]])
    mix = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=2)
    x, out = _apply_mixup(mix, torch.rand(4, 3, 8, 8), rows)
    assert torch.allclose(out.sum(-1), torch.ones(4))
    lam = (out[0, 1] - rows.flip(0)[0, 1]) / (rows[0, 1] - rows.flip(0)[0, 1])
    assert torch.allclose(out, lam * rows + (1 - lam) * rows.flip(0), atol=1e-6)  # one lambda, the batch flipped


# ------------------------------------------------------------------------------------------ protocol


def test_plateau_picks_the_longest_budget_within_tolerance_by_default():
    means = {25: 0.80, 50: 0.86, 100: 0.865, 200: 0.87}
    assert plateau(means, 0.01) == 200
    assert plateau(means, 0.01, "shortest") == 50  # the rule before session 13
    assert plateau(means, 0.0, "shortest") == 200
    # a longer budget that loses more than the tolerance is not on the plateau
    assert plateau({20: 0.95, 40: 0.97, 80: 0.965, 160: 0.94}, 0.01) == 80
    assert plateau({20: 0.95, 40: 0.97, 80: 0.965, 160: 0.94}, 0.01, "shortest") == 40


def test_plateau_refuses_bad_picks_and_empty_curves():
    with pytest.raises(ValueError, match=r"`pick` must be one of \('longest', 'shortest'\), got 'middle'"):
        plateau({20: 0.9}, 0.01, "middle")
    with pytest.raises(ValueError, match="`means` holds no budgets"):
        plateau({}, 0.01)
    with pytest.raises(ValueError, match=r"`plateau_pick` must be one of .*got 'first'"):
        ProtocolConfig(plateau_pick="first")


def test_protocol_config_refuses_tuning_on_evaluation_seeds():
    with pytest.raises(ValueError, match=r"`tune_seeds` \(0, 9\) must differ from `seeds`"):
        ProtocolConfig(seeds=(0, 1), tune_seeds=(0, 9))
    with pytest.raises(ValueError, match="N takes positive integers or 'all', got 'ten'"):
        ProtocolConfig(n=("ten",))
    assert ProtocolConfig.from_json(ProtocolConfig(n=("5",)).to_json()) == ProtocolConfig(n=("5",))


def test_generation_settings_bf16_is_automatic_and_checked(monkeypatch):
    import progaug.runtime
    from progaug.evaluation.pipeline import GenerationSettings

    assert GenerationSettings().bf16 is None
    monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: False)
    assert GenerationSettings().resolved("cpu").bf16 is False  # emulated bf16 is slow: not the default there
    monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: True)
    assert GenerationSettings().resolved("cpu").bf16 is True
    assert GenerationSettings(bf16=False).resolved("cpu").bf16 is False
    with pytest.raises(TypeError, match="`bf16` must be True, False or None"):
        GenerationSettings(bf16="yes")
    with pytest.raises(ValueError, match="`steps` must be >= 1, got 0"):
        GenerationSettings(steps=0)
    with pytest.raises(TypeError, match="`max_batch` must be an int, got str '8'"):
        GenerationSettings(max_batch="8")


def test_arm_knobs():
    arms = all_arms("preview")
    assert arms["real"].knob is None and arms["real, no flips"].knob is None
    assert arms["+stain"].knob == "stain_sigma" and arms["+Mixup/CutMix"].knob == "mixup_alpha"
    assert arms["+ADD-Pro[preview]"].knob == "replace_prob" and arms["+ADD-Pro[preview]+stain"].knob == "replace_prob"
    assert arms["+ADD-Pro[preview] uniform"].knob is None and arms["+ADD-Pro[preview] filtered"].filtered


def test_arm_named_takes_a_decode_stride_variant():
    assert arm_named("+stain") == all_arms()["+stain"]
    strided = arm_named("+ADD-Pro[decoded/2]")
    assert (strided.generated, strided.measure, strided.knob) == ("pro", "decoded/2", "replace_prob")
    assert arm_named("+ADD-Pro[paper]") == all_arms()["+ADD-Pro[paper]"]
    fine = arm_named("+ADD-Pro[preview/2:10] margin labels")
    assert (fine.measure, fine.labels, fine.set_key) == ("preview/2:10", "margin", "preview/2:10+margin")
    both = arm_named("+ADD-Pro[preview]+stain margin labels")
    assert (both.measure, both.stain, both.labels, both.set_key, both.knob) == ("preview", True, "margin", "preview+margin", "replace_prob")
    assert arm_named("+ADD-Pro[paper/2]+stain") == Arm("+ADD-Pro[paper/2]+stain", "pro", "paper/2", stain=True)
    assert not arm_named("+ADD-Pro[preview] margin labels").stain
    for bad in ("+ADD-Pro[decoded/0]", "+ADD-Pro[nope/2]", "+ADD-Pro[decoded/x]", "+nope", "+ADD-Pro[]", "+ADD-Pro[preview/2:]",
                "+stain margin labels", "+ADD-Pro[preview] margin labels+stain"):
        with pytest.raises(ValueError, match=r"arm '\+.*' unknown; the arms are \['real'"):
            arm_named(bad)


def test_arm_named_takes_mixup_on_top_of_generated_images():
    arm = arm_named("+ADD-Pro[preview]+Mixup/CutMix margin labels")
    assert (arm.measure, arm.mixup, arm.stain, arm.labels, arm.knob) == ("preview", True, False, "margin", "replace_prob")
    assert arm_named("+ADD-Pro[paper]+Mixup/CutMix") == Arm("+ADD-Pro[paper]+Mixup/CutMix", "pro", "paper", mixup=True)
    with pytest.raises(ValueError, match=r"arm '\+Mixup/CutMix margin labels' unknown"):
        arm_named("+Mixup/CutMix margin labels")


def test_generated_arms_take_the_standard_arms_tuned_stain_and_mixup():
    """The +stain / +Mixup/CutMix arms' choices (not the grid's middle) reach the generated arms that add them."""
    from progaug.evaluation import protocol

    class Runner:
        def __init__(self):
            self.recipes = []

        def fit_all(self, jobs):
            out = []
            for arm, recipe, *_ in jobs:
                self.recipes.append((arm.name, recipe))
                best = {"+stain": recipe.stain_sigma == 0.1, "+Mixup/CutMix": recipe.mixup_alpha == 0.2}.get(arm.name, False)
                out.append({"val_accuracy": 0.9 if best else 0.5, "accuracy": 0.7, "f1_macro": 0.7, "balanced_accuracy": 0.7})
            return out

    config = ProtocolConfig(seeds=(0, 1), tune_seeds=(100,), n=("all",))
    runner, entry = Runner(), {"tuning": {}, "arms": {}}
    carried = protocol._run_arms(runner, [all_arms()["+stain"], all_arms()["+Mixup/CutMix"]], config, None, "all", 10,
                                 protocol.CARRIED_DEFAULTS, entry)
    assert carried == {"stain_sigma": 0.1, "mixup_alpha": 0.2}
    assert protocol.CARRIED_DEFAULTS == {"stain_sigma": 0.05, "mixup_alpha": 0.5}  # the shared defaults stay as they were
    both = [arm_named("+ADD-Pro[preview]+Mixup/CutMix"), arm_named("+ADD-Pro[preview]+stain")]
    protocol._run_arms(runner, both, config, None, "all", 10, carried, entry)
    used = {(name, r.mixup_alpha, r.stain_sigma) for name, r in runner.recipes if name.startswith("+ADD")}
    assert used == {("+ADD-Pro[preview]+Mixup/CutMix", 0.2, 0.0), ("+ADD-Pro[preview]+stain", 0.0, 0.1)}
    assert entry["arms"]["+ADD-Pro[preview]+Mixup/CutMix"]["recipe"]["mixup_alpha"] == 0.2


def test_generation_settings_pass_the_variant_stride():
    from progaug.evaluation.pipeline import GenerationSettings
    from progaug.generator import parse_variant

    settings = GenerationSettings(steps=4)
    assert settings.generation("decoded/2", "cpu").decode_stride == 2 and settings.generation("decoded/2", "cpu").measure == "decoded"
    assert settings.generation("paper", "cpu").decode_stride == 1
    fine = settings.generation("preview/2:10", "cpu")
    assert (fine.measure, fine.decode_stride, fine.decode_fine) == ("preview", 2, 10)
    assert parse_variant("preview/3") == ("preview", 3, 0) and parse_variant("paper") == ("paper", 1, 0)
    assert parse_variant("decoded/2:5").decode_fine == 5
    for name in ("paper", "decoded/2", "preview/2:10", "preview/1:3"):
        assert parse_variant(name).name == name  # the name reads back
    for bad in ("paper/0", "paper/2:", "paper/:3", "paper/2:-1", "paper/x", "nope/2"):
        with pytest.raises(ValueError, match=f"MEASURE/STRIDE:FINE .* got '{re.escape(bad)}'"):
            parse_variant(bad)


def test_parse_schedule_reads_stride_and_fine():
    from progaug.generator import parse_schedule

    assert parse_schedule("2:10") == (2, 10) and parse_schedule("3") == (3, 0) and parse_schedule("1:0") == (1, 0)
    for bad in ("0", "0:4", "2:", ":2", "2:x", "-1", ""):
        with pytest.raises(ValueError, match=f"STRIDE:FINE .* got '{re.escape(bad)}'"):
            parse_schedule(bad)


def test_make_sets_keeps_a_strided_variant_beside_its_measure(tmp_path, capsys):
    from conftest import make_pair_dir, random_tiles
    from progaug.evaluation.pipeline import GenerationSettings, make_sets
    from progaug.hub import load_pair

    pair = load_pair(make_pair_dir(tmp_path / "pair"))
    settings = GenerationSettings(steps=6, num_levels=2, bf16=False, max_batch=8, cache_dir=str(tmp_path / "cache"))
    arms = [arm_named("+ADD-Pro[paper]"), arm_named("+ADD-Pro[paper/2]"), arm_named("+ADD-Pro[paper/2:3]")]
    sets, cost = make_sets(pair, random_tiles(2), arms, settings)
    (every, labels), (strided, strided_labels), (fine, fine_labels) = (sets.pro[k] for k in ("paper", "paper/2", "paper/2:3"))
    assert torch.equal(labels, strided_labels) and not torch.equal(every, strided)  # the same labels, other images
    assert torch.equal(labels, fine_labels) and not torch.equal(fine, strided) and not torch.equal(fine, every)
    evals = {k: cost[f"pro:{k}"]["unet_evals_per_image"] for k in ("paper", "paper/2", "paper/2:3")}
    assert evals["paper/2"] < evals["paper/2:3"] < evals["paper"]
    printed = capsys.readouterr().out
    assert "progressive [paper/2]: 2/2 sources" in printed and "progressive [paper/2:3]: 2/2 sources" in printed
    assert len(list((tmp_path / "cache").iterdir())) == 3  # three sets kept, under three keys


def tiny_splits(size: int = 16) -> dict[str, TileSet]:
    out = {}
    for i, (split, n) in enumerate((("train", 16), ("val", 8), ("test", 8))):
        x, y = separable(n, size, seed=i)
        out[split] = TileSet(x, y, ("a", "b"), tuple(str(k) for k in range(n)))
    return out


def test_needed_positions_cover_every_subset():
    train = tiny_splits()["train"]
    cfg = ProtocolConfig(n=("2",), seeds=(0,), tune_seeds=(1,))
    a_all = torch.nonzero(train.labels == 0).flatten()
    expected = {int((a_all == g).nonzero()) for s in (0, 1) for g in class_orders(train, s)["a"][:2]}
    assert set(needed_positions(train, "a", cfg).tolist()) == expected


def test_real_subset_takes_the_first_n_of_each_class_in_the_seeds_order_with_one_hot_rows():
    train = tiny_splits()["train"]
    real, chosen = real_subset(train, 3, 2)
    orders = class_orders(train, 3)
    assert [c for c in chosen] == ["a", "b"] and all(torch.equal(chosen[c], orders[c][:2]) for c in chosen)
    index = torch.cat([orders["a"][:2], orders["b"][:2]])
    assert torch.equal(real.images, train.images[index])
    assert real.rows.tolist() == [[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2
    everything, _ = real_subset(train, 3, None)
    assert len(everything) == len(train.labels) and not torch.equal(real_subset(train, 4, 2)[1]["a"], chosen["a"])


def test_write_subset_writes_the_runs_tiles_that_read_back_unchanged(tmp_path):
    from progaug.data.folder import folder_tiles
    from progaug.evaluation.protocol import write_subset

    train = tiny_splits()["train"]
    assert write_subset(train, 3, 2, tmp_path / "sub") == {"a": 2, "b": 2}
    back = folder_tiles(tmp_path / "sub", tile_size=16, classes=["a", "b"])
    real, _ = real_subset(train, 3, 2)
    assert torch.equal(back.images, real.images) and back.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(FileExistsError, match="sub/a already exists"):
        write_subset(train, 3, 2, tmp_path / "sub")


def test_run_keys_name_a_device_other_than_the_cpu():
    from progaug.evaluation.protocol import Recipe, _Runner

    splits, cfg = tiny_splits(), ProtocolConfig(n=("2",), seeds=(0,), tune_seeds=(5,), curve_epochs=(1,))
    keys = {device: _Runner(splits, ("a", "b"), GeneratedSets(pro={}), cfg, device, None).key(Arm("real"), Recipe(), 0, "2", 4, True)
            for device in ("cpu", "cuda", "cuda:1", "mps")}
    assert "device" not in keys["cpu"]  # CPU keys as before: existing CPU logs are still reused
    assert keys["cuda"] == keys["cuda:1"] and '{"device": "cuda"}' in keys["cuda"] and '{"device": "mps"}' in keys["mps"]
    assert len({keys["cpu"], keys["cuda"], keys["mps"]}) == 3


def test_a_fixed_subset_seed_trains_every_run_on_that_subset_and_is_logged_apart(monkeypatch):
    from progaug.evaluation import protocol

    splits = tiny_splits()
    train = splits["train"]
    gen = torch.Generator().manual_seed(0)
    sets = GeneratedSets(pro={"preview": (torch.randint(0, 256, (8, 2, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.rand(8, 2, generator=gen))})
    base = dict(n=("2",), seeds=(0, 1), tune_seeds=(5,), curve_epochs=(1,), batch_size=8, p_grid=(0.5,))
    cfg = ProtocolConfig(**base, subset_seed=3)
    a_all = torch.nonzero(train.labels == 0).flatten()
    assert needed_positions(train, "a", cfg).tolist() == sorted(int((a_all == g).nonzero()) for g in class_orders(train, 3)["a"][:2])
    assert len(needed_positions(train, "a", ProtocolConfig(**base))) > 2  # seeds 0, 1, 5 draw their own subsets
    trained = []
    real_train = protocol.train_classifier

    def recording(real, generated, *args, **kwargs):
        trained.append((real.images.clone(), None if generated is None else generated.images.clone()))
        return real_train(real, generated, *args, **kwargs)

    monkeypatch.setattr(protocol, "train_classifier", recording)
    arms = [all_arms("preview")[n] for n in ("real", "+ADD-Pro[preview]")]
    memo = {}
    res = run_protocol(splits, ("a", "b"), sets, arms, cfg, memo=memo)
    expected, chosen = real_subset(train, 3, 2)
    assert len(trained) == planned_runs(cfg, arms) and all(torch.equal(images, expected.images) for images, _ in trained)
    a_pos = [int((a_all == g).nonzero()) for g in chosen["a"]]
    made = sets.pro["preview"][0][a_pos].flatten(0, 1)
    assert all(torch.equal(g, made) for _, g in trained if g is not None)  # generated only from the fixed subset's A tiles
    assert all('{"subset_seed": 3}' in key for key in memo)
    assert "Real subset: every run trains on seed 3's subset" in render_markdown(res)
    other = {}
    run_protocol(splits, ("a", "b"), sets, arms[:1], ProtocolConfig(**base), memo=other)
    assert not set(other) & set(memo) and not any("subset_seed" in key for key in other)  # per-seed runs keep their keys
    with pytest.raises(ValueError, match="`subset_seed` must be >= 0, got -1"):
        ProtocolConfig(subset_seed=-1)
    with pytest.raises(TypeError, match="`subset_seed` must be an int, got bool True"):
        ProtocolConfig(subset_seed=True)


def test_swapped_held_out_roles_choose_on_test_and_score_val_and_are_logged_apart(monkeypatch):
    from progaug.evaluation import protocol

    splits = tiny_splits()
    t = splits["test"]
    splits["test"] = TileSet(t.images[:6], t.labels[:6], t.classes, t.sources[:6])  # 8 val tiles, 6 test tiles
    base = dict(n=("2",), seeds=(0,), tune_seeds=(5,), curve_epochs=(1,), batch_size=8, checkpoint="best")  # one score per run
    chose, scored = [], []
    real_train, real_score = protocol.train_classifier, protocol.score

    def recording_train(real, generated, recipe, spec, seed, val=None, device="cpu"):
        chose.append(val[0])
        return real_train(real, generated, recipe, spec, seed, val, device)

    def recording_score(model, images, labels, device):
        scored.append(images)
        return real_score(model, images, labels, device)

    monkeypatch.setattr(protocol, "train_classifier", recording_train)
    monkeypatch.setattr(protocol, "score", recording_score)
    memo = {}
    arms = [Arm("real"), all_arms("preview")["real, no flips"]]
    res = run_protocol(splits, ("a", "b"), GeneratedSets(pro={}), arms, ProtocolConfig(**base, swap_held_out=True), memo=memo)
    assert chose and all(torch.equal(v, splits["test"].images) for v in chose)  # the curve and the checkpoints: on test/
    assert len(scored) == 2 and all(torch.equal(v, splits["val"].images) for v in scored)  # the reported accuracy: on val/
    assert all('{"swap_held_out": true}' in key for key in memo)
    res["counts"] = {split: splits[split].counts() for split in splits}  # as evaluate_pair records them
    text = render_markdown(res)
    assert "Held-out roles swapped" in text and "On the test split, which chose the checkpoints" in text
    assert "test errors per seed (of 8)" in text  # the scored split's size: val/ here
    runs = [{"seed": s, "val_accuracy": 0.8 + s / 100} for s in range(3)]
    entry = {"arms": {"real": {"runs": runs}, "+copy": {"runs": [{**r, "val_accuracy": r["val_accuracy"] - 0.25} for r in runs]}}}
    assert _choosing_block_lines(entry, "test")[0].endswith("vs real: +copy -25.0 [-25.0, -25.0].")
    assert _choosing_block_lines({"arms": {"real": {"runs": runs}}}, "test") == []
    chose.clear(), scored.clear()
    other = {}
    res = run_protocol(splits, ("a", "b"), GeneratedSets(pro={}), [Arm("real")], ProtocolConfig(**base), memo=other)
    assert all(torch.equal(v, splits["val"].images) for v in chose) and torch.equal(scored[0], splits["test"].images)
    assert not set(other) & set(memo) and not any("swap_held_out" in key for key in other)  # default keys as before
    res["counts"] = {split: splits[split].counts() for split in splits}
    assert "Held-out roles swapped" not in render_markdown(res) and "test errors per seed (of 6)" in render_markdown(res)
    assert _choosing_block_lines(entry, "validation")[0].startswith("On the validation split, which chose the checkpoints")
    assert ProtocolConfig.from_json(ProtocolConfig(swap_held_out=True).to_json()).swap_held_out is True
    with pytest.raises(TypeError, match="`swap_held_out` must be True or False, got 1"):
        ProtocolConfig(swap_held_out=1)


def test_protocol_runs_every_planned_training_and_pairs_by_seed():
    splits = tiny_splits()
    a = 8  # class-A training tiles
    gen = torch.Generator().manual_seed(0)
    sets = GeneratedSets(pro={"preview": (torch.randint(0, 256, (a, 2, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.rand(a, 2, generator=gen))},
                         final=torch.randint(0, 256, (a, 3, 16, 16), dtype=torch.uint8, generator=gen))
    cfg = ProtocolConfig(n=("2", "all"), seeds=(0, 1), tune_seeds=(5,), curve_epochs=(1, 2), batch_size=8, p_grid=(0.2, 0.5),
                         mixup_grid=(0.5,), stain_grid=(0.05,))
    arms = [all_arms("preview")[n] for n in ("real", "+stain", "+ADD-final", "+ADD-Pro[preview]", "+ADD-Pro[preview] filtered")]
    seen = []
    res = run_protocol(splits, ("a", "b"), sets, arms, cfg, on_run=seen.append)
    assert len(seen) == planned_runs(cfg, arms)
    for key, n_a in (("2", 2), ("all", 8)):
        entry = res["curve"][key]
        assert entry["budget"]["epochs"] in (1, 2) and set(entry["budget"]["curve"]) == {"1", "2"}
        assert entry["tuning"]["+ADD-Pro[preview]"]["chosen"] in (0.2, 0.5) and entry["tuning"]["real"]["knob"] is None
        runs = entry["arms"]
        assert all(r["real_images"] == 2 * n_a for r in runs["real"]["runs"])
        assert all(r["generated_images"] == 2 * n_a for r in runs["+ADD-Pro[preview]"]["runs"])  # sources only from the N class-A tiles
        assert all(r["generated_images"] <= 2 * n_a for r in runs["+ADD-Pro[preview] filtered"]["runs"])
        assert all(r["generated_images"] == n_a for r in runs["+ADD-final"]["runs"])
        d = runs["+stain"]["paired"]["real"]
        assert d["per_seed"] == pytest.approx([r["accuracy"] - o["accuracy"] for r, o in zip(runs["+stain"]["runs"], runs["real"]["runs"])])
    assert res["sanity"]["n"] == "all" and "+stain vs real" in res["sanity"]["checks"]
    assert "## Sanity: " in render_markdown(res) and set(res["sanity"]["per_n"]) == {"2", "all"}
    assert render_markdown(res).startswith("# Downstream CNN, a -> b: evaluation seeds 0-1 (2 seeds)\n")


def test_plot_says_when_the_budget_was_fixed(monkeypatch, tmp_path):
    import matplotlib.axes

    splits = tiny_splits()
    sets = GeneratedSets(pro={"preview": (torch.zeros(8, 2, 3, 16, 16, dtype=torch.uint8), torch.rand(8, 2))})
    cfg = ProtocolConfig(n=("2",), seeds=(0,), tune_seeds=(5,), epochs=1, batch_size=8, p_grid=(0.5,))
    res = run_protocol(splits, ("a", "b"), sets, [all_arms("preview")[n] for n in ("real", "+ADD-Pro[preview]")], cfg)
    texts, text = [], matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda ax, x, y, s, *a, **k: texts.append(s) or text(ax, x, y, s, *a, **k))
    plot(res, tmp_path / "fixed.png")
    assert texts == ["budget fixed, no curve run\n(epochs N=2: 1)"] and (tmp_path / "fixed.png").stat().st_size > 0


def test_seed_ranges_name_runs_of_consecutive_seeds():
    assert seed_ranges(range(60)) == "0-59 (60 seeds)"
    assert seed_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8 (6 seeds)"
    assert seed_ranges([3]) == "3 (1 seed)"
    assert seed_ranges([100, 101, 0]) == "100-101, 0 (3 seeds)"  # in the given order


def test_workers_train_side_by_side_and_give_the_same_figures(monkeypatch):
    splits = tiny_splits()
    gen = torch.Generator().manual_seed(0)
    sets = GeneratedSets(pro={"preview": (torch.randint(0, 256, (8, 2, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.rand(8, 2, generator=gen))})
    arms = [all_arms("preview")[n] for n in ("real", "+stain", "+ADD-Pro[preview] filtered")]
    base = dict(n=("2",), seeds=(0, 1), tune_seeds=(5,), curve_epochs=(1, 2), batch_size=8, p_grid=(0.2, 0.5), stain_grid=(0.05,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers take threads // workers = 1, as the single process does here
    try:
        results, seen, memo = [], [], {}
        for workers in (1, 2):
            seen.append([])
            results.append(run_protocol(splits, ("a", "b"), sets, arms, ProtocolConfig(**base, workers=workers), on_run=seen[-1].append,
                                        memo=memo if workers == 2 else None))
        kept = []
        run_protocol(splits, ("a", "b"), sets, arms, ProtocolConfig(**base, workers=2), memo=memo, on_run=kept.append)
    finally:
        torch.set_num_threads(threads)
    cfg = ProtocolConfig(**base)
    assert len(seen[0]) == len(seen[1]) == planned_runs(cfg, arms)  # teachers' lines come back from the workers too
    assert sorted(seen[0]) == sorted(seen[1]) and any("teacher" in line for line in seen[1])

    def figures(res):
        entry = res["curve"]["2"]
        return entry["budget"]["epochs"], entry["tuning"], {a: [{k: v for k, v in r.items() if k != "seconds"} for r in e["runs"]]
                                                              for a, e in entry["arms"].items()}

    assert figures(results[0]) == figures(results[1])
    teachers = sum(line.startswith("teacher ") for line in seen[0])
    assert teachers == 3 and len(kept) == planned_runs(cfg, arms) - teachers  # a resumed run trains no teacher
    assert all("kept from an earlier run" in line for line in kept)
    assert results[1]["config"]["workers"] == 2
    with pytest.raises(ValueError, match="`workers` must be >= 1, got 0"):
        ProtocolConfig(workers=0)


_ORPHAN_SCRIPT = """
import os, signal, time
import torch
from progaug.data.tiles import TileSet
from progaug.evaluation.protocol import GeneratedSets, ProtocolConfig
from progaug.evaluation.workers import start_pool

if __name__ == "__main__":
    tiles = TileSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]), ("a", "b"), tuple("0123"))
    pool = start_pool(1, ({"train": tiles, "val": tiles, "test": tiles}, ("a", "b"), GeneratedSets(pro={}), ProtocolConfig(), "cpu"), 1)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)  # a training the worker holds
    time.sleep(1)  # the worker has begun it
    os.kill(os.getpid(), signal.SIGKILL)  # the run is killed: no cleanup, no shutdown of the pool
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_runs_workers_end_with_it(tmp_path):
    import subprocess
    import time

    script = tmp_path / "killed_run.py"
    script.write_text(_ORPHAN_SCRIPT)
    out = tmp_path / "out.txt"
    with open(out, "w") as f:  # a file, not a pipe: an orphaned worker would hold a pipe open
        code = subprocess.run([sys.executable, str(script)], stdout=f, stderr=subprocess.STDOUT, timeout=120,
                              check=False).returncode
    assert code == -signal.SIGKILL, out.read_text()
    worker = int(out.read_text().split()[0])
    deadline = time.monotonic() + 20
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the worker outlived its killed parent"


def test_budget_doubles_while_a_standard_regulariser_loses(monkeypatch):
    from progaug.evaluation import protocol

    calls = []

    def fake_checks(arms):  # the first budget "loses", the doubled one holds
        calls.append(arms["+stain"]["runs"][0]["epochs"])
        return {"+stain vs real": {"verdict": "worse" if len(calls) == 1 else "not told apart"}}

    monkeypatch.setattr(protocol, "_sanity_checks", fake_checks)
    splits = tiny_splits()
    sets = GeneratedSets(pro={"preview": (torch.zeros(8, 2, 3, 16, 16, dtype=torch.uint8), torch.rand(8, 2))})
    cfg = ProtocolConfig(n=("2",), seeds=(0,), tune_seeds=(5,), curve_epochs=(1,), batch_size=8, p_grid=(0.5,), stain_grid=(0.05,))
    arms = [all_arms("preview")[n] for n in ("real", "+stain", "+ADD-Pro[preview]")]
    seen, added = [], []
    entry = run_protocol(splits, ("a", "b"), sets, arms, cfg, on_run=seen.append, on_plan=added.append)["curve"]["2"]
    assert added == [1 + (1 + 1)]  # real's seed, then +stain's grid on the tuning seed and its seed, again at 2 epochs
    assert len(seen) == planned_runs(cfg, arms) + sum(added)  # the progress count meets the trainings made
    assert entry["budget"]["growth"] == [{"epochs": 1, "losing": ["+stain vs real"]}, {"epochs": 2, "losing": []}]
    assert entry["budget"]["epochs"] == 2 and calls[:2] == [1, 2]
    assert {r["epochs"] for arm in entry["arms"].values() for r in arm["runs"]} == {2}  # generated arm only at the grown budget
    assert list(entry["arms"]) == ["real", "+stain", "+ADD-Pro[preview]"]
    assert "At 1 epochs +stain vs real lost beyond the interval: the budget doubled." in "\n".join(
        protocol_report_lines(entry["budget"]))
    with pytest.raises(ValueError, match="`budget_doublings` must be >= 0, got -1"):
        ProtocolConfig(budget_doublings=-1)


def protocol_report_lines(budget: dict) -> list[str]:
    from progaug.evaluation.report import _budget_lines

    return _budget_lines("2", budget)


def test_protocol_refuses_an_arm_without_its_generated_images():
    splits = tiny_splits()
    with pytest.raises(ValueError, match=r"arm '\+ADD-Pro\[paper\]' needs progressive images made with measure 'paper'"):
        run_protocol(splits, ("a", "b"), GeneratedSets(pro={}), [all_arms("preview")["+ADD-Pro[paper]"]], ProtocolConfig())
    with pytest.raises(ValueError, match="class 'c' of the pair is not among the train classes"):
        run_protocol(splits, ("a", "c"), GeneratedSets(pro={}), [Arm("real")], ProtocolConfig())


def _fake_entry(diffs: dict[str, list[float]]) -> dict:
    real = [{"accuracy": 0.8, "f1_macro": 0.8} for _ in range(5)]
    arms = {"real": {"runs": real, "paired": {}, "paired_f1": {}}}
    for name, d in diffs.items():
        runs = [{"accuracy": 0.8 + x, "f1_macro": 0.8 + x} for x in d]
        arms[name] = {"runs": runs, "paired": {"real": paired([r["accuracy"] for r in runs], [0.8] * 5)},
                      "paired_f1": {"real": paired([r["f1_macro"] for r in runs], [0.8] * 5)}}
    return {"arms": arms}


def test_sanity_calls_a_losing_regulariser_under_training():
    entry = _fake_entry({"+Mixup/CutMix": [-0.05, -0.06, -0.04, -0.05, -0.07], "+stain": [0.01, -0.01, 0.0, 0.02, -0.02]})
    s = sanity({"curve": {"all": entry}})
    assert not s["converged"] and s["message"].startswith("UNDER-TRAINED at N = all (+Mixup/CutMix vs real loses")
    fine = sanity({"curve": {"all": _fake_entry({"+Mixup/CutMix": [0.01, -0.01, 0.0, 0.02, -0.02]})}})
    assert fine["converged"]


def test_sanity_without_a_standard_arm_says_it_checked_nothing():
    """A run of real and a generated arm only must not call itself converged (session 25's N = all ViT run did)."""
    from progaug.evaluation.report import _arm_table

    bare = _fake_entry({"+ADD": [0.03, 0.04, 0.035, 0.03, 0.04]})
    s = sanity({"curve": {"all": bare}})
    assert s["converged"] is None and s["converged_n"] == {"all": None} and s["message"].startswith("NOT CHECKED: no standard arm")
    mixed = sanity({"curve": {"25": _fake_entry({"+stain": [0.01, -0.01, 0.0, 0.02, -0.02]}), "all": bare}})
    assert mixed["converged"] is None and mixed["converged_n"] == {"25": True, "all": None}
    assert mixed["message"] == "converged where checked; NOT CHECKED at N = all (no standard arm there)"
    losing = sanity({"curve": {"25": _fake_entry({"+stain": [-0.05, -0.06, -0.04, -0.05, -0.07]}), "all": bare}})
    assert losing["converged"] is False and losing["message"].startswith("UNDER-TRAINED at N = 25")
    for name, arm in bare["arms"].items():
        arm["runs"] = [dict(r, real_images=10, generated_images=5 * (name != "real"), errors=1) for r in arm["runs"]]
        arm.update(accuracy={"mean": 0.8, "low": 0.7, "high": 0.9}, f1_macro={"mean": 0.8, "low": 0.7, "high": 0.9})
    bare["tuning"] = {name: {"knob": None} for name in bare["arms"]}
    rows = _arm_table(bare, 10, None)
    assert "| helps (sanity not checked at this N) |" in rows[3] and "under-trained" not in "".join(rows)


def test_sanity_block_names_a_shared_direction_where_flips_lose():
    from progaug.evaluation.report import _sanity_lines

    oriented = {"stroma": {"tiles": 5, "bias": 0.43, "angle": -9.5, "coherence": 0.55},
                "tumour": {"tiles": 5, "bias": 0.1, "angle": 22.8, "coherence": 0.24}}
    without_flips_wins = _fake_entry({"real, no flips": [0.05, 0.06, 0.04, 0.05, 0.07]})
    res = {"curve": {"25": without_flips_wins}, "orientation": oriented}
    res["sanity"] = sanity(res)
    text = "\n".join(_sanity_lines(res))
    assert "flips/rotations vs none loses" in res["sanity"]["message"]
    assert "stroma 0.43 (gradient angle -10 deg), tumour 0.10 (gradient angle +23 deg)" in text
    assert "Flips/rotations lose at N = 25 while the stroma tiles share a direction" in text
    # flips level: the figures, no sentence; no class above the cue: no sentence; an old report: nothing
    level = {"curve": {"25": _fake_entry({"real, no flips": [0.01, -0.01, 0.0, 0.02, -0.02]})}, "orientation": oriented}
    level["sanity"] = sanity(level)
    assert "Orientation of the training tiles" in "\n".join(_sanity_lines(level)) and "share a direction" not in "\n".join(_sanity_lines(level))
    flat = dict(res, orientation={c: dict(o, bias=0.05) for c, o in oriented.items()})
    assert "share a direction" not in "\n".join(_sanity_lines(flat))
    old = {k: v for k, v in res.items() if k != "orientation"}
    assert "Orientation" not in "\n".join(_sanity_lines(old))


def test_judge_needs_two_points_on_accuracy_and_f1_with_intervals_above_zero():
    entry = _fake_entry({"big": [0.03, 0.04, 0.035, 0.03, 0.04], "small": [0.01, 0.012, 0.011, 0.01, 0.012],
                         "bad": [-0.03, -0.04, -0.035, -0.03, -0.04], "noisy": [0.1, -0.08, 0.05, -0.02, 0.0]})
    assert [judge(entry, n) for n in ("big", "small", "bad", "noisy")] == ["helps", "not told apart", "hurts", "not told apart"]


# ------------------------------------------------------------------------------------------ selection


def test_agreement_mask_and_calibrated_labels():
    soft = torch.tensor([0.0, 0.5, 0.9, 0.9])
    teacher = torch.tensor([0.1, 0.9, 0.2, 0.95])
    assert agreement_mask(soft, teacher, 0.5).tolist() == [True, True, False, True]
    assert agreement_mask(soft, teacher, 0.3).tolist() == [True, False, False, True]
    assert torch.allclose(calibrated_labels(soft, teacher, 0.5), (soft + teacher) / 2)
    assert torch.equal(calibrated_labels(soft, teacher, 0.0), soft)
    with pytest.raises(ValueError, match=r"`margin` must lie in \[0, 1\], got 2"):
        agreement_mask(soft, teacher, 2)
    with pytest.raises(TypeError, match="`margin` must be a number in \\[0, 1\\], got str '0.5'"):
        agreement_mask(soft, teacher, "0.5")
    with pytest.raises(ValueError, match=r"`weight` must lie in \[0, 1\], got nan"):
        calibrated_labels(soft, teacher, float("nan"))
    with pytest.raises(ValueError, match="must have one shape"):
        agreement_mask(soft, teacher[:2])


def test_selective_filter_validates_its_fields():
    from progaug.selection import SelectiveFilter

    chosen = SelectiveFilter(margin=0.25, teacher_epochs=3, seed=7)
    assert SelectiveFilter.from_json(chosen.to_json()) == chosen != SelectiveFilter()
    with pytest.raises(ValueError, match=r"`margin` must lie in \[0, 1\], got 1.5"):
        SelectiveFilter(margin=1.5)
    with pytest.raises(TypeError, match="`teacher_epochs` must be an int, got float 2.0"):
        SelectiveFilter(teacher_epochs=2.0)
    with pytest.raises(ValueError, match="`teacher_epochs` must be >= 1, got 0"):
        SelectiveFilter(teacher_epochs=0)
    with pytest.raises(TypeError, match="`seed` must be an int, got str '1'"):
        SelectiveFilter(seed="1")


def test_make_sets_generates_only_the_needed_tiles_and_reuses_them(tmp_path, capsys):
    from conftest import make_pair_dir, random_tiles
    from progaug.evaluation.pipeline import GenerationSettings, make_sets
    from progaug.hub import load_pair

    pair = load_pair(make_pair_dir(tmp_path / "pair"))
    arms = [all_arms()["+ADD-Pro[paper]"], all_arms()["+IDDPM-style"]]
    settings = GenerationSettings(steps=4, num_levels=2, bf16=False, max_batch=8, cache_dir=str(tmp_path / "cache"))
    needed = torch.tensor([1, 3])
    sets, cost = make_sets(pair, random_tiles(5), arms, settings, needed=needed)
    images, labels = sets.pro["paper"]
    assert images.shape == (5, 2, 3, 32, 32) and labels.shape == (5, 2)
    made = images.flatten(1).amax(dim=1) > 0
    assert made.tolist() == [False, True, False, True, False]  # rows of unneeded tiles stay zero
    assert (labels[needed, -1] == 1.0).all() and (labels[[0, 2, 4]] == 0).all()
    assert (sets.iddpm.flatten(1).amax(dim=1) > 0).tolist() == [False, True, False, True, False]
    assert "progressive [paper]: 2/2 sources" in capsys.readouterr().out
    again, _ = make_sets(pair, random_tiles(5), arms, settings, needed=needed)
    assert "progressive" not in capsys.readouterr().out  # reused from the cache, not made again
    assert torch.equal(again.pro["paper"][0], images)


def test_make_sets_reads_the_whole_set_when_every_tile_is_kept(tmp_path, capsys):
    from conftest import make_pair_dir, random_tiles
    from progaug.evaluation.pipeline import GenerationSettings, make_sets
    from progaug.hub import load_pair

    pair = load_pair(make_pair_dir(tmp_path / "pair"))
    arms = [all_arms()["+ADD-Pro[paper]"], all_arms()["+IDDPM-style"]]
    settings = GenerationSettings(steps=4, num_levels=2, bf16=False, max_batch=8, cache_dir=str(tmp_path / "cache"))
    small, _ = make_sets(pair, random_tiles(5), arms, settings, needed=torch.tensor([1, 3]))
    assert "progressive [paper]: 2/2 sources" in capsys.readouterr().out  # only the needed tiles: the whole set is not kept
    full, _ = make_sets(pair, random_tiles(5), arms, settings)
    assert "progressive [paper]: 5/5 sources" in capsys.readouterr().out
    counted = []
    again, _ = make_sets(pair, random_tiles(5), arms, settings, needed=torch.tensor([1, 3]), progress=counted.append)
    out = capsys.readouterr().out
    assert "progressive" not in out and "unconditional:" not in out  # the whole set is read, nothing made
    assert sum(counted) == 2  # progress counts the needed tiles, as the caller's bar does, not the 5 read
    assert torch.equal(again.pro["paper"][0], full.pro["paper"][0]) and torch.equal(again.iddpm, full.iddpm)
    assert (again.pro["paper"][0].flatten(1).amax(dim=1) > 0).all()  # every tile's row, not only the needed ones


def test_run_logs_shared_by_two_processes_see_each_others_trainings_and_survive_a_torn_line(tmp_path):
    from progaug.evaluation.pipeline import RunLog

    path = tmp_path / "runs.jsonl"
    first, second = RunLog(path, "s"), RunLog(path, "s")
    first["tuning"] = {"val_accuracy": 0.5}
    assert "tuning" in second and second["tuning"] == {"val_accuracy": 0.5}  # read since, not trained again
    assert "missing" not in second and "tuning" not in RunLog(path, "other scope")
    with path.open("a") as f:  # a process killed in the middle of a line, then another one's whole line
        f.write('{"scope": "s", "key": "half", "res')
    assert "half" not in second
    first["after"] = {"val_accuracy": 0.7}
    assert "after" in second and "half" not in second
    assert set(RunLog(path, "s")) == {"tuning", "after"}
