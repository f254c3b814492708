import numpy as np
import pytest

from tubervae.data.splits import BAD, GOOD, UNLABELLED, encode_labels, fingerprint, guide_mask, split_indices


def make_labels(n_good=60, n_bad=240, n_unlabelled=50, seed=0):
    labels = np.array([GOOD] * n_good + [BAD] * n_bad + [UNLABELLED] * n_unlabelled, dtype=np.int8)
    return np.random.default_rng(seed).permutation(labels)


def test_splits_are_disjoint_stratified_and_deterministic():
    labels = make_labels()
    s1 = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=100, seed=3)
    s2 = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=100, seed=3)
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])
    train, test = set(s1["train"]), set(s1["test"])
    assert not train & test and len(train | test) == len(labels)
    assert (labels[s1["test"]] == GOOD).sum() == 12 and (labels[s1["test"]] == BAD).sum() == 48
    assert (labels[s1["test"]] == UNLABELLED).sum() == 10  # unlabelled photos are held out too
    assert set(s1["labelled"]) <= train and set(s1["udr_probe"]) <= train
    assert (labels[s1["labelled"]] == GOOD).sum() == 10 and (labels[s1["labelled"]] == BAD).sum() == 10
    assert len(set(s1["udr_probe"])) == 100


def test_photos_without_labels_still_hold_out_a_test_split():
    labels = np.full(300, UNLABELLED, np.int8)
    s = split_indices(labels, test_fraction=0.2, labelled_per_class=100, probe_size=100, seed=0)
    assert len(s["test"]) == 60 and len(s["train"]) == 240
    assert len(s["labelled"]) == 0 and set(s["udr_probe"]) <= set(s["train"])


def test_an_all_labelled_set_splits_as_before_unlabelled_photos_joined_the_draw():
    """The draw over good and bad alone, by hand: adding the unlabelled class must not move it."""
    labels = make_labels(n_unlabelled=0)
    rng = np.random.default_rng(5)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in (GOOD, BAD)]
    test = np.sort(np.concatenate([m[: round(0.2 * len(m))] for m in members]))
    s = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=50, seed=5)
    np.testing.assert_array_equal(s["test"], test)


def test_another_seed_gives_another_split():
    labels = make_labels()
    a = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=50, seed=0)
    b = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=50, seed=1)
    assert not np.array_equal(a["test"], b["test"])


def test_probe_larger_than_train_is_a_clear_error():
    with pytest.raises(ValueError, match="UDR probe needs 1000 training images"):
        split_indices(make_labels(), test_fraction=0.2, labelled_per_class=10, probe_size=1000, seed=0)


def test_encode_labels():
    np.testing.assert_array_equal(encode_labels(["good", "BAD", "", None, float("nan")]), [0, 1, -1, -1, -1])
    with pytest.raises(ValueError, match="'rotten' at row 1"):
        encode_labels(["good", "rotten"])


def test_fingerprint_changes_with_content_dtype_and_shape():
    a = np.zeros((2, 3), np.uint8)
    assert fingerprint(a) == fingerprint(a.copy())
    b = a.copy()
    b[0, 0] = 1
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) != fingerprint(a.reshape(3, 2))
    assert fingerprint(a) != fingerprint(a.astype(np.int16))


def test_guide_mask_takes_a_seeded_share_of_each_class_and_never_an_unlabelled_row():
    labels = np.array([GOOD] * 10 + [BAD] * 6 + [UNLABELLED] * 4)
    guide = guide_mask(labels, fraction=0.5, seed=3)
    assert guide.dtype == bool and guide.shape == labels.shape
    assert (guide[labels == GOOD].sum(), guide[labels == BAD].sum(), guide[labels == UNLABELLED].sum()) == (5, 3, 0)
    assert np.array_equal(guide, guide_mask(labels, fraction=0.5, seed=3))
    assert not np.array_equal(guide, guide_mask(labels, fraction=0.5, seed=4))
    assert not guide_mask(labels, fraction=0.0, seed=3).any()
    assert guide_mask(labels, fraction=0.9, seed=3)[labels >= 0].sum() == 9 + 5


def test_guide_mask_leaves_the_other_splits_as_they_were():
    labels = np.array([GOOD, BAD] * 50)
    before = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=20, seed=0)
    guide_mask(labels[before["labelled"]], fraction=0.5, seed=0)
    after = split_indices(labels, test_fraction=0.2, labelled_per_class=10, probe_size=20, seed=0)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("fraction", [1.0, -0.1, True, "half"])
def test_guide_mask_refuses_a_share_outside_0_to_1(fraction):
    with pytest.raises(ValueError, match=r"fraction \(preprocess.guide_fraction\) must be in \[0, 1\)"):
        guide_mask(np.array([GOOD, BAD]), fraction=fraction, seed=0)
