"""Event-log readers, user histories and the synthetic generator."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.data import DataError, add_data_arguments, events_from_args, load_events, user_histories
from model.readers import EVENT_COLUMNS
from model.synthetic import EVENT_TYPES, synthetic_events


def assert_schema(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == EVENT_COLUMNS
    for name in ("user_id", "item_id", "event_type"):
        assert isinstance(df[name].dtype, pd.CategoricalDtype), name
        assert df[name].cat.categories.dtype == "str", name
    assert df["timestamp"].dtype == np.float64
    assert df["dwell_time"].dtype == np.float64


def assert_same_events(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Column by column (pandas' assert_frame_equal is very slow on large string categoricals)."""
    assert list(actual.columns) == list(expected.columns)
    for name in actual.columns:
        a, e = actual[name], expected[name]
        if isinstance(e.dtype, pd.CategoricalDtype):
            np.testing.assert_array_equal(np.asarray(a.cat.categories), np.asarray(e.cat.categories), err_msg=name)
            np.testing.assert_array_equal(a.cat.codes.to_numpy(), e.cat.codes.to_numpy(), err_msg=name)
        else:
            np.testing.assert_array_equal(a.to_numpy(), e.to_numpy(), err_msg=name)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- real files -------------------------------------------------------------------


@pytest.fixture(scope="module")
def movielens(data_dir: Path) -> pd.DataFrame:
    return load_events(data_dir / "ml-100k", "movielens")


def test_movielens_real_file(movielens: pd.DataFrame) -> None:
    assert_schema(movielens)
    assert len(movielens) == 100_000
    assert movielens["user_id"].nunique() == 943
    assert movielens["item_id"].nunique() == 1682
    counts = movielens["event_type"].value_counts()
    assert set(counts.index) == {f"rating_{r}" for r in range(1, 6)}
    assert counts["rating_4"] == 34_174
    assert counts["rating_1"] == 6_110
    first = movielens.iloc[0]  # u.data line 1: 196 242 3 881250949
    assert (first["user_id"], first["item_id"], first["event_type"]) == ("196", "242", "rating_3")
    assert first["timestamp"] == 881250949.0
    assert movielens["dwell_time"].isna().all()


def test_movielens_file_or_folder(data_dir: Path, movielens: pd.DataFrame) -> None:
    assert_same_events(load_events(data_dir / "ml-100k" / "u.data", "movielens"), movielens)


def test_movielens_histories(movielens: pd.DataFrame) -> None:
    histories = user_histories(movielens)
    assert len(histories) == 943
    assert sum(len(h) for h in histories) == 100_000
    assert min(len(h) for h in histories) == 20
    assert [h.user_id for h in histories[:3]] == ["1", "10", "100"]  # user_id string order
    for h in histories:
        assert np.all(np.diff(h.seconds) >= 0)
    user_1 = histories[0]
    assert len(user_1) == 272
    assert user_1.item_ids.dtype.kind == "U" and user_1.event_types.dtype.kind == "U"


def test_taobao_real_file(data_dir: Path) -> None:
    df = load_events(data_dir / "taobao-sample" / "UserBehavior.csv", "taobao")
    assert_schema(df)
    assert len(df) == 4_321
    assert df["user_id"].nunique() == 43
    assert df["item_id"].nunique() == 3_276
    assert df["event_type"].value_counts().to_dict() == {"pv": 3_926, "cart": 190, "fav": 128, "buy": 77}
    first = df.iloc[0]  # line 1: 1,2268318,2520377,pv,1511544070
    assert (first["user_id"], first["item_id"], first["timestamp"]) == ("1", "2268318", 1511544070.0)


def test_chunked_reading_equals_one_chunk(data_dir: Path) -> None:
    path = data_dir / "taobao-sample" / "UserBehavior.csv"
    whole = load_events(path, "taobao", chunk_rows=10_000)
    assert_same_events(load_events(path, "taobao", chunk_rows=7), whole)


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "u.data"
    with pytest.raises(DataError, match=str(missing)):
        load_events(missing, "movielens")
    with pytest.raises(DataError, match="u.data"):
        load_events(tmp_path, "movielens")  # a folder without u.data


# -- written formats ------------------------------------------------------------------

RETAILROCKET = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,view,248676,
1433221999827,257597,addtocart,355908,
1433222276276,257597,transaction,355908,4000
"""


def test_retailrocket(tmp_path: Path) -> None:
    df = load_events(write(tmp_path / "events.csv", RETAILROCKET), "retailrocket")
    assert_schema(df)
    assert df["event_type"].tolist() == ["view", "view", "addtocart", "transaction"]
    assert df["user_id"].tolist() == ["257597", "992329", "257597", "257597"]
    assert df["timestamp"].tolist() == [1433221332.117, 1433224214.164, 1433221999.827, 1433222276.276]
    assert_same_events(load_events(tmp_path, "retailrocket"), df)  # the folder holding events.csv


def test_csv_header_names_iso_and_dwell(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.csv",
        "when;who;what;kind;secs\n"
        "2015-06-02T05:02:12Z;u1;42;view;3.5\n"
        "2015-06-02T07:02:12+02:00;u1;43;buy;\n"
        "2015-06-02 05:03:00;u2;42;view;0\n",
    )
    columns = {"user": "who", "item": "what", "time": "when", "type": "kind", "dwell": "secs"}
    df = load_events(path, "csv", columns=columns, sep=";", time_unit="iso")
    assert_schema(df)
    assert df["timestamp"].tolist() == [1433221332.0, 1433221332.0, 1433221380.0]
    assert df["item_id"].tolist() == ["42", "43", "42"]
    np.testing.assert_array_equal(df["dwell_time"].to_numpy(), [3.5, np.nan, 0.0])
    # auto reads text as ISO-8601 too
    assert_same_events(load_events(path, "csv", columns=columns, sep=";"), df)


def test_csv_positional_no_header_ms_and_no_type(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", "7\tx\t1433221332117\n7\ty\t1433221332000\n8\tx\t1433221333000\n")
    df = load_events(path, "csv", sep="\t", header=False, columns={"user": 0, "item": 1, "time": 2}, time_unit="ms")
    assert_schema(df)
    assert df["timestamp"].tolist() == [1433221332.117, 1433221332.0, 1433221333.0]
    assert df["event_type"].tolist() == ["event"] * 3  # no type column
    assert df["dwell_time"].isna().all()
    # without a mapping, no header means positions 0, 1, 2; auto reads these as milliseconds
    assert_same_events(load_events(path, "csv", sep="\t", header=False), df)


def test_csv_default_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "item_id,user_id,timestamp,extra\n5,a,881250949,zz\n6,a,881250950,zz\n")
    df = load_events(path, "csv")
    assert df["user_id"].tolist() == ["a", "a"]
    assert df["item_id"].tolist() == ["5", "6"]
    assert df["event_type"].tolist() == ["event", "event"]


def test_csv_partial_mapping_without_header_guesses_nothing(tmp_path: Path) -> None:
    # RetailRocket's layout without its header: column 4 (transaction id) must not become dwell.
    rows = "1433221332117,257597,view,355908,\n1433222276276,257597,transaction,355908,4000\n"
    path = write(tmp_path / "log.csv", rows)
    df = load_events(path, "csv", header=False, columns={"user": 1, "item": 3, "time": 0, "type": 2})
    assert df["event_type"].tolist() == ["view", "transaction"]
    assert df["dwell_time"].isna().all()
    with pytest.raises(DataError, match="no item column"):
        load_events(path, "csv", header=False, columns={"user": 1, "time": 0})


def test_csv_mapping_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "a,b,c\n1,2,881250949\n")
    with pytest.raises(DataError, match=r"no user column.*\['a', 'b', 'c'\]"):
        load_events(path, "csv")
    with pytest.raises(DataError, match="type column 'kind' not found"):
        load_events(path, "csv", columns={"user": "a", "item": "b", "time": "c", "type": "kind"})
    with pytest.raises(DataError, match="time column 9 is out of range"):
        load_events(path, "csv", columns={"user": 0, "item": 1, "time": 9})


def test_parquet_names_positions_and_datetimes(tmp_path: Path) -> None:
    table = pa.table(
        {
            "uid": pa.array([3, 3, 4], pa.int64()),
            "iid": pa.array(["p", "q", "p"]),
            "ts": pa.array([1433221332117, 1433221333000, 1433221334000], pa.int64()),
            "at": pa.array(
                pd.to_datetime(
                    ["2015-06-02 05:02:12.117", "2015-06-02 05:02:13", "2015-06-02 05:02:14"], format="ISO8601"
                )
            ),
            "type": pa.array(["view", "cart", "view"]),
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, row_group_size=2)
    by_name = load_events(path, "parquet", columns={"user": "uid", "item": "iid", "time": "ts", "type": "type"})
    assert_schema(by_name)
    assert by_name["user_id"].tolist() == ["3", "3", "4"]
    assert by_name["timestamp"].tolist() == [1433221332.117, 1433221333.0, 1433221334.0]
    assert by_name["event_type"].tolist() == ["view", "cart", "view"]
    by_position = load_events(path, "parquet", columns={"user": 0, "item": 1, "time": 3, "type": 4}, chunk_rows=1)
    np.testing.assert_allclose(by_position["timestamp"], by_name["timestamp"], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(by_position.drop(columns="timestamp"), by_name.drop(columns="timestamp"))


# -- bad values name the file and line ---------------------------------------------------------


def test_bad_timestamp_names_line_across_chunks(tmp_path: Path) -> None:
    rows = [f"u{i},{i},{881250949 + i}" for i in range(6)]
    rows[4] = "u4,4,12"  # 1970: out of range
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"{path}: line 6: timestamp 12 "):
        load_events(path, "csv", chunk_rows=2)


def test_bad_iso_and_text_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,1,2015-06-02T05:02:12\na,2,yesterday\n")
    with pytest.raises(DataError, match=rf"{path}: line 3: timestamp 'yesterday'.*ISO-8601"):
        load_events(path, "csv")
    path = write(tmp_path / "num.csv", "user_id,item_id,timestamp\na,1,881250949\na,2,\n")
    with pytest.raises(DataError, match=rf"{path}: line 3: timestamp nan"):
        load_events(path, "csv")
    path = write(tmp_path / "iso.csv", "user_id,item_id,timestamp\na,1,2015-06-02T05:02:12\na,2,\n")
    with pytest.raises(DataError, match=rf"{path}: line 3: timestamp is missing"):
        load_events(path, "csv", time_unit="iso")


def test_bad_dwell_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp,dwell_time\na,1,881250949,2\na,2,881250950,-1\n")
    with pytest.raises(DataError, match=rf"{path}: line 3: dwell_time -1"):
        load_events(path, "csv")


def test_bad_parquet_timestamp_names_row(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"user_id": ["a", "b", "c"], "item_id": ["1", "2", "3"], "timestamp": [9e8, 9e8, -5.0]}), path
    )
    with pytest.raises(DataError, match=rf"{path}: row 2: timestamp -5.0"):
        load_events(path, "parquet", chunk_rows=2)


def test_unknown_format_and_unit() -> None:
    with pytest.raises(DataError, match="unknown format 'xml'"):
        load_events("x", "xml")
    with pytest.raises(DataError, match="unknown time unit 'h'"):
        load_events("x", "csv", time_unit="h")


# -- histories ------------------------------------------------------------------------


def test_histories_stable_on_ties(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp\n"
        "b,late,900000300\n"
        "a,t1,900000100\n"
        "b,first,900000000\n"
        "a,t2,900000100\n"
        "a,early,900000050\n"
        "a,t3,900000100\n",
    )
    histories = user_histories(load_events(path, "csv", chunk_rows=2))
    assert [h.user_id for h in histories] == ["a", "b"]
    assert histories[0].item_ids.tolist() == ["early", "t1", "t2", "t3"]  # equal times keep file order
    assert histories[0].seconds.tolist() == [900000050.0, 900000100.0, 900000100.0, 900000100.0]
    assert histories[1].item_ids.tolist() == ["first", "late"]
    assert histories[1].event_types.tolist() == ["event", "event"]


def test_histories_from_plain_frame() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["u2", "u1", "u2"],
            "item_id": ["9", "8", "7"],
            "timestamp": [2.0, 1.0, 1.0],
            "event_type": ["view", "buy", "cart"],
            "dwell_time": [1.0, np.nan, 3.0],
        }
    )
    u1, u2 = user_histories(df)
    assert (u1.user_id, u1.item_ids.tolist()) == ("u1", ["8"])
    assert u2.item_ids.tolist() == ["7", "9"]
    assert u2.event_types.tolist() == ["cart", "view"]
    assert u2.dwell.tolist() == [3.0, 1.0]
    assert user_histories(df.iloc[:0]) == []


# -- synthetic ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return synthetic_events()


def test_synthetic_deterministic_by_seed(synthetic: pd.DataFrame) -> None:
    assert_schema(synthetic)
    assert_same_events(synthetic_events(), synthetic)
    other = synthetic_events(seed=1)
    assert not other["item_id"].astype(str).equals(synthetic["item_id"].astype(str))


def test_synthetic_statistics(synthetic: pd.DataFrame) -> None:
    assert synthetic["user_id"].nunique() == 2000
    assert synthetic["item_id"].nunique() <= 3000
    assert 60_000 < len(synthetic) < 200_000
    assert set(synthetic["event_type"].unique()) == set(EVENT_TYPES)
    # Zipf: the top 1% of items get far more than 1% of the events.
    counts = synthetic["item_id"].value_counts()
    assert counts.iloc[:30].sum() / len(synthetic) > 0.10
    # The funnel: views are the most common step, every buy follows a cart of the same item.
    kinds = synthetic["event_type"].value_counts()
    assert kinds["view"] > kinds["click"] > kinds["cart"] > kinds["buy"]
    pairs = synthetic["user_id"].astype(str) + "/" + synthetic["item_id"].astype(str)
    carts = set(pairs[synthetic["event_type"] == "cart"])
    buys = set(pairs[synthetic["event_type"] == "buy"])
    assert buys <= carts
    # Dwell only on view/click; times within 2020 and already in order per user.
    has_dwell = synthetic["dwell_time"].notna()
    assert set(synthetic.loc[has_dwell, "event_type"].unique()) == {"view", "click"}
    assert (synthetic.loc[has_dwell, "dwell_time"] > 0).all()
    histories = user_histories(synthetic)
    assert all(np.all(np.diff(h.seconds) > 0) for h in histories)
    assert 1577836800 <= synthetic["timestamp"].min() and synthetic["timestamp"].max() < 1609459200
    # Session gaps: some gaps within a user exceed an hour, most are under ten minutes.
    gaps = np.concatenate([np.diff(h.seconds) for h in histories])
    assert 0.02 < np.mean(gaps > 3600) < 0.3
    assert np.median(gaps) < 600


def test_synthetic_is_learnable(synthetic: pd.DataFrame) -> None:
    """The last viewed item is predictable from the one before: top-10 successors seen earlier
    hit far more often than the 10 most popular items."""
    views = synthetic[synthetic["event_type"] == "view"]
    users = views["user_id"].cat.codes.to_numpy()
    items = views["item_id"].astype(str).to_numpy()
    same_user = users[1:] == users[:-1]
    is_last = np.append(users[1:] != users[:-1], True)
    train = same_user & ~is_last[1:]
    pairs = pd.DataFrame({"prev": items[:-1][train], "next": items[1:][train]})
    counts = pairs.value_counts().reset_index(name="n")
    top = counts.sort_values(["prev", "n"], ascending=[True, False], kind="stable").groupby("prev").head(10)
    successors = top.groupby("prev")["next"].agg(set).to_dict()
    popular = set(pairs["next"].value_counts().index[:10])
    last = np.flatnonzero(is_last)
    targets, previous = items[last], items[last - 1]
    successor_hits = np.mean([t in successors.get(p, ()) for p, t in zip(previous, targets, strict=True)])
    popular_hits = np.mean([t in popular for t in targets])
    assert successor_hits > 3 * popular_hits
    assert successor_hits > 0.3


# -- command line -----------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(argv)


def test_events_from_args_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", "x|7|buy|1433221332117\n")
    args = parse(
        ["--data", str(path), "--format", "csv", "--sep", "|", "--no-header"]
        + ["--user-col", "1", "--item-col", "0", "--time-col", "3", "--type-col", "2"]
    )
    df = events_from_args(args)
    assert df.iloc[0].tolist()[:4] == ["7", "x", 1433221332.117, "buy"]


def test_events_from_args_synthetic_and_format_required(tmp_path: Path) -> None:
    df = events_from_args(parse(["--synthetic-users", "5", "--synthetic-items", "50", "--seed", "3"]))
    assert_same_events(df, synthetic_events(n_users=5, n_items=50, seed=3))
    with pytest.raises(DataError, match="--format is required"):
        events_from_args(parse(["--data", str(tmp_path)]))
