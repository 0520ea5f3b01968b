"""Synthetic problems with known structure: the noisy quadratic (STAR §4.1) and convex linear models.

They need no dataset: ``batch(data, key)`` ignores ``data`` (pass ``None``) and draws the noise or
the examples from ``key``. The problem itself (curvature spectrum, true weights) is array leaves of
the task, drawn by a family from its key, so a population of problems vmaps like any other tasks.

**Noisy quadratic** (``research/algorithms.md`` §4.1)::

    ℓ_t(φ) = ½ (φ − ξ_t)ᵀ H (φ − ξ_t),   ξ_t ~ N(0, Σ),   H = Qᵀ diag(h) Q,   Σ = Qᵀ diag(σ²) Q

``Q`` is the identity (axis-aligned, as in the stability analysis) or a random rotation
(``rotate=True``, so per-coordinate optimizers meet a non-diagonal Hessian). A batch is ``ξ``
``[B, d]`` and the loss is the mean of ``ℓ`` over its rows (``B = 1`` is the paper's setting).
Params: ``{"phi": [d]}``, initialised ``N(0, init_scale² I)``.

**Least squares / logistic regression**: ``x ~ N(0, diag(c²))`` ``[B, d]`` with feature scales
``c_i = κ^{-i / (2(d-1))}`` (so the Hessian of least squares has condition number ``κ``), true weights
``w* ~ N(0, I/d)`` (logistic: scaled so the margins ``x·w*`` have standard deviation ≈ 2); least
squares ``y = x·w* + noise_std·ε``, logistic ``y ~ Bernoulli(σ(x·w*))``.
With ``num_examples=None`` every batch is fresh data (a stochastic problem); with ``num_examples=n``
the problem is a fixed finite sum, example ``i`` generated from ``fold_in(data_key, i)``, and a batch
of ``batch_size == n`` is the whole set in order (deterministic full-batch gradient descent, the
setting of GL2O / LGL2O convergence results). Params: ``{"w": [d], "b": []}``; losses add
``½ l2 ‖w‖²``. Batch: ``(x [B, d] float32, y [B] float32)``.

**Normalisers** (documented choices; each maps "no progress" to ≈1 and clips at 1.5, like the
classification normaliser whose ``ln C`` is the loss of the uniform predictor):

* noisy quadratic: ``clip(ℓ / E[ℓ(φ₀)], 0, 1.5)`` with ``E[ℓ(φ₀)] = ½ Σ_i h_i (init_scale² + σ_i²)``,
  the expected loss at initialisation (the noise floor ``½ Σ h_i σ_i²`` is then below 1);
* least squares: ``clip(ℓ / E[ℓ(w₀)], 0, 1.5)``, the expected loss at initialisation
  (``w₀ ~ N(0, I/d)``: ``E[ℓ(w₀)] = ½ (Σ_i c_i² (w*_i² + 1/d) + noise_std² + l2)``);
* logistic: ``clip(ℓ, 0, 1.5 ln 2)``, as for a 2-class classifier (``ln 2`` = the zero predictor).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from components.tasks.protocol import clip_loss

__all__ = [
    "NoisyQuadraticTask",
    "NoisyQuadraticFamily",
    "noisy_quadratic",
    "spectrum",
    "LinearModelTask",
    "LinearModelFamily",
    "linear_model",
    "LINEAR_KINDS",
    "SPECTRA",
]

SPECTRA = ("geometric", "linear")
LINEAR_KINDS = ("least_squares", "logistic")


def spectrum(dim: int, h_min: float, h_max: float, kind: str = "geometric") -> jax.Array:
    """``dim`` eigenvalues from ``h_min`` to ``h_max``, geometrically or linearly spaced (float32 ``[dim]``).

    Raises:
      ValueError: for a non-positive or inverted range or an unknown ``kind``.
    """
    if not 0 < h_min <= h_max:
        raise ValueError(f"need 0 < h_min <= h_max, got h_min={h_min}, h_max={h_max}")
    if kind == "geometric":
        return jnp.geomspace(h_min, h_max, dim, dtype=jnp.float32)
    if kind == "linear":
        return jnp.linspace(h_min, h_max, dim, dtype=jnp.float32)
    raise ValueError(f"unknown spectrum kind {kind!r}; choose one of {list(SPECTRA)}")


def _rotation(key: jax.Array, dim: int) -> jax.Array:
    q, r = jnp.linalg.qr(jax.random.normal(key, (dim, dim), jnp.float32))
    return q * jnp.sign(jnp.diagonal(r))[None, :]  # Haar-distributed


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class NoisyQuadraticTask:
    """The noisy quadratic (see the module docstring).

    Static: ``name``, ``dim`` ``d``, ``batch_size`` ``B``, ``init_scale``. Arrays: ``h`` ``[d]``
    (eigenvalues of H), ``noise_std`` ``[d]`` (σ, Σ's eigenvalues are σ²), ``basis`` ``[d, d]``
    orthogonal ``Q`` or ``None`` (axis-aligned).
    """

    name: str
    dim: int
    batch_size: int
    h: jax.Array
    noise_std: jax.Array
    basis: jax.Array | None = None
    init_scale: float = 1.0

    has_accuracy = False

    def tree_flatten(self):
        return (self.h, self.noise_std, self.basis), (self.name, self.dim, self.batch_size, self.init_scale)

    @classmethod
    def tree_unflatten(cls, aux, children):
        name, dim, batch_size, init_scale = aux
        h, noise_std, basis = children
        return cls(name, dim, batch_size, h, noise_std, basis, init_scale)

    def _to_eigen(self, v: jax.Array) -> jax.Array:  # rows v -> Q v
        return v if self.basis is None else v @ self.basis.T

    def _from_eigen(self, v: jax.Array) -> jax.Array:  # rows v -> Qᵀ v
        return v if self.basis is None else v @ self.basis

    def init(self, key: jax.Array) -> dict:
        return {"phi": self.init_scale * jax.random.normal(key, (self.dim,), jnp.float32)}

    def batch(self, data: None, key: jax.Array) -> jax.Array:
        """``ξ`` ``[B, d]`` ~ N(0, Σ); ``data`` is ignored."""
        del data
        return self._from_eigen(self.noise_std * jax.random.normal(key, (self.batch_size, self.dim), jnp.float32))

    def loss(self, params: dict, batch: jax.Array, key: jax.Array | None = None) -> jax.Array:
        del key
        r = self._to_eigen(params["phi"][None, :] - batch)  # [B, d] in H's eigenbasis
        return 0.5 * jnp.mean(jnp.sum(self.h * jnp.square(r), axis=-1))

    def accuracy(self, params: dict, batch: jax.Array) -> jax.Array:
        return jnp.float32(jnp.nan)

    def expected_initial_loss(self) -> jax.Array:
        return 0.5 * jnp.sum(self.h * (self.init_scale**2 + jnp.square(self.noise_std)))

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        """``clip(ℓ / E[ℓ(φ₀)], 0, 1.5)``, non-finite -> 1.5."""
        return clip_loss(loss / self.expected_initial_loss(), 1.5)


def noisy_quadratic(
    dim: int,
    *,
    h_min: float = 0.01,
    h_max: float = 1.0,
    spectrum_kind: str = "geometric",
    noise_std: float = 1.0,
    batch_size: int = 1,
    init_scale: float = 1.0,
    rotate_key: jax.Array | None = None,
    name: str = "noisy_quadratic",
) -> NoisyQuadraticTask:
    """A noisy quadratic with a fixed spectrum (``rotate_key`` given: a random rotation ``Q``)."""
    basis = None if rotate_key is None else _rotation(rotate_key, dim)
    return NoisyQuadraticTask(
        name,
        dim,
        batch_size,
        spectrum(dim, h_min, h_max, spectrum_kind),
        jnp.full((dim,), noise_std, jnp.float32),
        basis,
        init_scale,
    )


@dataclasses.dataclass(frozen=True)
class NoisyQuadraticFamily:
    """Noisy quadratics with eigenvalues ``h_i ~ logU[h_range]`` drawn per task (and a rotation if ``rotate``)."""

    dim: int
    h_range: tuple[float, float] = (0.01, 1.0)
    noise_std: float = 1.0
    batch_size: int = 1
    init_scale: float = 1.0
    rotate: bool = False

    def sample(self, key: jax.Array) -> NoisyQuadraticTask:
        k_h, k_q = jax.random.split(key)
        lo, hi = (math.log(v) for v in self.h_range)
        h = jnp.exp(jax.random.uniform(k_h, (self.dim,), jnp.float32, lo, hi))
        basis = _rotation(k_q, self.dim) if self.rotate else None
        noise = jnp.full((self.dim,), self.noise_std, jnp.float32)
        return NoisyQuadraticTask("noisy_quadratic_family", self.dim, self.batch_size, h, noise, basis, self.init_scale)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class LinearModelTask:
    """Least squares or logistic regression on synthetic Gaussian features (see the module docstring).

    Static: ``name``, ``kind`` (``"least_squares"`` | ``"logistic"``), ``dim``, ``batch_size``,
    ``num_examples`` (``None``: fresh data every batch), ``noise_std``, ``l2``. Arrays: ``w_true``
    ``[d]``, ``feature_scale`` ``[d]``, ``data_key`` (a PRNG key array: the finite data set).
    """

    name: str
    kind: str
    dim: int
    batch_size: int
    w_true: jax.Array
    feature_scale: jax.Array
    data_key: jax.Array
    num_examples: int | None = None
    noise_std: float = 0.1
    l2: float = 0.0

    def __post_init__(self):
        if self.kind not in LINEAR_KINDS:
            raise ValueError(f"unknown linear model kind {self.kind!r}; choose one of {list(LINEAR_KINDS)}")

    @property
    def has_accuracy(self) -> bool:
        return self.kind == "logistic"

    def tree_flatten(self):
        aux = (self.name, self.kind, self.dim, self.batch_size, self.num_examples, self.noise_std, self.l2)
        return (self.w_true, self.feature_scale, self.data_key), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        name, kind, dim, batch_size, num_examples, noise_std, l2 = aux
        return cls(name, kind, dim, batch_size, *children, num_examples, noise_std, l2)

    def init(self, key: jax.Array) -> dict:
        w = jax.random.normal(key, (self.dim,), jnp.float32) / math.sqrt(self.dim)
        return {"w": w, "b": jnp.zeros((), jnp.float32)}

    def _example(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        kx, ky = jax.random.split(key)
        x = self.feature_scale * jax.random.normal(kx, (self.dim,), jnp.float32)
        z = x @ self.w_true
        if self.kind == "least_squares":
            y = z + self.noise_std * jax.random.normal(ky, (), jnp.float32)
        else:
            y = jax.random.bernoulli(ky, jax.nn.sigmoid(z)).astype(jnp.float32)
        return x, y

    def batch(self, data: None, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [B, d], y [B])``: fresh examples, or examples of the finite set (all of them, in order, if B == n)."""
        del data
        if self.num_examples is None:
            keys = jax.random.split(key, self.batch_size)
        else:
            if self.batch_size >= self.num_examples:
                idx = jnp.arange(self.batch_size) % self.num_examples  # the whole set, in order
            else:
                idx = jax.random.randint(key, (self.batch_size,), 0, self.num_examples)
            keys = jax.vmap(lambda i: jax.random.fold_in(self.data_key, i))(idx)
        return jax.vmap(self._example)(keys)

    def _margin(self, params: dict, x: jax.Array) -> jax.Array:
        return x @ params["w"] + params["b"]

    def loss(self, params: dict, batch: tuple[jax.Array, jax.Array], key: jax.Array | None = None) -> jax.Array:
        del key
        x, y = batch
        z = self._margin(params, x)
        if self.kind == "least_squares":
            data_loss = 0.5 * jnp.mean(jnp.square(z - y))
        else:
            data_loss = jnp.mean(jax.nn.softplus(z) - y * z)  # binary cross-entropy with logits
        return data_loss + 0.5 * self.l2 * jnp.sum(jnp.square(params["w"]))

    def accuracy(self, params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        if self.kind != "logistic":
            return jnp.float32(jnp.nan)
        x, y = batch
        return jnp.mean((self._margin(params, x) > 0) == (y > 0.5))

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        if self.kind == "logistic":
            return clip_loss(loss, 1.5 * math.log(2.0))
        return clip_loss(loss / self.expected_initial_loss(), 1.5)

    def expected_initial_loss(self) -> jax.Array:
        """Least squares: ``E[ℓ]`` at ``w ~ N(0, I/d)``, ``b = 0``: ``½ (Σ c_i² (w*_i² + 1/d) + noise_std² + l2)``."""
        signal = jnp.sum(jnp.square(self.feature_scale) * (jnp.square(self.w_true) + 1.0 / self.dim))
        return 0.5 * (signal + self.noise_std**2 + self.l2)


def linear_model(
    key: jax.Array,
    kind: str,
    dim: int,
    *,
    batch_size: int = 32,
    num_examples: int | None = None,
    noise_std: float = 0.1,
    l2: float = 0.0,
    condition_number: float = 10.0,
    name: str | None = None,
) -> LinearModelTask:
    """A least-squares or logistic-regression problem whose true weights and data come from ``key``.

    Raises:
      ValueError: for an unknown ``kind``, ``condition_number < 1`` or ``num_examples < 1``.
    """
    if kind not in LINEAR_KINDS:
        raise ValueError(f"unknown linear model kind {kind!r}; choose one of {list(LINEAR_KINDS)}")
    if condition_number < 1:
        raise ValueError(f"condition_number must be >= 1, got {condition_number}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be >= 1 or None (fresh data), got {num_examples}")
    k_w, k_data = jax.random.split(key)
    exponents = jnp.arange(dim, dtype=jnp.float32) / max(dim - 1, 1)
    feature_scale = jnp.power(jnp.float32(condition_number), -0.5 * exponents)
    w_true = jax.random.normal(k_w, (dim,), jnp.float32) / math.sqrt(dim)
    if kind == "logistic":
        # margins x·w* with standard deviation ≈ 2: labels neither deterministic nor pure noise
        w_true = jax.random.normal(k_w, (dim,), jnp.float32) * 2.0 / jnp.sqrt(jnp.sum(jnp.square(feature_scale)))
    return LinearModelTask(
        name or kind, kind, dim, batch_size, w_true, feature_scale, k_data, num_examples, noise_std, l2
    )


@dataclasses.dataclass(frozen=True)
class LinearModelFamily:
    """Linear-model problems of one kind and size, a fresh ``w*`` and data set per sampled task."""

    kind: str
    dim: int
    batch_size: int = 32
    num_examples: int | None = None
    noise_std: float = 0.1
    l2: float = 0.0
    condition_number: float = 10.0

    def sample(self, key: jax.Array) -> LinearModelTask:
        return linear_model(
            key,
            self.kind,
            self.dim,
            batch_size=self.batch_size,
            num_examples=self.num_examples,
            noise_std=self.noise_std,
            l2=self.l2,
            condition_number=self.condition_number,
            name=f"{self.kind}_family",
        )
