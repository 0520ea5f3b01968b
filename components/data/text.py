"""Character-level text: vocabulary, token arrays, contiguous splits, and a jitted window sampler.

Preparing a corpus (numpy, in the prepare_data stage)::

    text --decode_text--> str --build_vocab--> vocab int32 [V] (sorted code points)
         --encode_text--> tokens int32 [n] (index into vocab) --split_tokens--> train | val | test

The vocabulary is every distinct character of the *whole* corpus, sorted by code point, so
validation and test text has no unknown characters (tiny-shakespeare: 65 characters, newline
first). The split is by **contiguous ranges** in reading order, ``fractions = (train, val, test)``
with boundaries ``floor(n * train)`` and ``floor(n * (train + val))``: the default
``(0.9, 0.05, 0.05)`` keeps nanoGPT's first 90 % for training and cuts its last 10 % into
validation then test. Contiguous ranges (not shuffled windows) keep held-out text unseen.

Training (jax, on device): :func:`sample_windows` draws a batch of random windows from a token
array already on the device, inside ``jit``; no Python iterator runs per step.

Example:
  >>> vocab = build_vocab("abca")
  >>> encode_text("abca", vocab).tolist()
  [0, 1, 2, 0]
  >>> decode_tokens(np.asarray([2, 0]), vocab)
  'ca'
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "build_vocab",
    "decode_text",
    "decode_tokens",
    "encode_text",
    "sample_windows",
    "split_tokens",
]


def decode_text(raw: bytes, *, encoding: str = "utf-8") -> str:
    """The corpus as a string.

    Raises:
      ValueError: if ``raw`` is empty or not valid ``encoding`` (the message gives the offset).
    """
    try:
        text = bytes(raw).decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"text is not valid {encoding} at byte {e.start}: {e.reason}") from e
    if not text:
        raise ValueError("text corpus is empty")
    return text


def _code_points(text: str) -> np.ndarray:
    # utf-32-le gives one fixed-width code unit per character, without a BOM
    return np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int32)


def build_vocab(text: str) -> np.ndarray:
    """The sorted distinct code points of ``text``: int32 ``[V]``; token ``i`` is ``chr(vocab[i])``."""
    return np.unique(_code_points(text))


def encode_text(text: str, vocab: np.ndarray) -> np.ndarray:
    """Tokens of ``text``: int32 ``[len(text)]``, the index of each character in ``vocab``.

    Raises:
      ValueError: if ``text`` has a character that is not in ``vocab`` (it is named).
    """
    cp = _code_points(text)
    vocab = np.asarray(vocab, np.int32)
    idx = np.clip(np.searchsorted(vocab, cp), 0, len(vocab) - 1)
    bad = vocab[idx] != cp
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"character {chr(cp[first])!r} at offset {first} is not in the vocabulary of {len(vocab)}")
    return idx.astype(np.int32)


def decode_tokens(tokens: np.ndarray, vocab: np.ndarray) -> str:
    """The string that ``tokens`` (indices into ``vocab``) spell."""
    return "".join(map(chr, np.asarray(vocab)[np.asarray(tokens)].tolist()))


def split_tokens(
    tokens: np.ndarray, fractions: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``tokens`` into contiguous train, validation and test ranges, in that order.

    Args:
      tokens: ``[n]`` token array.
      fractions: ``(train, val, test)``, each > 0, summing to 1.

    Returns:
      ``(tokens[:a], tokens[a:b], tokens[b:])`` with ``a = floor(n * train)`` and
      ``b = floor(n * (train + val))``.

    Raises:
      ValueError: if the fractions are not positive or do not sum to 1, or a range would be empty.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"fractions must be (train, val, test), each > 0, summing to 1; got {fractions}")
    n = len(tokens)
    a = math.floor(n * fractions[0])
    b = math.floor(n * (fractions[0] + fractions[1]))
    if not 0 < a < b < n:
        raise ValueError(
            f"fractions {fractions} of {n} tokens give ranges of {a}, {b - a} and {n - b} tokens; all must be non-empty"
        )
    return tokens[:a], tokens[a:b], tokens[b:]


@functools.partial(jax.jit, static_argnames=("batch_size", "context"))
def sample_windows(tokens: jax.Array, key: jax.Array, batch_size: int, context: int) -> tuple[jax.Array, jax.Array]:
    """A batch of random next-token windows from a device-resident token array.

    Window ``b`` starts at ``s_b ~ U{0, ..., n - context - 1}`` (independently, with replacement):
    ``inputs[b] = tokens[s_b : s_b + context]``, ``targets[b] = tokens[s_b + 1 : s_b + context + 1]``.
    Pure and jitted (``batch_size`` and ``context`` are static): call it inside a training step,
    ``vmap`` it over keys, or close over ``tokens`` to keep them resident on the device.

    Args:
      tokens: int32 ``[n]`` with ``n > context``.
      key: a PRNG key.
      batch_size: windows per batch ``B``.
      context: window length ``T``.

    Returns:
      ``(inputs, targets)``, each ``tokens.dtype`` ``[B, T]``.

    Raises:
      ValueError: if ``tokens`` is not 1-D or not longer than ``context`` (at trace time).

    Example:
      >>> toks = jnp.arange(100, dtype=jnp.int32)
      >>> x, y = sample_windows(toks, jax.random.PRNGKey(0), 4, 8)
      >>> bool((y == x + 1).all())
      True
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D token array, got shape {tokens.shape}")
    n = tokens.shape[0]
    if n <= context:
        raise ValueError(f"tokens has {n} entries; a window of context={context} plus its target needs > {context}")
    if batch_size < 1 or context < 1:
        raise ValueError(f"batch_size and context must be >= 1, got {batch_size} and {context}")
    starts = jax.random.randint(key, (batch_size, 1), 0, n - context)
    idx = starts + jnp.arange(context + 1)[None, :]
    windows = jnp.take(tokens, idx, axis=0, mode="clip")  # idx is in range by construction
    return windows[:, :-1], windows[:, 1:]
