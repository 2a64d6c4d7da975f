import pytest
import torch
import torch.nn.functional as F

from progaug.losses import (
    BinarySoftTargetLoss,
    SoftLabelCrossEntropy,
    indices_to_one_hot,
    smooth_soft_targets,
    soft_label_to_row,
    soft_rows_to_indices,
)


class TestConversions:
    def test_round_trip_indices(self):
        idx = torch.tensor([0, 2, 1])
        rows = indices_to_one_hot(idx, 3)
        assert rows.sum(1).tolist() == [1, 1, 1] and torch.equal(soft_rows_to_indices(rows), idx)

    def test_soft_label_rows(self):
        rows = soft_label_to_row(torch.tensor([0.0, 0.3, 1.0]), source_index=0, target_index=1, num_classes=2)
        torch.testing.assert_close(rows, torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.0, 1.0]]))

    def test_soft_label_rows_keep_dtype_and_device(self):
        labels = torch.tensor([0.1, 0.25], dtype=torch.float64)
        rows = soft_label_to_row(labels, source_index=2, target_index=0, num_classes=3)
        assert rows.dtype == torch.float64 and rows.device == labels.device
        assert torch.equal(rows, torch.tensor([[0.1, 0.0, 0.9], [0.25, 0.0, 0.75]], dtype=torch.float64))
        assert soft_label_to_row([0, 1], 0, 1, 2).dtype == torch.float32

    def test_soft_label_rows_match_the_float32_arithmetic(self):
        """float32 labels give the bits ``1 - L`` has in float32; float64 labels, ``1 - L`` rounded once."""
        labels = torch.rand(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
        rows = soft_label_to_row(labels.float(), 0, 1, 2)
        assert torch.equal(rows, torch.stack([1 - labels.float(), labels.float()], dim=1))
        assert torch.equal(soft_label_to_row(labels, 0, 1, 2).float(), torch.stack([1 - labels, labels], dim=1).float())

    @pytest.mark.parametrize(
        "source,target,k,error,match",
        [
            (0, 2, 2, ValueError, r"`target_index` must lie in \[0, 2\), got 2"),
            (-1, 1, 2, ValueError, r"`source_index` must be >= 0, got -1"),
            (1, 1, 3, ValueError, r"`source_index` and `target_index` must differ, both are 1"),
            (0, 1.0, 2, TypeError, r"`target_index` must be an int"),
            (0, 1, "2", TypeError, r"`num_classes` must be an int"),
        ],
    )
    def test_soft_label_row_indices(self, source, target, k, error, match):
        with pytest.raises(error, match=match):
            soft_label_to_row(torch.tensor([0.5]), source, target, k)

    def test_bad_values(self):
        with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 2\), got \[0, 2\]"):
            indices_to_one_hot(torch.tensor([0, 2]), 2)
        with pytest.raises(TypeError, match=r"`indices` must be a \(B,\) integer tensor, got torch.float32"):
            indices_to_one_hot(torch.tensor([0.0, 1.0]), 2)
        with pytest.raises(ValueError, match=r"`indices` must be a \(B,\) integer tensor, got torch.int64 of shape \(1, 2\)"):
            indices_to_one_hot(torch.tensor([[0, 1]]), 2)
        with pytest.raises(ValueError, match=r"`soft_label` must lie in \[0, 1\]"):
            soft_label_to_row(torch.tensor([1.5]), 0, 1, 2)
        with pytest.raises(ValueError, match=r"`soft_label` must lie in \[0, 1\], got \[nan\]"):
            soft_label_to_row(torch.tensor([float("nan")]), 0, 1, 2)
        with pytest.raises(ValueError, match=r"`smoothing` must be in \[0, 1\)"):
            SoftLabelCrossEntropy(smoothing=1.0)
        with pytest.raises(ValueError, match=r"`smoothing` must be in \[0, 1\), got nan"):
            BinarySoftTargetLoss(smoothing=float("nan"))
        with pytest.raises(TypeError, match="`smoothing` must be a number, got str '0.1'"):
            SoftLabelCrossEntropy(smoothing="0.1")


class TestSoftLabelCrossEntropy:
    def test_equals_torch_cross_entropy_with_probabilities(self):
        logits, target = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), -1)
        torch.testing.assert_close(SoftLabelCrossEntropy()(logits, target), F.cross_entropy(logits, target))

    def test_index_targets_and_smoothing_match_torch(self):
        logits, idx = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
        ours = SoftLabelCrossEntropy(smoothing=0.1)(logits, idx)
        torch.testing.assert_close(ours, F.cross_entropy(logits, idx, label_smoothing=0.1))

    def test_two_class_smoothing_on_soft_row(self):
        torch.testing.assert_close(smooth_soft_targets(torch.tensor([[0.7, 0.3]]), 0.1), torch.tensor([[0.68, 0.32]]))

    def test_shape_error(self):
        with pytest.raises(ValueError, match=r"`target` must have shape \(2, 3\)"):
            SoftLabelCrossEntropy()(torch.randn(2, 3), torch.rand(2, 2))


class TestBinary:
    def test_matches_bce(self):
        logits, labels = torch.randn(4), torch.tensor([0.0, 0.25, 0.5, 1.0])
        torch.testing.assert_close(BinarySoftTargetLoss()(logits, labels), F.binary_cross_entropy_with_logits(logits, labels))
        rows = soft_label_to_row(labels, 0, 1, 2)
        torch.testing.assert_close(BinarySoftTargetLoss()(logits[:, None], rows), BinarySoftTargetLoss()(logits, labels))

    def test_minimum_at_the_soft_label(self):
        loss = BinarySoftTargetLoss()
        logit = torch.logit(torch.tensor([0.3]))
        assert loss(logit, torch.tensor([0.3])) < loss(logit + 0.1, torch.tensor([0.3]))
        assert loss(logit, torch.tensor([0.3])) < loss(logit - 0.1, torch.tensor([0.3]))
