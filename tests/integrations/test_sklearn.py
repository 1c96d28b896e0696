"""scikit-learn transformers: positive and optimal positive random features of the RBF kernel."""

import math

import numpy as np
import pytest

from tests.helpers.numerics import Z

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'performers[sklearn]')")

from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import check_estimator

from performers.integrations.sklearn import OptimalPositiveRandomFeatures, PositiveRandomFeatures
from performers.ops.theory import optimal_positive_parameter

CLASSES = [PositiveRandomFeatures, OptimalPositiveRandomFeatures]


@pytest.mark.parametrize("cls", CLASSES)
def test_check_estimator(cls):
    check_estimator(cls())


@pytest.mark.parametrize("cls", CLASSES)
def test_gram_matrix_unbiased(cls):
    # iid rows: each feature i gives an independent unbiased estimate M·Φ_i(x)Φ_i(y) of the
    # kernel, so the standard error of their mean comes from the sample of M features.
    rng = np.random.RandomState(0)
    x = 0.6 * rng.randn(5, 3)
    m, gamma = 4000, 0.7
    features = cls(m, gamma=gamma, random_state=1).fit(x).transform(x)
    per_feature = m * features[:, None, :] * features[None, :, :]  # (5, 5, M)
    estimate = per_feature.mean(-1)
    se = per_feature.std(-1, ddof=1) / math.sqrt(m)
    exact = rbf_kernel(x, gamma=gamma)
    assert np.all(np.abs(estimate - exact) < Z * se)
    assert np.all(features > 0)


def test_optimal_parameter_is_fitted_from_the_pair_mean():
    rng = np.random.RandomState(2)
    x = rng.randn(40, 6) + 3.0
    est = OptimalPositiveRandomFeatures(16, gamma=0.2, random_state=0).fit(x)
    np.testing.assert_allclose(est.mean_, x.mean(0))
    z = math.sqrt(2 * 0.2) * (x - x.mean(0))
    brute = ((z[:, None, :] + z[None, :, :]) ** 2).sum(-1).mean()
    assert est.pair_mean_sq_norm_ == pytest.approx(brute, rel=1e-12)
    assert est.a_ == pytest.approx(optimal_positive_parameter(brute, 6).item(), rel=1e-12)
    assert est.a_ < 0
    plain = OptimalPositiveRandomFeatures(16, gamma=0.2, center=False, random_state=0).fit(x)
    assert plain.pair_mean_sq_norm_ > est.pair_mean_sq_norm_  # centering lowers φ̄
    np.testing.assert_array_equal(plain.random_weights_, est.random_weights_)


def test_options_dtype_and_feature_names():
    x = np.random.RandomState(3).rand(20, 5).astype(np.float32)
    est = PositiveRandomFeatures(7, gamma="scale", orthogonal=True, random_state=0).fit(x)
    assert est.gamma_ == pytest.approx(1.0 / (5 * x.var()))
    out = est.transform(x)
    assert out.dtype == np.float32 and out.shape == (20, 7)
    w = est.random_weights_
    block = w[:5] @ w[:5].T  # orthogonal rows within a block
    np.testing.assert_allclose(block - np.diag(np.diag(block)), 0.0, atol=1e-10)
    names = est.get_feature_names_out()
    assert list(names) == [f"positiverandomfeatures{i}" for i in range(7)]
    # Same random_state, same features; a different one, different features.
    np.testing.assert_array_equal(
        PositiveRandomFeatures(7, random_state=0).fit(x).random_weights_.shape, (7, 5)
    )
    a = PositiveRandomFeatures(7, random_state=4).fit_transform(x)
    np.testing.assert_array_equal(a, PositiveRandomFeatures(7, random_state=4).fit_transform(x))
    assert not np.array_equal(a, PositiveRandomFeatures(7, random_state=5).fit_transform(x))


def test_pipeline_on_digits():
    digits = load_digits()
    x, y = digits.data[:600], digits.target[:600]
    model = make_pipeline(
        MinMaxScaler(),
        OptimalPositiveRandomFeatures(400, gamma=0.05, orthogonal=True, random_state=0),
        LogisticRegression(C=10.0, max_iter=1000),
    )
    model.fit(x[:400], y[:400])
    # Chance is 0.1; RBFSampler(400, gamma=0.05) in the same pipeline scores 0.83-0.85 here.
    assert model.score(x[400:], y[400:]) > 0.8
    assert len(model[:-1].get_feature_names_out()) == 400


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "params,match",
    [
        ({"n_components": 0}, "n_components must be an int >= 1"),
        ({"n_components": -3}, "n_components must be an int >= 1"),
        ({"n_components": 2.5}, "n_components must be an int >= 1"),
        ({"gamma": 0.0}, "gamma must be a positive float or 'scale'"),
        ({"gamma": -1.0}, "gamma must be a positive float or 'scale'"),
        ({"gamma": float("nan")}, "gamma must be a positive float or 'scale'"),
        ({"gamma": "auto"}, "gamma must be a positive float or 'scale'"),
        ({"orthogonal": "yes"}, "orthogonal must be a bool"),
        ({"center": 1}, "center must be a bool"),
    ],
)
def test_bad_parameters(cls, params, match):
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match=match):
        cls(**params).fit(x)


def test_not_fitted_and_wrong_width():
    x = np.random.RandomState(0).rand(6, 3)
    with pytest.raises(NotFittedError):
        PositiveRandomFeatures().transform(x)
    est = PositiveRandomFeatures(4).fit(x)
    with pytest.raises(ValueError, match="features"):
        est.transform(x[:, :2])
