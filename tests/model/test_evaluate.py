"""Ranking metrics, the leave-one-out split and `ubs-embed evaluate` on a real bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.cli import main
from model.data import History
from model.evaluate import mask_seen, seen_share_at_10
from model.metrics import MISS, ranking_metrics, target_ranks
from model.split import leave_one_out


def history(user: str, items: list[str]) -> History:
    n = len(items)
    return History(
        user,
        np.array(items),
        1e9 + np.arange(n, dtype=np.float64),
        np.array(["view"] * n),
        np.full(n, np.nan),
    )


def test_ranks_count_items_scoring_higher_and_ignore_reserved_columns() -> None:
    # columns 0, 1 are reserved (PAD, UNKNOWN) and must not count even with huge scores
    scores = np.array([[99.0, 99.0, 0.1, 0.5, 0.3, 0.9], [99.0, 99.0, 0.2, 0.2, 0.2, 0.1]])
    ranks = target_ranks(scores, np.array([4, 3]))
    assert ranks.tolist() == [2, 0]  # 0.3 is beaten by 0.9 and 0.5; a tie counts in the target's favour
    assert target_ranks(scores[:1], np.array([1])).tolist() == [MISS]  # unknown target


def test_seen_items_are_masked_and_counted_in_the_top_10() -> None:
    # 2 reserved columns + 12 items; row 0 has seen items 2, 3 and its target 4; row 1 has seen nothing.
    scores = np.tile(np.arange(14, dtype=np.float32)[::-1], (2, 1))  # item 2 best, then 3, 4, ...
    scores[:, :2] = 100.0  # reserved columns never count
    seen = [np.array([2, 3, 4]), np.array([], dtype=np.int64)]
    targets = np.array([4, 4])
    masked = mask_seen(scores, seen, targets)
    assert np.isneginf(masked[0, [2, 3]]).all() and masked[0, 4] == scores[0, 4]  # the target is never masked
    np.testing.assert_array_equal(masked[1], scores[1])
    assert target_ranks(scores, targets).tolist() == [2, 2]
    assert target_ranks(masked, targets).tolist() == [0, 2]
    assert seen_share_at_10(scores, seen) == pytest.approx((3 / 10 + 0.0) / 2)


def test_metric_values_for_known_ranks() -> None:
    m = ranking_metrics(np.array([0, 3, 15, MISS]))
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["recall@20"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 4)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(17)) / 4)
    assert m["mrr@10"] == pytest.approx((1.0 + 1 / 4) / 4)


def test_leave_one_out_holds_out_the_last_two_events_by_time() -> None:
    split = leave_one_out([history("a", ["1", "2", "3", "4", "5"]), history("b", ["7", "8"])])
    assert [list(h.item_ids) for h in split.train] == [["1", "2", "3"], ["7", "8"]]
    assert [t.item_id for t in split.valid] == ["4"]
    assert list(split.valid[0].history.item_ids) == ["1", "2", "3"]
    assert [t.item_id for t in split.test] == ["5"]
    assert list(split.test[0].history.item_ids) == ["1", "2", "3", "4"]


def test_evaluate_cli_reports_the_bundle_above_popularity(
    ml100k_bundle: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--bundle", str(ml100k_bundle), "--data", str(data_dir / "ml-100k"), "--format", "movielens"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["users"] == 943
    assert report["log_items"] == 1682  # all of ml-100k; the few seen only as held-out targets are misses
    assert report["items"] + report["test_unseen_targets"] >= 1  # a catalogue was ranked
    assert report["ndcg@10"] == report["test/model/ndcg@10"]
    assert report["ndcg@10"] > report["test/most_popular/ndcg@10"]
    assert report["recall@10"] > report["test/most_popular/recall@10"]
    # the ONNX evaluation reproduces what training wrote into metrics.json
    saved = json.loads((ml100k_bundle / "metrics.json").read_text())
    assert report["ndcg@10"] == pytest.approx(saved["test"]["model"]["ndcg@10"], abs=1e-6)
    # Masking items other than the target can only move the target up.
    for part in ("valid", "test"):
        for name in ("recall@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20"):
            assert report[f"{part}/model_seen_masked/{name}"] >= report[f"{part}/model/{name}"] - 1e-12
        assert 0.0 < report[f"{part}_seen_share@10"] < 1.0
