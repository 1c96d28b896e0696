"""The ``sklearn`` section of ``performers bench approximation``: RBF kernel approximation on
scikit-learn's digits, our positive random features against ``RBFSampler`` and ``Nystroem``
(Gram-matrix error, on the smallest kernel values too, and downstream accuracy)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["sklearn_digits"]


def sklearn_digits(
    *, n_components: Sequence[int] = (64, 256, 1024), seeds: int = 3, small_quantile: float = 0.1
) -> tuple[list[dict], dict]:
    """Gram-matrix error on the test split and downstream accuracy, ours vs RBFSampler and Nystroem.

    Digits (1797 × 64, shipped with scikit-learn) scaled to [0, 1], a stratified 70/30 split,
    ``γ = 1/(64·Var(X))`` (the ``"scale"`` rule). Gram errors ``‖K̂ − K‖_F/‖K‖_F`` on the test
    points, over all entries and over the off-diagonal entries below the ``small_quantile``
    quantile of ``K`` ("small kernel values"); accuracy of ``LogisticRegression(C=10)`` trained on
    the features of the training split (first seed only). Means over ``seeds`` random states.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.kernel_approximation import Nystroem, RBFSampler
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics.pairwise import rbf_kernel
    from sklearn.model_selection import train_test_split

    from performers.integrations.sklearn import OptimalPositiveRandomFeatures, PositiveRandomFeatures

    digits = load_digits()
    x = digits.data / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, stratify=digits.target, random_state=0
    )
    gamma = 1.0 / (x.shape[1] * x_train.var())
    exact = rbf_kernel(x_test, gamma=gamma)
    off_diagonal = ~np.eye(len(x_test), dtype=bool)
    threshold = np.quantile(exact[off_diagonal], small_quantile)
    small = off_diagonal & (exact <= threshold)
    methods = {
        "RBFSampler": lambda n, seed: RBFSampler(gamma=gamma, n_components=n, random_state=seed),
        "Nystroem": lambda n, seed: Nystroem(gamma=gamma, n_components=n, random_state=seed),
        "Positive (iid)": lambda n, seed: PositiveRandomFeatures(n, gamma=gamma, random_state=seed),
        "Positive (orthogonal)": lambda n, seed: PositiveRandomFeatures(
            n, gamma=gamma, orthogonal=True, random_state=seed
        ),
        "FAVOR++ (iid)": lambda n, seed: OptimalPositiveRandomFeatures(n, gamma=gamma, random_state=seed),
        "FAVOR++ (orthogonal)": lambda n, seed: OptimalPositiveRandomFeatures(
            n, gamma=gamma, orthogonal=True, random_state=seed
        ),
    }
    rows = []
    for name, make in methods.items():
        for n in n_components:
            overall, small_errors, accuracy = [], [], None
            for seed in range(seeds):
                transformer = make(n, seed).fit(x_train)
                f_test = transformer.transform(x_test)
                gram = f_test @ f_test.T
                overall.append(float(np.linalg.norm(gram - exact) / np.linalg.norm(exact)))
                small_errors.append(
                    float(np.linalg.norm((gram - exact)[small]) / np.linalg.norm(exact[small]))
                )
                if seed == 0:
                    classifier = LogisticRegression(C=10.0, max_iter=2000)
                    classifier.fit(transformer.transform(x_train), y_train)
                    accuracy = float(classifier.score(f_test, y_test))
            rows.append(
                {
                    "method": name,
                    "n_components": n,
                    "gram_rel_error": statistics.fmean(overall),
                    "gram_rel_error_sd": statistics.stdev(overall) if seeds > 1 else 0.0,
                    "gram_rel_error_small": statistics.fmean(small_errors),
                    "gram_rel_error_small_sd": statistics.stdev(small_errors) if seeds > 1 else 0.0,
                    "accuracy": accuracy,
                }
            )
    exact_classifier = None
    try:
        from sklearn.svm import SVC

        exact_classifier = float(
            SVC(kernel="rbf", gamma=gamma, C=10.0).fit(x_train, y_train).score(x_test, y_test)
        )
    except ImportError:  # pragma: no cover
        pass
    info = {
        "dataset": "sklearn.datasets.load_digits (1797 x 64), /16, stratified 70/30 split (random_state=0)",
        "gamma": gamma,
        "test_points": len(x_test),
        "small_quantile": small_quantile,
        "small_threshold": float(threshold),
        "kernel_svm_accuracy": exact_classifier,
        "seeds": seeds,
    }
    return rows, info
