import numpy as np
import pytest

from harness import metrics as M

R = np.array([[0.8, 0.1, 0.0],
              [0.5, 0.9, 0.2],
              [0.4, 0.6, 1.0]])


def test_average_performance_is_mean_of_last_row():
    assert M.average_performance(R) == pytest.approx((0.4 + 0.6 + 1.0) / 3)


def test_forgetting_is_diagonal_minus_last_row():
    np.testing.assert_allclose(M.forgetting_per_task(R), [0.8 - 0.4, 0.9 - 0.6, 0.0])
    assert M.forgetting(R) == pytest.approx((0.4 + 0.3 + 0.0) / 3)


def test_no_forgetting_when_performance_is_kept():
    R2 = np.triu(np.ones((3, 3)))
    R2[np.tril_indices(3)] = 1.0
    assert M.forgetting(R2) == 0.0
    assert M.average_performance(R2) == 1.0


def test_just_trained_is_the_mean_of_the_diagonal():
    assert M.just_trained(R) == pytest.approx((0.8 + 0.9 + 1.0) / 3)
    # kept performance and just-trained performance part when a method forgets
    assert M.just_trained(R) - M.average_performance(R) == pytest.approx(M.forgetting(R))


def test_negative_forgetting_means_backward_transfer():
    R2 = np.array([[0.2, 0.0], [0.7, 0.5]])
    assert M.forgetting(R2) == pytest.approx((0.2 - 0.7) / 2)


def test_forward_transfer_against_reference():
    ft = M.forward_transfer_per_task(np.array([0.5, 0.2, 0.9]), np.array([0.5, 0.6, np.nan]))
    assert ft[0] == pytest.approx(0.0)
    assert ft[1] == pytest.approx((0.2 - 0.6) / 0.4)
    assert np.isnan(ft[2])
    assert M.forward_transfer(np.array([0.5, 0.2, 0.9]), np.array([0.5, 0.6, np.nan])) == pytest.approx(-0.5)


def test_forward_transfer_undefined_for_perfect_reference_or_no_reference():
    assert np.isnan(M.forward_transfer_per_task(np.array([1.0]), np.array([1.0]))[0])
    assert np.isnan(M.forward_transfer(np.array([0.3]), np.array([np.nan])))


def test_auc_is_mean_of_curve():
    assert M.auc(np.array([0.0, 0.5, 1.0])) == pytest.approx(0.5)


def test_non_square_matrix_is_rejected():
    with pytest.raises(AssertionError, match="square"):
        M.average_performance(np.zeros((2, 3)))


def test_bootstrap_ci_brackets_the_mean():
    v = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    lo, hi = M.bootstrap_ci(v, 0.9)
    assert lo < v.mean() < hi


def test_summarize_keys():
    out = M.summarize(R, curves=[np.array([0.4, 0.8]), np.array([0.9]), np.array([1.0])],
                      ref_aucs=np.array([0.6, np.nan, np.nan]))
    assert out["cl/average_performance"] == pytest.approx(2 / 3)
    assert out["cl/just_trained"] == pytest.approx(0.9)
    assert out["cl/forward_transfer"] == pytest.approx((0.6 - 0.6) / 0.4)
