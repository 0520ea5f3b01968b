"""µP image MLPs (the tasks of µLO) and their meta-training family.

Re-implementation of ``MuMLP`` / ``_MuMLPImageTask`` of Thérien et al., "µLO: Compute-Efficient
Meta-Generalization of Learned Optimizers" (arXiv 2406.00153; code
``bentherien/mu_learned_optimization``, ``src/mu_mlp.py``), the MLP of Tensor Programs V, Table 8.
The learned optimizer made for them is :mod:`components.optimizers.mup` (``mup_small_fc_lopt``).

An MLP ``in → n → … → n → C`` (``depth`` hidden layers of width ``n``) with three kinds of layer:

.. code-block:: text

    layer        init                                        forward                 update factor μ
    input   W0   TruncNormal(−2, 2)·sqrt(1/fan_in), b ~ N(0,1)  h = α_in·(x W0 + b0)    1
    hidden  Wl   TruncNormal(−2, 2)·sqrt(1/fan_in), b ~ N(0,1)  h = φ(h) Wl + bl         1/fan_in (W), 1 (b)
    output  WL   0,                                 b ~ N(0,1)  y = (α_out/n)·(φ(h) WL + bL)  1

``φ`` is the activation (ReLU), ``α_in = input_mult`` and ``α_out = output_mult`` (1 and 1 in the
reference's runs). With these, the pre-activations of every layer have a width-independent scale
at initialisation, the logits start at ``O(1/n)`` (zero output weights), and — with µLO's per-layer
update factors — one step of the same learned rule changes them by a width-independent amount.
That is what lets µLO meta-train on narrow MLPs and evaluate on wide ones.

The parameters follow the naming convention ``mup_small_fc_lopt`` reads the µP roles from
(:mod:`components.optimizers.mup`)::

    {"mup_input": {"w": [in, n], "b": [n]}, "mup_hidden1": {...}, ..., "mup_hidden{depth-1}": {...},
     "mup_output": {"w": [n, C], "b": [C]}}

Choices where the reference was unclear or that we made differently:

* The weight init is the reference's ``MupVarianceScaling(1, "fan_in", "truncated_normal")``, which
  (unlike haiku's ``VarianceScaling``) does *not* divide by the truncated normal's standard
  deviation 0.8796: the weights' standard deviation is ``0.88/sqrt(fan_in)``. We keep that.
* Biases of every layer, the output layer's included, are drawn ``N(0, 1)`` as the reference's
  ``b_init``; the output multiplier applies to the bias too (the reference multiplies the whole
  output).
* ``depth`` counts hidden layers (the reference's ``mumlp-w{n}-d{depth}`` has ``hidden_sizes = [n] *
  depth``); there must be at least one (the reference asserts two linear layers).
* The reference's ``hidden_mult`` (fixed at 1) is not a setting. Only equal hidden widths are
  supported, as in the reference's named tasks.
* Data, batches, loss, accuracy, the loss normaliser and the optional global reparametrisation
  scale are :class:`~components.tasks.base.Task`'s (the reference's are learned_optimization's image
  MLP task's: softmax cross-entropy on flattened images).

Example:
  >>> task = mup_mlp_task("m", (8, 8, 1), 10, 64, width=16, depth=3)
  >>> sorted(task.init(jax.random.PRNGKey(0)))
  ['mup_hidden1', 'mup_hidden2', 'mup_input', 'mup_output']
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from components.tasks import models
from components.tasks.base import Task

__all__ = ["MuPMLPArch", "MuPMLPTask", "MuPMLPFamily", "mup_mlp_task", "mup_layer_names"]


@dataclasses.dataclass(frozen=True)
class MuPMLPArch:
    """Architecture record of a µP MLP task (:class:`~components.tasks.spec.TaskSpec`'s ``arch``)."""

    width: int
    depth: int = 3
    input_mult: float = 1.0
    output_mult: float = 1.0
    activation: str = "relu"
    kind = "mup_mlp"

    def __post_init__(self):
        _check_arch(self.width, self.depth, self.input_mult, self.output_mult, self.activation)


def _check_arch(width, depth, input_mult, output_mult, activation) -> None:
    for field, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"µP MLP: {field} must be an int >= 1, got {value!r}.")
    for field, value in (("input_mult", input_mult), ("output_mult", output_mult)):
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"µP MLP: {field} must be a finite float > 0, got {value!r}.")
    models.check_choice("activation", activation, models.ACTIVATIONS)


def mup_layer_names(depth: int) -> list[str]:
    """The params keys, input to output: ``mup_input``, ``mup_hidden1`` … ``mup_hidden{depth-1}``, ``mup_output``."""
    return ["mup_input", *[f"mup_hidden{i}" for i in range(1, depth)], "mup_output"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class MuPMLPTask(Task):
    """A µP image MLP (see the module docstring); everything but ``init`` / ``logits`` is :class:`Task`'s.

    ``hidden`` is ``(width,) * depth``; ``model`` is ``"mlp"``; ``input_mult`` / ``output_mult`` are
    ``α_in`` / ``α_out``. Build it with :func:`mup_mlp_task`.
    """

    input_mult: float = 1.0
    output_mult: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.model != "mlp" or self.norm != "none" or not self.hidden or len(set(self.hidden)) != 1:
            raise ValueError(
                f"MuPMLPTask {self.name!r}: needs model 'mlp', norm 'none' and equal hidden widths, got model "
                f"{self.model!r}, norm {self.norm!r}, hidden {self.hidden}. Use mup_mlp_task(...)."
            )
        _check_arch(self.hidden[0], len(self.hidden), self.input_mult, self.output_mult, self.activation)

    def tree_flatten(self):
        children, aux = super().tree_flatten()
        return children, (aux, self.input_mult, self.output_mult)

    @classmethod
    def tree_unflatten(cls, aux, children):
        (name, model, hidden, activation, image_shape, classes, batch, norm, downsample, kernel), i_mult, o_mult = aux
        return cls(
            name, model, hidden, activation, image_shape, classes, batch, *children,
            norm=norm, downsample=downsample, kernel_size=kernel, input_mult=i_mult, output_mult=o_mult,
        )  # fmt: skip

    @property
    def head_key(self) -> str:
        return "mup_output"

    @property
    def width(self) -> int:
        return self.hidden[0]

    def init(self, key: jax.Array) -> dict:
        """µP initial parameters (in the stored, reparametrised space)."""
        sizes = [math.prod(self.image_shape), *self.hidden, self.num_classes]
        names = mup_layer_names(len(self.hidden))
        k_w, k_b = jax.random.split(key)
        w_keys = jax.random.split(k_w, len(names) - 1)
        biases = models.split_normal(k_b, [(n,) for n in sizes[1:]])
        params = {}
        for i, name in enumerate(names):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            if name == "mup_output":
                w = jnp.zeros((fan_in, fan_out), jnp.float32)
            else:
                w = jax.random.truncated_normal(w_keys[i], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
                w = w * (1.0 / math.sqrt(fan_in))
            params[name] = {"w": w, "b": biases[i]}
        scale = jnp.exp(self.log_scale)
        return jax.tree_util.tree_map(lambda p: p / scale, params)

    def logits(self, params: dict, x: jax.Array) -> jax.Array:
        """``[B, num_classes]`` logits: ``(α_out/n)·(φ(…φ(α_in(x W0 + b0))…) WL + bL)``."""
        scale = jnp.exp(self.log_scale)
        params = jax.tree_util.tree_map(lambda p: p * scale, params)
        act = models.ACTIVATIONS[self.activation]
        names = mup_layer_names(len(self.hidden))
        h = x.reshape(x.shape[0], -1)
        h = self.input_mult * (h @ params["mup_input"]["w"] + params["mup_input"]["b"])
        for name in names[1:-1]:
            h = act(h) @ params[name]["w"] + params[name]["b"]
        out = act(h) @ params["mup_output"]["w"] + params["mup_output"]["b"]
        return out * (self.output_mult / self.width)


def mup_mlp_task(
    name: str,
    image_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    *,
    width: int,
    depth: int = 3,
    input_mult: float = 1.0,
    output_mult: float = 1.0,
    activation: str = "relu",
) -> MuPMLPTask:
    """A µP MLP with ``depth`` hidden layers of ``width`` units on examples of ``image_shape``.

    Raises:
      ValueError: for a width or depth below 1, a non-positive multiplier or an unknown activation.
    """
    _check_arch(width, depth, input_mult, output_mult, activation)
    return MuPMLPTask(
        name, "mlp", (width,) * depth, activation, tuple(image_shape), num_classes, batch_size,
        input_mult=float(input_mult), output_mult=float(output_mult),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MuPMLPFamily:
    """µP MLPs of one width on ``datasets`` (one example shape): ``sample(key) -> MuPMLPTask``.

    The width is static (it fixes the shapes), so a population of tasks shares it; the sampled
    task's ``dataset_index`` is uniform over ``datasets`` (indices into the
    :class:`~components.tasks.ImageData` stacked in this order). µLO's multi-width recipe
    (``mumlp-w{128,512,1024}-d3``) is one family per width, one estimator each, meta-gradients
    averaged — the shape of ``meta_train.task_family.estimator_per_dataset``.
    """

    datasets: tuple[str, ...]
    image_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    width: int
    depth: int = 3
    input_mult: float = 1.0
    output_mult: float = 1.0
    activation: str = "relu"
    name: str = "mup_mlp_family"

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("MuPMLPFamily needs at least one dataset")
        _check_arch(self.width, self.depth, self.input_mult, self.output_mult, self.activation)

    def sample(self, key: jax.Array) -> MuPMLPTask:
        task = mup_mlp_task(
            self.name, self.image_shape, self.num_classes, self.batch_size,
            width=self.width, depth=self.depth, input_mult=self.input_mult, output_mult=self.output_mult,
            activation=self.activation,
        )  # fmt: skip
        return dataclasses.replace(task, dataset_index=jax.random.randint(key, (), 0, len(self.datasets)))
