"""A decoder-only (GPT-style, pre-layer-norm) transformer for character-level language modelling.

Pure functions on a dict of arrays, like :mod:`components.tasks.models`::

    embed   [V, D]          token embedding
    pos     [T, D]          learned positional embedding (T = the maximum context)
    block{i} (i < depth):
      ln1 / ln2   {"scale": [D], "offset": [D]}
      attn        {"qkv": {"w": [D, 3D], "b": [3D]}, "proj": {"w": [D, D], "b": [D]}}
      mlp         {"fc": {"w": [D, rD], "b": [rD]}, "proj": {"w": [rD, D], "b": [D]}}
    ln_f    {"scale": [D], "offset": [D]}
    unembed {"w": [D, V], "b": [V]}   (not tied to ``embed``: it is the "head" a fine-tuning task
                                       may re-initialise)

Block: ``h += proj(causal_attention(ln1(h)))``; ``h += proj(gelu(fc(ln2(h))))``. Initialisation
follows GPT-2 / nanoGPT: N(0, 0.02²) weights, the two residual projections N(0, (0.02/√(2·depth))²),
zero biases, unit layer-norm scales. With these scales the logits at initialisation are ~N(0, 0.02²·D)
so the initial next-token loss is ≈ ln V.
"""

import math

import jax
import jax.numpy as jnp

from components.tasks.models import layer_norm, split_normal

__all__ = ["init_transformer", "apply_transformer", "INIT_STD"]

INIT_STD = 0.02


def _ln(width: int) -> dict:
    return {"scale": jnp.ones((width,), jnp.float32), "offset": jnp.zeros((width,), jnp.float32)}


def init_transformer(
    key: jax.Array, vocab_size: int, context: int, width: int, depth: int, heads: int, mlp_ratio: int = 4
) -> dict:
    """Parameters of the transformer (see the module docstring for the layout).

    All weights are slices of one standard-normal draw (:func:`~components.tasks.models.split_normal`).

    Raises:
      ValueError: if ``width`` is not a multiple of ``heads``.
    """
    if width % heads:
        raise ValueError(f"width ({width}) must be a multiple of heads ({heads}); e.g. width={heads * 16}")
    d, r = width, mlp_ratio * width
    resid_std = INIT_STD / math.sqrt(2 * depth)
    # (path, shape, std) of every random tensor, in a fixed order
    spec = [(("embed",), (vocab_size, d), INIT_STD), (("pos",), (context, d), INIT_STD)]
    for i in range(depth):
        b = f"block{i}"
        spec += [
            ((b, "attn", "qkv"), (d, 3 * d), INIT_STD),
            ((b, "attn", "proj"), (d, d), resid_std),
            ((b, "mlp", "fc"), (d, r), INIT_STD),
            ((b, "mlp", "proj"), (r, d), resid_std),
        ]
    spec.append((("unembed",), (d, vocab_size), INIT_STD))
    zs = split_normal(key, [shape for _, shape, _ in spec])
    w = {path: std * z for (path, _, std), z in zip(spec, zs)}

    def dense(path, fan_out):
        return {"w": w[path], "b": jnp.zeros((fan_out,), jnp.float32)}

    params = {"embed": w[("embed",)], "pos": w[("pos",)]}
    for i in range(depth):
        b = f"block{i}"
        params[b] = {
            "ln1": _ln(d),
            "attn": {"qkv": dense((b, "attn", "qkv"), 3 * d), "proj": dense((b, "attn", "proj"), d)},
            "ln2": _ln(d),
            "mlp": {"fc": dense((b, "mlp", "fc"), r), "proj": dense((b, "mlp", "proj"), d)},
        }
    params["ln_f"] = _ln(d)
    params["unembed"] = dense(("unembed",), vocab_size)
    return params


def _apply_ln(h: jax.Array, p: dict) -> jax.Array:
    return layer_norm(h, p["scale"], p["offset"], (-1,))


def _attention(p: dict, h: jax.Array, heads: int) -> jax.Array:
    b, t, d = h.shape
    qkv = (h @ p["qkv"]["w"] + p["qkv"]["b"]).reshape(b, t, 3, heads, d // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, Dh]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)  # finite: no NaN from -inf - -inf
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
    return out @ p["proj"]["w"] + p["proj"]["b"]


def apply_transformer(params: dict, tokens: jax.Array, heads: int) -> jax.Array:
    """Next-token logits ``[B, T, V]`` for int tokens ``[B, T]`` (``T`` ≤ the context of ``params["pos"]``).

    Position ``t`` sees tokens ``0..t`` only (causal mask).
    """
    t = tokens.shape[1]
    depth = sum(1 for k in params if k.startswith("block"))
    h = params["embed"][tokens] + params["pos"][:t]
    for i in range(depth):
        blk = params[f"block{i}"]
        h = h + _attention(blk["attn"], _apply_ln(h, blk["ln1"]), heads)
        m = _apply_ln(h, blk["ln2"])
        m = jax.nn.gelu(m @ blk["mlp"]["fc"]["w"] + blk["mlp"]["fc"]["b"])
        h = h + m @ blk["mlp"]["proj"]["w"] + blk["mlp"]["proj"]["b"]
    h = _apply_ln(h, params["ln_f"])
    return h @ params["unembed"]["w"] + params["unembed"]["b"]
