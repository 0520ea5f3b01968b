"""Small pure-JAX models for image classification tasks (params are plain dicts of arrays)."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["init_mlp", "apply_mlp", "init_conv", "apply_conv", "ACTIVATIONS"]

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu}


def _dense_init(key: jax.Array, fan_in: int, fan_out: int) -> dict:
    # LeCun-normal weights (variance 1/fan_in), zero biases, as in haiku's default for MLP tasks.
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def init_mlp(key: jax.Array, in_dim: int, hidden_sizes: Sequence[int], num_classes: int) -> dict:
    """Parameters of an MLP ``in_dim -> hidden_sizes... -> num_classes``."""
    sizes = [in_dim, *hidden_sizes, num_classes]
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"dense{i}": _dense_init(k, a, b) for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def apply_mlp(params: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """Logits of the MLP for images ``x`` of shape ``[B, H, W, C]`` (flattened)."""
    act = ACTIVATIONS[activation]
    h = x.reshape(x.shape[0], -1)
    n = len(params)
    for i in range(n):
        layer = params[f"dense{i}"]
        h = h @ layer["w"] + layer["b"]
        if i < n - 1:
            h = act(h)
    return h


def init_conv(key: jax.Array, image_shape: Sequence[int], channels: Sequence[int], num_classes: int) -> dict:
    """Parameters of a small CNN: 3x3 'SAME' convs with the given channels, global mean pool, dense head."""
    h, w, c = image_shape
    keys = jax.random.split(key, len(channels) + 1)
    params = {}
    cin = c
    for i, (k, cout) in enumerate(zip(keys[:-1], channels)):
        fan_in = 3 * 3 * cin
        params[f"conv{i}"] = {
            "w": jax.random.normal(k, (3, 3, cin, cout), jnp.float32) / math.sqrt(fan_in),
            "b": jnp.zeros((cout,), jnp.float32),
        }
        cin = cout
    params["head"] = _dense_init(keys[-1], cin, num_classes)
    return params


def apply_conv(params: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """Logits of the CNN for ``x`` of shape ``[B, H, W, C]``."""
    act = ACTIVATIONS[activation]
    h = x
    n_conv = len(params) - 1
    for i in range(n_conv):
        layer = params[f"conv{i}"]
        # im2col + matmul instead of lax.conv: under vmap over parameters (seeds, learning rates)
        # a convolution becomes a grouped convolution, which is ~10x slower on CPU; patches
        # (no parameters involved) then a batched matmul stay fast.
        patches = jax.lax.conv_general_dilated_patches(
            h, (3, 3), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )  # [B, H, W, C*9], channel-major (c, kh, kw)
        w = jnp.transpose(layer["w"], (2, 0, 1, 3)).reshape(-1, layer["w"].shape[-1])
        h = act(patches @ w + layer["b"])
    h = h.mean(axis=(1, 2))
    return h @ params["head"]["w"] + params["head"]["b"]
