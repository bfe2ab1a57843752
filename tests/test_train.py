"""Tests for edgesplit.model.train: a small model learns digits, reproducibly, and mismatches fail clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesplit.model.data import load_dataset
from edgesplit.errors import DataError, EdgesplitError, InputShapeError
from edgesplit.model.train import TrainResult, evaluate, train_classifier


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def linear(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def small_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_linear_model_learns_digits(digits) -> None:
    model = linear()
    result = train_classifier(model, digits, epochs=5, lr=3e-2, progress=False)
    assert isinstance(result, TrainResult)
    assert result.epochs == 5 and len(result.train_loss) == 5
    assert result.test_accuracy >= 0.85
    assert result.train_loss[-1] < result.train_loss[0] / 2
    assert result.seconds > 0
    assert not model.training
    assert evaluate(model, digits.test_images, digits.test_labels) == result.test_accuracy


def test_conv_model_learns_digits(digits) -> None:
    result = train_classifier(small_conv(), digits, epochs=4, lr=1e-2, batch_size=32, progress=False)
    assert result.test_accuracy >= 0.9


def test_training_is_reproducible(digits) -> None:
    a = train_classifier(small_conv(), digits, epochs=2, lr=1e-2, seed=3, progress=False)
    b = train_classifier(small_conv(), digits, epochs=2, lr=1e-2, seed=3, progress=False)
    assert a.train_loss == b.train_loss and a.test_accuracy == b.test_accuracy
    c = train_classifier(small_conv(), digits, epochs=2, lr=1e-2, seed=4, progress=False)
    assert c.train_loss != a.train_loss  # the seed drives shuffling and dropout


def test_progress_bar_runs(digits, capsys) -> None:
    small = load_dataset("digits", limit=64)
    result = train_classifier(linear(), small, epochs=2, batch_size=16, progress=True)
    assert len(result.train_loss) == 2
    assert "epoch 2/2" in capsys.readouterr().err  # on stderr, so --json on stdout stays clean


def test_num_classes_mismatch(digits) -> None:
    with pytest.raises(DataError) as exc:
        train_classifier(linear(num_classes=5), digits, epochs=1, progress=False)
    message = str(exc.value)
    assert message == ("model outputs 5 classes but data set digits has 10; "
                       "build the model with num_classes=10")


def test_input_shape_mismatch(digits) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(InputShapeError, match=r"\(1, 8, 8\)") as exc:
        train_classifier(model, digits, epochs=1, progress=False)
    assert "\n" not in str(exc.value)


def test_bad_arguments(digits) -> None:
    with pytest.raises(EdgesplitError, match="epochs"):
        train_classifier(linear(), digits, epochs=0, progress=False)
    with pytest.raises(EdgesplitError, match="learning rate"):
        train_classifier(linear(), digits, epochs=1, lr=0.0, progress=False)


def test_evaluate_restores_mode_and_counts(digits) -> None:
    model = linear()
    model.train()
    acc = evaluate(model, digits.test_images, digits.test_labels, batch_size=7)
    assert 0.0 <= acc <= 1.0 and model.training
    logits = model(digits.test_images)
    expected = (logits.argmax(1) == digits.test_labels).float().mean().item()
    assert acc == pytest.approx(expected)
