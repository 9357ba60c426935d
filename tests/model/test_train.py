"""Training pieces: the windows that cover every target, the schedule, and the seen-items loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.train import UserArrays, lr_factor, seen_items_loss, windows


def user(n: int) -> UserArrays:
    return UserArrays(
        items=np.arange(2, n + 2, dtype=np.int64),
        types=np.full(n, 2, dtype=np.int64),
        seconds=np.arange(n, dtype=np.float64),
        dwell=np.full(n, np.nan),
    )


@pytest.mark.parametrize("seed", range(5))
def test_windows_predict_every_target_within_max_len(seed: int) -> None:
    users = [user(120), user(7), user(50), user(51)]
    max_len = 50
    out = windows(np.random.default_rng(seed), users, max_len)
    for u, arrays in enumerate(users):
        n = arrays.items.shape[0]
        spans = sorted((s, e) for uu, s, e in out if uu == u)
        assert all(0 < e - s <= max_len or (s == 0 and e <= max_len) for s, e in spans)
        # A window (s, e) feeds events s..e-1 and trains targets s+1..e (and target 0 from the BOS when s == 0).
        targets = [t for s, e in spans for t in range(s + 1, e + 1)]
        # Every target at least once; the phased windows do not overlap, the newest may overlap one of them.
        assert set(targets) == set(range(1, n)), (u, spans)
        assert len(targets) - len(set(targets)) < max_len
        assert spans[-1][1] == n - 1  # the newest window ends at the last target, like the validation input


def test_learning_rate_warms_up_then_decays_to_five_percent() -> None:
    assert lr_factor(0, warmup=10, total=110) == pytest.approx(0.1)
    assert lr_factor(9, warmup=10, total=110) == pytest.approx(1.0)
    assert lr_factor(10, warmup=10, total=110) == pytest.approx(1.0)
    assert lr_factor(60, warmup=10, total=110) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(110, warmup=10, total=110) == pytest.approx(0.05)
    assert lr_factor(500, warmup=10, total=110) == pytest.approx(0.05)


def test_seen_items_loss_ranks_the_next_item_against_seen_items_only() -> None:
    # One history of 3 events (vocabulary indices 2, 3, 4 = real items 0, 1, 2), 5 real items.
    logits = torch.zeros(1, 4, 5)
    logits[0, 2, 0] = 2.0  # position 2 has seen items 0 and 1; item 0 scores high
    logits[0, 2, 4] = 9.0  # an unseen item that is not the target does not compete here
    items = torch.tensor([[2, 3, 4]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    target = torch.tensor([[-100, 3, 3, -100]])  # position 1 (seen: item 0) and position 2 (seen: 0, 1)
    got = float(seen_items_loss(logits, items, mask, target))
    at1 = -math.log(1 / (1 + 1))  # target 3 and seen item 0, both logit 0
    at2 = -math.log(1 / (math.exp(2) + 1 + 1))
    assert got == pytest.approx((at1 + at2) / 2, rel=1e-6)


def test_seen_items_loss_ignores_padding_and_positions_with_nothing_seen() -> None:
    logits = torch.randn(1, 3, 4)
    items = torch.tensor([[2, 0]])  # one real event, then padding
    mask = torch.tensor([[True, False]])
    target = torch.tensor([[1, 3, 2]])  # position 0 has seen nothing: ignored
    got = float(seen_items_loss(logits, items, mask, target))

    # Positions 1 and 2 have seen only item 0 (the padded slot adds nothing).
    def ce(row: torch.Tensor, t: int) -> float:
        keep = [0, t]
        return float(-torch.log_softmax(row[keep], dim=0)[1])

    assert got == pytest.approx((ce(logits[0, 1], 3) + ce(logits[0, 2], 2)) / 2, rel=1e-5)
