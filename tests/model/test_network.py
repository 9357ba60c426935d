"""The compressor network: causality, padding invariance, the empty history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.features import Encoded, pad_batch
from model.network import Compressor, NetworkConfig

NUM_ITEMS, NUM_TYPES, NUM_DENSE, MAX_LEN = 40, 5, 3, 12


# (pooling, exclude_history, exclude_map): the exclusion terms must keep the model causal too.
VARIANTS = [("last", False, False), ("last+mean", False, False), ("last", True, False), ("last", True, True)]


def make_model(pooling: str = "last", exclude_history: bool = True, exclude_map: bool = True) -> Compressor:
    torch.manual_seed(0)
    cfg = NetworkConfig(NUM_ITEMS, NUM_TYPES, NUM_DENSE, MAX_LEN, d_model=32, n_heads=2, pooling=pooling)
    cfg.exclude_history, cfg.exclude_map = exclude_history, exclude_map
    model = Compressor(cfg)
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefix_states_equal_the_vector_of_each_prefix(variant: tuple[str, bool, bool]) -> None:
    model, rng = make_model(*variant), np.random.default_rng(1)
    full = random_encoded(rng, MAX_LEN)
    batch = pad_batch([full])
    with torch.no_grad():
        states = model.sequence_states(*(torch.from_numpy(batch[k]) for k in ("items", "event_types", "dense", "mask")))
    for t in range(MAX_LEN + 1):
        prefix = Encoded(full.items[:t], full.event_types[:t], full.dense[:t], 0)
        np.testing.assert_allclose(states[0, t].numpy(), vectors(model, [prefix])[0], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_a_vector(variant: tuple[str, bool, bool]) -> None:
    model, rng = make_model(*variant), np.random.default_rng(2)
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
    assert model.exclude_proj is not None and model.exclude_proj.weight.grad.abs().sum() > 0


def test_exclusion_map_lowers_the_scores_it_learned_to_lower() -> None:
    """The map acts on the summed item vectors of the history: a map of -I cancels the scaled term."""
    model, rng = make_model(exclude_map=True), np.random.default_rng(5)
    history = [random_encoded(rng, 6)]
    assert model.exclude_proj is not None and model.exclude_scale is not None
    with torch.no_grad():
        model.exclude_proj.weight.copy_(-torch.nn.functional.softplus(model.exclude_scale) * torch.eye(model.cfg.dim))
    cancelled = vectors(model, history)
    model.cfg.exclude_history = False
    model.exclude_scale, model.exclude_proj = None, None
    np.testing.assert_allclose(cancelled, vectors(model, history), atol=1e-5)
