"""tiny-shakespeare: vocabulary, tokens, contiguous splits, and the jitted window sampler."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.data import (
    DATASETS,
    build_variant,
    build_vocab,
    decode_dataset,
    decode_text,
    decode_tokens,
    encode_text,
    parse_variant,
    sample_windows,
    split_tokens,
)
from components.stages.fetch import fetch_file_with_origin


@pytest.fixture(scope="module")
def corpus(mirror) -> bytes:
    return (mirror / "tiny_shakespeare" / "input.txt").read_bytes()


def test_real_corpus_counts_and_vocabulary(corpus):
    text = decode_text(corpus)
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    vocab = build_vocab(text)
    assert vocab.dtype == np.int32 and len(vocab) == 65 == DATASETS["tiny_shakespeare"].num_classes
    assert "".join(map(chr, vocab)) == "\n !$&',-.3:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
    tokens = encode_text(text, vocab)
    assert tokens.dtype == np.int32 and tokens.shape == (1_115_394,) and tokens.max() == 64
    assert decode_tokens(tokens[:14], vocab) == "First Citizen:"


def test_prepared_splits_are_contiguous_ranges(corpus):
    decoded = decode_dataset("tiny_shakespeare", {"input.txt": corpus})
    out = build_variant(
        parse_variant("tiny_shakespeare"),
        decoded,
        test_fraction=0.2,
        max_train_examples=10,  # never cuts a corpus
        text_split=(0.9, 0.05, 0.05),
        seed=123,
    )
    assert sorted(out) == ["test_tokens", "train_tokens", "val_tokens", "vocab"]
    assert [len(out[k]) for k in ("train_tokens", "val_tokens", "test_tokens")] == [1_003_854, 55_770, 55_770]
    assert all(a.dtype == np.int32 for a in out.values())
    whole = np.concatenate([out["train_tokens"], out["val_tokens"], out["test_tokens"]])
    assert decode_tokens(whole, out["vocab"]) == decoded.text  # in reading order, nothing lost
    # No seed involved.
    again = build_variant(
        parse_variant("tiny_shakespeare"),
        decoded,
        test_fraction=0.2,
        max_train_examples=None,
        text_split=(0.9, 0.05, 0.05),
        seed=0,
    )
    np.testing.assert_array_equal(again["val_tokens"], out["val_tokens"])


def test_download_path_is_the_verbatim_upstream_file(tmp_path, mirror):
    # The mirror copy IS the upstream file, so the pinned upstream sha256 accepts it (file:// for the network).
    spec_file = DATASETS["tiny_shakespeare"].files[0]
    url = (mirror / "tiny_shakespeare" / "input.txt").as_uri()
    got = fetch_file_with_origin(
        dataclasses.replace(spec_file, urls=(url,)), mirror=None, cache_dir=tmp_path, log=lambda _: None
    )
    assert got.sha256 == spec_file.url_sha256 == spec_file.sha256


def test_split_tokens_floor_boundaries_and_errors():
    t = np.arange(10)
    a, b, c = split_tokens(t, (0.5, 0.25, 0.25))
    assert (a.tolist(), b.tolist(), c.tolist()) == ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])
    with pytest.raises(ValueError, match=r"each > 0, summing to 1; got \(0\.5, 0\.5, 0\.5\)"):
        split_tokens(t, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="all must be non-empty"):
        split_tokens(np.arange(3), (0.9, 0.05, 0.05))


def test_text_errors_are_clear():
    with pytest.raises(ValueError, match=r"not valid utf-8 at byte 1"):
        decode_text(b"a\xffb")
    with pytest.raises(ValueError, match="empty"):
        decode_text(b"")
    with pytest.raises(ValueError, match=r"character 'z' at offset 2 is not in the vocabulary of 2"):
        encode_text("abz", build_vocab("ab"))


def test_sample_windows_shapes_targets_and_determinism():
    tokens = jnp.arange(50, dtype=jnp.int32) * 3
    key = jax.random.PRNGKey(0)
    x, y = sample_windows(tokens, key, 16, 8)
    assert x.shape == y.shape == (16, 8) and x.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) + 3)  # next token
    np.testing.assert_array_equal(np.diff(np.asarray(x), axis=1), 3)  # contiguous windows
    starts = np.asarray(x[:, 0]) // 3
    assert starts.min() >= 0 and starts.max() <= 50 - 8 - 1
    x2, _ = sample_windows(tokens, key, 16, 8)
    np.testing.assert_array_equal(x, x2)
    x3, _ = sample_windows(tokens, jax.random.PRNGKey(1), 16, 8)
    assert not np.array_equal(x, x3)


def test_sample_windows_covers_every_start_and_the_last_token():
    tokens = jnp.arange(6, dtype=jnp.int32)
    x, y = sample_windows(tokens, jax.random.PRNGKey(0), 400, 3)
    assert sorted(set(np.asarray(x[:, 0]).tolist())) == [0, 1, 2]
    assert int(y.max()) == 5


def test_sample_windows_in_a_jitted_vmapped_step_compiles_once():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 65, 1000), jnp.int32)
    traces = []

    @jax.jit
    def step(tokens, keys):
        traces.append(1)
        x, y = jax.vmap(lambda k: sample_windows(tokens, k, 4, 16))(keys)
        return x, jnp.mean((x[:, :, 1:] == y[:, :, :-1]).astype(jnp.float32))

    x, same = step(tokens, jax.random.split(jax.random.PRNGKey(0), 3))
    assert x.shape == (3, 4, 16) and float(same) == 1.0
    step(tokens, jax.random.split(jax.random.PRNGKey(1), 3))
    assert len(traces) == 1


def test_sample_windows_rejects_short_or_2d_tokens():
    with pytest.raises(ValueError, match=r"tokens has 8 entries; a window of context=8 plus its target needs > 8"):
        sample_windows(jnp.arange(8), jax.random.PRNGKey(0), 2, 8)
    with pytest.raises(ValueError, match=r"1-D token array, got shape \(2, 5\)"):
        sample_windows(jnp.zeros((2, 5), jnp.int32), jax.random.PRNGKey(0), 2, 3)
    with pytest.raises(ValueError, match="batch_size and context must be >= 1"):
        sample_windows(jnp.arange(8), jax.random.PRNGKey(0), 0, 3)
