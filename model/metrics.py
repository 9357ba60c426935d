"""Full-ranking metrics for next-item prediction (numpy only).

A target is ranked among ALL real items of the vocabulary by score; items the
user already saw are not masked. Ties are resolved in the target's favour
(rank = number of items scoring strictly higher), which can only flatter
baselines with tied scores such as popularity. A target outside the
vocabulary cannot be ranked and counts as a miss.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from model.features import NUM_RESERVED

CUTOFFS = (10, 20)
METRIC_NAMES = ("recall@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20")
MISS = np.iinfo(np.int64).max  # rank of a target that cannot be ranked


def target_ranks(scores: npt.NDArray[np.floating], targets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0-based rank of each target among the real items.

    scores: (U, num_items) over the whole item table, reserved columns included
    (they are ignored); targets: (U,) item indices, < NUM_RESERVED = unknown.
    """
    real = scores[:, NUM_RESERVED:]
    known = targets >= NUM_RESERVED
    columns = np.where(known, targets - NUM_RESERVED, 0)
    target_scores = real[np.arange(real.shape[0]), columns]
    ranks = (real > target_scores[:, None]).sum(axis=1).astype(np.int64)
    return np.where(known, ranks, MISS)


def ranking_metrics(ranks: npt.NDArray[np.int64]) -> dict[str, float]:
    """Recall@k, NDCG@k (one relevant item) and MRR@10, averaged over all users."""
    if ranks.size == 0:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    r = ranks.astype(np.float64)
    out: dict[str, float] = {}
    for k in CUTOFFS:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.where(hit, r, 0.0) + 2.0), 0.0).mean())
    hit10 = ranks < 10
    out["mrr@10"] = float(np.where(hit10, 1.0 / (np.where(hit10, r, 0.0) + 1.0), 0.0).mean())
    return {name: out[name] for name in METRIC_NAMES}
