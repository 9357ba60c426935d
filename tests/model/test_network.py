"""The compressor network: causality, padding invariance, the empty history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.features import Encoded, pad_batch
from model.network import Compressor, NetworkConfig

NUM_ITEMS, NUM_TYPES, NUM_DENSE, MAX_LEN = 40, 5, 3, 12


def make_model(pooling: str = "last") -> Compressor:
    torch.manual_seed(0)
    model = Compressor(NetworkConfig(NUM_ITEMS, NUM_TYPES, NUM_DENSE, MAX_LEN, d_model=32, n_heads=2, pooling=pooling))
    # Non-trivial weights everywhere (BOS starts at zero).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def random_encoded(rng: np.random.Generator, n: int) -> Encoded:
    items = rng.integers(1, NUM_ITEMS, n)
    return Encoded(items, rng.integers(1, NUM_TYPES, n), rng.normal(size=(n, NUM_DENSE)).astype(np.float32), 0)


def vectors(model: Compressor, encoded: list[Encoded]) -> np.ndarray:
    batch = pad_batch(encoded)
    with torch.no_grad():
        return model(*(torch.from_numpy(batch[k]) for k in ("items", "event_types", "dense", "mask"))).numpy()


@pytest.mark.parametrize("pooling", ["last", "last+mean"])
def test_prefix_states_equal_the_vector_of_each_prefix(pooling: str) -> None:
    model, rng = make_model(pooling), np.random.default_rng(1)
    full = random_encoded(rng, MAX_LEN)
    batch = pad_batch([full])
    with torch.no_grad():
        states = model.sequence_states(*(torch.from_numpy(batch[k]) for k in ("items", "event_types", "dense", "mask")))
    for t in range(MAX_LEN + 1):
        prefix = Encoded(full.items[:t], full.event_types[:t], full.dense[:t], 0)
        np.testing.assert_allclose(states[0, t].numpy(), vectors(model, [prefix])[0], atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "last+mean"])
def test_padding_does_not_change_a_vector(pooling: str) -> None:
    model, rng = make_model(pooling), np.random.default_rng(2)
    batch = [random_encoded(rng, n) for n in (1, 5, MAX_LEN, 3)]
    together = vectors(model, batch)
    for row, e in enumerate(batch):
        np.testing.assert_allclose(together[row], vectors(model, [e])[0], atol=1e-5)


def test_empty_history_is_the_learned_no_history_vector() -> None:
    model, rng = make_model(), np.random.default_rng(3)
    empty = Encoded(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, NUM_DENSE), np.float32), 0)
    alone = vectors(model, [empty])[0]
    beside_long = vectors(model, [random_encoded(rng, MAX_LEN), empty, random_encoded(rng, 2)])[1]
    assert np.isfinite(alone).all()
    assert np.abs(alone).max() > 0  # the BOS token's vector, not a zero fallback
    np.testing.assert_allclose(beside_long, alone, atol=1e-5)


def test_gradients_reach_every_parameter_and_stay_finite() -> None:
    model, rng = make_model(), np.random.default_rng(4)
    model.train()
    batch = pad_batch([random_encoded(rng, n) for n in (3, MAX_LEN)])
    states = model.sequence_states(*(torch.from_numpy(batch[k]) for k in ("items", "event_types", "dense", "mask")))
    (states @ model.item_table().t()).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
