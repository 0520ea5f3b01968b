"""A small pre-activation ResNet for images, and the classification task on it.

The network (He et al. 2016, "Identity Mappings in Deep Residual Networks": the *pre-activation*
block), pure functions on a dict of arrays like :mod:`components.tasks.models`::

    stem                 conv k x k, C_in -> channels[0], stride 1       {"w": [k, k, cin, c0], "b": [c0]}
    block{s}_{b}         stage s (len(channels) stages), block b (blocks_per_stage per stage):
      conv0, conv1       conv k x k                                      {"w": [k, k, cin, cout], "b": [cout]}
      ln0_*, ln1_*       layer-norm scale / offset before each activation (norm="layer_norm" only)
      proj               1 x 1 conv on the skip path, first block of stages s >= 1 only
    final                layer norm before the last activation (norm="layer_norm" only)
    head                 {"w": [channels[-1], classes], "b": [classes]} after a global mean pool

A block computes ``y = skip(x) + f(x)`` with the *residual branch*
``f(x) = conv1(act(norm1(conv0(act(norm0(x))))))`` and ``skip(x) = x`` (an identity block) or
``proj(x)`` (the first block of every stage after the first: it halves the resolution with stride 2
in ``conv0`` and in ``proj`` and changes the channel count). After the last block:
``act(norm(h))``, mean over the spatial positions, dense head.

Details we chose (no single reference fixes them for a CPU-sized, batch-norm-free ResNet):

* **Zero-initialised branch ends** (``conv1`` of every block: weights and bias 0). Without batch
  norm, the variance of a plain residual stream grows with depth; zeroing the last layer of each
  branch makes every identity block the identity map at initialisation (Goyal et al. 2017 zero the
  last batch-norm scale of each block; Fixup, Zhang et al. 2019, and SkipInit, De & Smith 2020, zero
  the branch without any normalisation). ``conv0`` still learns from the second step on, once
  ``conv1`` is non-zero. ``zero_init_branch=False`` gives LeCun-normal weights there too.
* **Layer norm, not batch norm**, for the reason :mod:`components.tasks.models` gives (no model
  state outside ``params``, no coupling of the examples of a batch); per example over ``(H, W, C)``
  then a per-channel scale and offset.
* **Convolutions as im2col + matmul** (patches, then one matmul), as in :mod:`components.tasks.models`,
  so a population of tasks under ``vmap`` stays a batched matmul rather than a grouped convolution;
  the patches come from shifted slices (see :func:`conv2d` for why not ``conv_general_dilated_patches``).
* LeCun-normal weights (variance ``1 / fan_in``), zero biases: the initialisation of the other conv
  tasks, so the architecture rather than the initialiser is what differs.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from components.tasks import models
from components.tasks.base import ImageClassification

__all__ = ["init_resnet", "apply_resnet", "apply_block", "residual_branch", "conv2d", "block_names", "ResNetTask"]


def block_names(num_stages: int, blocks_per_stage: int) -> list[str]:
    """``["block0_0", "block0_1", ..., "block{S-1}_{B-1}"]``: the blocks in the order they run."""
    return [f"block{s}_{b}" for s in range(num_stages) for b in range(blocks_per_stage)]


def _conv_params(z: jax.Array) -> dict:
    fan_in = math.prod(z.shape[:-1])
    return {"w": z / math.sqrt(fan_in), "b": jnp.zeros((z.shape[-1],), jnp.float32)}


def _zero_conv(shape: tuple[int, ...]) -> dict:
    return {"w": jnp.zeros(shape, jnp.float32), "b": jnp.zeros((shape[-1],), jnp.float32)}


def init_resnet(
    key: jax.Array,
    image_shape: Sequence[int],
    channels: Sequence[int],
    blocks_per_stage: int,
    num_classes: int,
    *,
    kernel_size: int = 3,
    layer_norm: bool = True,
    zero_init_branch: bool = True,
) -> dict:
    """Parameters of the ResNet (layout: the module docstring), from one normal draw.

    Raises:
      ValueError: for no stage, a stage or block count below 1, or an image shape that is not ``(H, W, C)``.
    """
    if len(image_shape) != 3:
        raise ValueError(f"a ResNet needs images (H, W, C), got example shape {tuple(image_shape)}")
    if not channels or min(channels) < 1 or blocks_per_stage < 1:
        raise ValueError(
            f"a ResNet needs at least one stage of >= 1 channels and >= 1 block per stage, got channels"
            f" {tuple(channels)}, blocks_per_stage {blocks_per_stage}"
        )
    k = kernel_size
    # every tensor drawn from the normal, in a fixed order: stem, per block conv0 (conv1) (proj), head
    shapes = [(k, k, image_shape[-1], channels[0])]
    plan = []  # (name, cin, cout, projects)
    cin = channels[0]
    for s, cout in enumerate(channels):
        for b in range(blocks_per_stage):
            projects = s > 0 and b == 0
            plan.append((f"block{s}_{b}", cin, cout, projects))
            shapes.append((k, k, cin, cout))
            if not zero_init_branch:
                shapes.append((k, k, cout, cout))
            if projects:
                shapes.append((1, 1, cin, cout))
            cin = cout
    shapes.append((channels[-1], num_classes))
    zs = iter(models.split_normal(key, shapes))
    params = {"stem": _conv_params(next(zs))}
    for name, cin, cout, projects in plan:
        block = {"conv0": _conv_params(next(zs))}
        block["conv1"] = _zero_conv((k, k, cout, cout)) if zero_init_branch else _conv_params(next(zs))
        if projects:
            block["proj"] = _conv_params(next(zs))
        if layer_norm:
            for i, width in enumerate((cin, cout)):
                block[f"ln{i}_scale"] = jnp.ones((width,), jnp.float32)
                block[f"ln{i}_offset"] = jnp.zeros((width,), jnp.float32)
        params[name] = block
    if layer_norm:
        width = channels[-1]
        params["final"] = {"ln_scale": jnp.ones((width,), jnp.float32), "ln_offset": jnp.zeros((width,), jnp.float32)}
    z = next(zs)
    params["head"] = {"w": z / math.sqrt(z.shape[0]), "b": jnp.zeros((num_classes,), jnp.float32)}
    return params


def _same_padding(size: int, k: int, stride: int) -> tuple[int, int, int]:
    """``(out, pad_lo, pad_hi)`` of a 'SAME' convolution along one axis (XLA's convention)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def conv2d(h: jax.Array, layer: dict, stride: int = 1) -> jax.Array:
    """'SAME' convolution of ``h`` ``[B, H, W, Cin]`` with ``layer["w"]`` ``[k, k, Cin, Cout]`` plus bias.

    im2col by shifted slices: pad, take the ``k²`` strided windows, concatenate them along channels
    (``(kh, kw, c)`` order, the order of ``w.reshape(k·k·Cin, Cout)``), one matmul. The slices are
    memory moves; ``lax.conv_general_dilated_patches`` would instead run a convolution with
    ``Cin·k²`` output channels, which at 16 channels and full resolution costs as much as the
    network itself (measured on CPU: 4x slower per training step).
    """
    kh, kw, cin, cout = layer["w"].shape
    (ho, top, bottom), (wo, left, right) = (_same_padding(n, k, stride) for n, k in zip(h.shape[1:3], (kh, kw)))
    hp = jnp.pad(h, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = [
        hp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)  # [B, H', W', k*k*Cin]
    return patches @ layer["w"].reshape(kh * kw * cin, cout) + layer["b"]


def _pre_activate(h: jax.Array, block: dict, i: int, act) -> jax.Array:
    if f"ln{i}_scale" in block:
        h = models.layer_norm(h, block[f"ln{i}_scale"], block[f"ln{i}_offset"], (1, 2, 3))
    return act(h)


def _stride(block: dict) -> int:
    return 2 if "proj" in block else 1


def residual_branch(block: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """``f(x) = conv1(act(norm1(conv0(act(norm0(x))))))`` of one block (stride 2 in conv0 if it projects)."""
    act = models.ACTIVATIONS[activation]
    h = conv2d(_pre_activate(x, block, 0, act), block["conv0"], _stride(block))
    return conv2d(_pre_activate(h, block, 1, act), block["conv1"])


def apply_block(block: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """One residual block: ``skip(x) + f(x)`` with ``skip`` the identity or the strided 1 x 1 projection."""
    skip = conv2d(x, block["proj"], 2) if "proj" in block else x
    return skip + residual_branch(block, x, activation)


def apply_resnet(params: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """Logits ``[B, classes]`` for images ``x`` ``[B, H, W, C]`` (the blocks run in :func:`block_names` order)."""
    act = models.ACTIVATIONS[activation]
    h = conv2d(x, params["stem"])
    names = sorted((n for n in params if n.startswith("block")), key=lambda n: tuple(map(int, n[5:].split("_"))))
    for name in names:
        h = apply_block(params[name], h, activation)
    if "final" in params:
        h = models.layer_norm(h, params["final"]["ln_scale"], params["final"]["ln_offset"], (1, 2, 3))
    h = act(h).mean(axis=(1, 2))
    return h @ params["head"]["w"] + params["head"]["b"]


def _zero_index() -> jax.Array:
    return jnp.zeros((), jnp.int32)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class ResNetTask(ImageClassification):
    """Image classification with the pre-activation ResNet of this module (softmax cross-entropy).

    Static attributes: ``name``, ``channels`` (one width per stage), ``blocks_per_stage``,
    ``activation``, ``norm`` (``"layer_norm"`` | ``"none"``), ``image_shape`` ``(H, W, C)``,
    ``num_classes``, ``batch_size``, ``kernel_size``. Array attribute: ``dataset_index`` (which
    dataset of the :class:`~components.tasks.ImageData`, as for :class:`~components.tasks.Task`).

    Shapes: ``batch = (x [B, H, W, C] float32, y [B] int32)``; ``loss`` / ``accuracy`` are scalars;
    ``normalized_loss`` is ``clip(loss, 0, 1.5 ln classes)`` like every classifier here.

    Example::

        task = ResNetTask("r", (16, 32), 1, "relu", "layer_norm", (8, 8, 1), 10, 128)
        loss = task.loss(task.init(k1), task.batch(data, k2))   # ≈ ln 10 at init
    """

    name: str
    channels: tuple[int, ...]
    blocks_per_stage: int
    activation: str
    norm: str
    image_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    kernel_size: int = 3
    dataset_index: jax.Array = dataclasses.field(default_factory=_zero_index)

    has_accuracy = True
    head_key = "head"

    def __post_init__(self):
        models.check_choice("activation", self.activation, models.ACTIVATIONS)
        models.check_choice("norm", self.norm, models.NORMS)
        if len(self.image_shape) != 3:
            raise ValueError(
                f"task {self.name!r}: a ResNet needs images (H, W, C), got example shape {self.image_shape};"
                " give it an image dataset (e.g. fashion_mnist_8)"
            )

    def tree_flatten(self):
        aux = (
            self.name,
            self.channels,
            self.blocks_per_stage,
            self.activation,
            self.norm,
            self.image_shape,
            self.num_classes,
            self.batch_size,
            self.kernel_size,
        )
        return (self.dataset_index,), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*aux, *children)

    def init(self, key: jax.Array) -> dict:
        return init_resnet(
            key,
            self.image_shape,
            self.channels,
            self.blocks_per_stage,
            self.num_classes,
            kernel_size=self.kernel_size,
            layer_norm=self.norm == "layer_norm",
        )

    def logits(self, params: dict, x: jax.Array) -> jax.Array:
        return apply_resnet(params, x, self.activation)
