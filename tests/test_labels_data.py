"""Class-balanced labels and quadrant completion (ppvae.data.labels), checked row by row."""

import pytest
import torch

from ppvae.data import DataError, Dataset, load_dataset
from ppvae.data.labels import MASKED, quadrant_mask, quadrants, with_labels


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("n_labels", [10, 100, 600])
def test_labels_are_class_balanced_and_the_rest_all_nan(digits, n_labels):
    data = with_labels(digits, n_labels, seed=3)
    x, y = data.train
    assert torch.equal(x, digits.train)
    labelled = ~y.isnan().any(1)
    assert bool((y.isnan().all(1) == ~labelled).all())  # a row is all NaN or none
    assert int(labelled.sum()) == n_labels
    counts = torch.bincount(digits.train_labels[labelled], minlength=10)
    assert counts.tolist() == [n_labels // 10] * 10
    # the one-hot rows name each row's own class
    assert torch.equal(y[labelled].argmax(1), digits.train_labels[labelled])
    assert torch.equal(y[labelled].sum(1), torch.ones(n_labels))
    x_test, y_test = data.test
    assert torch.equal(x_test, digits.test) and torch.equal(y_test.argmax(1), digits.test_labels)


def test_label_draws_are_seeded(digits):
    def rows(seed):
        return (~with_labels(digits, 100, seed=seed).train[1].isnan().any(1)).nonzero()

    assert torch.equal(rows(0), rows(0))
    assert not torch.equal(rows(0), rows(1))


@pytest.mark.parametrize(
    ("n_labels", "says"),
    [(7, "positive multiple of 10"), (0, "positive multiple of 10"), (3000, "more than the 1437")],
)
def test_bad_label_counts_are_one_line(digits, n_labels, says):
    with pytest.raises(DataError, match=says) as err:
        with_labels(digits, n_labels)
    assert "\n" not in str(err.value)


def test_a_class_too_small_for_its_share_is_named():
    x = torch.rand(6, 4)
    data = Dataset("tiny", x, x, None, torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="class 1 has 2 training rows"):
        with_labels(data, 6)


@pytest.mark.parametrize(
    ("given", "rows"),
    [
        (1, ["0000", "0000", "1100", "1100"]),
        (2, ["1100", "1100", "1100", "1100"]),
        (3, ["1111", "1111", "1100", "1100"]),
    ],
)
def test_quadrant_masks_are_pyros(given, rows):
    expected = torch.tensor([[c == "1" for c in r] for r in rows])
    assert torch.equal(quadrant_mask(4, 4, given), expected)


@pytest.mark.parametrize("given", [1, 2, 3])
def test_quadrants_split_each_image_into_inputs_and_outputs(digits, given):
    inputs, outputs = quadrants(digits, given).train
    seen = quadrant_mask(8, 8, given).reshape(-1)
    assert bool((inputs[:, ~seen] == MASKED).all()) and bool((outputs[:, seen] == MASKED).all())
    assert torch.equal(inputs[:, seen], digits.train[:, seen])
    assert torch.equal(outputs[:, ~seen], digits.train[:, ~seen])
    assert int(seen.sum()) == 16 * given


def test_quadrants_refuse_four_and_non_images():
    with pytest.raises(DataError, match="1, 2 or 3"):
        quadrant_mask(8, 8, 4)
    with pytest.raises(DataError, match="not images"):
        quadrants(load_dataset("synthetic-ppca"), 1)
