r"""Random-feature approximations of the Gaussian (RBF) kernel as scikit-learn transformers.

``K(x, y) = exp(−γ‖x − y‖²)``, the kernel of :class:`sklearn.kernel_approximation.RBFSampler`,
is approximated by ``Φ(x)ᵀΦ(y)`` with *positive* random features instead of random Fourier
features:

* :class:`PositiveRandomFeatures`: ``Φ_i(x) = exp(ω_iᵀz − ‖z‖²)/√M`` with ``z = √(2γ)(x − μ)``,
  the Gaussian-kernel form of FAVOR+'s positive features (Choromanski et al., ICLR 2021,
  Lemma 1 times ``e^{−‖z‖²/2}``);
* :class:`OptimalPositiveRandomFeatures`: the generalized exponential features with the
  variance-optimal ``A*`` (FAVOR++; Likhosherstov et al., *Chefs' Random Tables*, NeurIPS
  2022), ``Φ_i(x) = D exp(A‖ω_i‖² + B ω_iᵀz − ‖z‖²)/√M``, ``B = √(1−4A)``,
  ``D = (1−4A)^{d/4}``, with ``A = A*(φ̄)`` fitted from the mean of ``‖z_i + z_j‖²`` over all
  pairs of training points (the pair-mean identity, ``O(n·d)``).

Both are unbiased for every pair of points. Their relative variance depends on ``‖z_x + z_y‖²``
(not on the kernel value), so, unlike random Fourier features, their *relative* error stays
bounded where the kernel is small. The Gaussian kernel is translation invariant, so the inputs
are centered at the training mean ``μ`` (``center=True``), which minimizes the average
``‖z_x + z_y‖²`` and with it the variance.

``ω_i`` are iid ``N(0, I_d)`` or, with ``orthogonal=True``, block-orthogonal rows with χ norms
(:func:`performers.ops.projections.orthogonal_projection`). The feature maps are those of
:mod:`performers.ops.features`; computation is in float64, the output in the input's float dtype.

Needs scikit-learn: ``pip install 'performers[sklearn]'``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "performers.integrations.sklearn needs scikit-learn: pip install 'performers[sklearn]'"
    ) from error

from performers.ops import (
    gaussian_positive_features,
    make_projection,
    optimal_positive_features,
)
from performers.ops.favor_plus_plus import pair_mean_sq_norm
from performers.ops.theory import optimal_positive_parameter

__all__ = ["OptimalPositiveRandomFeatures", "PositiveRandomFeatures"]


class _GaussianPositiveFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Shared fit/transform of the positive random-feature transformers (see the module doc)."""

    def __init__(
        self,
        n_components: int = 100,
        *,
        gamma: float | str = 1.0,
        orthogonal: bool = False,
        center: bool = True,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_components = n_components
        self.gamma = gamma
        self.orthogonal = orthogonal
        self.center = center
        self.random_state = random_state

    def _check_params(self) -> None:
        n = self.n_components
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n_components must be an int >= 1, got {n!r}")
        gamma = self.gamma
        if isinstance(gamma, str):
            if gamma != "scale":
                raise ValueError(f"gamma must be a positive float or 'scale', got {gamma!r}")
        elif (
            isinstance(gamma, bool)
            or not isinstance(gamma, numbers.Real)
            or not np.isfinite(gamma)
            or not gamma > 0
        ):
            raise ValueError(f"gamma must be a positive float or 'scale', got {gamma!r}")
        if not isinstance(self.orthogonal, (bool, np.bool_)):
            raise ValueError(f"orthogonal must be a bool, got {self.orthogonal!r}")
        if not isinstance(self.center, (bool, np.bool_)):
            raise ValueError(f"center must be a bool, got {self.center!r}")

    def _scaled(self, X: np.ndarray) -> torch.Tensor:
        """``z = √(2γ)(x − μ)`` as a float64 tensor ``(n, d)``."""
        z = torch.tensor(np.asarray(X), dtype=torch.float64)
        return (z - torch.from_numpy(self.mean_)) * np.sqrt(2.0 * self.gamma_)

    def fit(self, X, y=None):
        """Draw the random projection ``(n_components, n_features)`` and fit ``μ``, ``γ`` (and ``A``).

        Args:
            X: array-like ``(n_samples, n_features)``.
            y: ignored.

        Returns:
            self.
        """
        self._check_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if self.gamma == "scale":
            variance = float(X.var())
            self.gamma_ = 1.0 / (X.shape[1] * variance) if variance > 0 else 1.0
        else:
            self.gamma_ = float(self.gamma)
        self.mean_ = X.mean(axis=0, dtype=np.float64) if self.center else np.zeros(X.shape[1])
        rng = check_random_state(self.random_state)
        generator = torch.Generator().manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
        projection = make_projection(
            int(self.n_components),
            X.shape[1],
            kind="orthogonal" if self.orthogonal else "iid",
            generator=generator,
            dtype=torch.float64,
        )
        self.random_weights_ = projection.numpy()
        self._fit_parameters(self._scaled(X))
        self._n_features_out = int(self.n_components)
        return self

    def _fit_parameters(self, z: torch.Tensor) -> None:
        """Data-dependent parameters of the map (none for plain positive features)."""

    def _features(self, z: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, X):
        """Features ``(n_samples, n_components)`` with ``Φ(x)ᵀΦ(y) ≈ exp(−γ‖x − y‖²)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        features = self._features(self._scaled(X), torch.from_numpy(self.random_weights_))
        return features.numpy().astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class PositiveRandomFeatures(_GaussianPositiveFeatures):
    """Positive random features of the RBF kernel ``exp(−γ‖x − y‖²)`` (FAVOR+ form).

    ``Φ_i(x) = exp(ω_iᵀz − ‖z‖²)/√M``, ``z = √(2γ)(x − μ)``, ``ω_i ~ N(0, I)``; unbiased,
    nonnegative, relative variance ``e^{‖z_x+z_y‖²} − 1`` per feature (Choromanski et al. 2021).

    Args:
        n_components: number of random features ``M`` (``>= 1``).
        gamma: ``γ > 0`` as in :class:`~sklearn.kernel_approximation.RBFSampler`, or
            ``"scale"`` for ``1 / (n_features · X.var())``.
        orthogonal: block-orthogonal projections (χ row norms) instead of iid Gaussian rows.
        center: center the data at the training mean (the kernel is translation invariant;
            this lowers the variance).
        random_state: seed or :class:`numpy.random.RandomState` for the projection.

    Attributes:
        random_weights_: ``(n_components, n_features_in_)`` projection ``W``.
        mean_: ``(n_features_in_,)`` centering vector ``μ`` (zeros if ``center=False``).
        gamma_: the ``γ`` used.
    """

    def _features(self, z: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        return gaussian_positive_features(z, projection).materialize()


class OptimalPositiveRandomFeatures(_GaussianPositiveFeatures):
    """Optimal positive random features (FAVOR++ / OPRF) of the RBF kernel ``exp(−γ‖x − y‖²)``.

    ``Φ_i(x) = D exp(A‖ω_i‖² + B ω_iᵀz − ‖z‖²)/√M`` with ``B = √(1−4A)``, ``D = (1−4A)^{d/4}``
    and ``A = A*(φ̄)``, the minimizer of the pair-averaged log second moment, where ``φ̄`` is
    the mean of ``‖z_i + z_j‖²`` over all pairs of training points (Likhosherstov et al.,
    *Chefs' Random Tables*, 2022). Unbiased for every pair; ``A = 0`` would be
    :class:`PositiveRandomFeatures`.

    Args: as :class:`PositiveRandomFeatures`.

    Attributes:
        random_weights_, mean_, gamma_: as :class:`PositiveRandomFeatures`.
        a_: the fitted GERF parameter ``A ≤ 0``.
        pair_mean_sq_norm_: ``φ̄``.
    """

    def _fit_parameters(self, z: torch.Tensor) -> None:
        phi = pair_mean_sq_norm(z, z)
        self.pair_mean_sq_norm_ = float(phi)
        self.a_ = float(optimal_positive_parameter(phi, z.shape[-1]))

    def _features(self, z: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        return optimal_positive_features(z, projection, self.a_, gaussian=True).materialize()
