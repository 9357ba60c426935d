"""A synthetic behavior-log generator, deterministic by seed.

It serves fast tests and a fresh machine without real data. Its numbers are
never a quality claim: a model that does well here has only learned the rules
below.

How a log is made:
- Items have Zipf popularity (weight 1 / rank**zipf_a, ranks shuffled) and are
  split into `n_clusters` interest clusters; inside a cluster the items sit on a
  ring, and a user browsing one item often moves on to one of the next few ring
  items (related products), so the next item depends on the recent ones.
- Each user has 1 to 3 interests (clusters, Dirichlet weights). Visits come in
  sessions; a session picks one interest and starts at a popular item of it.
  Then each visit either follows the ring (`p_follow`), jumps to a popular item
  of the session's interest, or (`p_noise`) to a popular item of any cluster.
- A visit is a funnel: a `view` (with dwell), maybe a `click` (longer dwell),
  then maybe `fav`, `cart` and, after a cart, `buy` (no dwell), seconds apart.
- Visits in a session are about a minute apart; sessions about a day apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from model.readers import events_frame

EVENT_TYPES = ("view", "click", "fav", "cart", "buy")  # funnel order inside one visit
START = 1577836800.0  # 2020-01-01T00:00:00Z: users start within the following 150 days
DAY = 86400.0


def synthetic_events(
    n_users: int = 2000,
    n_items: int = 3000,
    seed: int = 0,
    *,
    n_clusters: int | None = None,
    mean_visits: float = 30.0,
    max_visits: int = 200,
    zipf_a: float = 1.0,
    p_new_session: float = 0.15,
    p_follow: float = 0.6,
    p_noise: float = 0.15,
    p_click: float = 0.35,
    p_fav: float = 0.1,
    p_cart: float = 0.3,
    p_buy: float = 0.5,
) -> pd.DataFrame:
    """A synthetic log in the events schema, rows ordered by user then time."""
    if n_users < 1 or n_items < 2:
        raise ValueError("synthetic_events needs n_users >= 1 and n_items >= 2")
    rng = np.random.default_rng(seed)
    clusters = n_clusters or max(1, min(n_items // 150, 50))
    ring, starts, sizes, position = _clusters(rng, n_items, clusters)
    weight = 1.0 / (rng.permutation(n_items) + 1.0) ** zipf_a
    cumulative = np.cumsum(weight[ring])  # popularity CDF along the ring, cluster by cluster
    before = np.concatenate([[0.0], cumulative])[starts]  # mass before each cluster
    mass = cumulative[starts + sizes - 1] - before

    def popular(cluster: np.ndarray) -> np.ndarray:
        """One popularity-weighted item from each given cluster."""
        target = before[cluster] + rng.random(cluster.shape[0]) * mass[cluster]
        return ring[np.minimum(np.searchsorted(cumulative, target, side="right"), n_items - 1)]

    # Users: 1-3 interests with Dirichlet weights; visit counts lognormal around mean_visits.
    n_interests = rng.integers(1, 4, size=n_users)
    interests = rng.integers(0, clusters, size=(n_users, 3))
    shares = rng.dirichlet(np.ones(3), size=n_users) * (np.arange(3) < n_interests[:, None])
    shares /= shares.sum(axis=1, keepdims=True)
    visits = np.clip(np.rint(rng.lognormal(np.log(mean_visits), 0.6, size=n_users)), 5, max_visits).astype(np.int64)

    # Walk all users one visit at a time (vectorised over users).
    steps = int(visits.max())
    item = np.zeros((n_users, steps), dtype=np.int64)
    pause = np.zeros((n_users, steps), dtype=np.float64)
    begin = START + rng.random(n_users) * 150 * DAY
    session = np.zeros(n_users, dtype=np.int64)
    current = np.zeros(n_users, dtype=np.int64)
    for t in range(steps):
        new = (rng.random(n_users) < p_new_session) | (t == 0)
        pick = (rng.random(n_users)[:, None] > np.cumsum(shares, axis=1)).sum(axis=1)
        session = np.where(new, interests[np.arange(n_users), np.minimum(pick, 2)], session)
        move = rng.random(n_users)
        follow = ~new & (move < p_follow)
        noise = ~new & ~follow & (move > 1.0 - p_noise)
        cluster = np.where(noise, rng.integers(0, clusters, size=n_users), session)
        ring_pos = position[current]
        own = np.searchsorted(starts, ring_pos, side="right") - 1
        step = rng.integers(1, 4, size=n_users)
        neighbour = ring[starts[own] + (ring_pos - starts[own] + step) % sizes[own]]
        current = np.where(follow, neighbour, popular(cluster))
        item[:, t] = current
        # Idle time before this visit, on top of the previous visit's own duration.
        pause[:, t] = np.where(new, DAY * rng.exponential(1.0, n_users) + 3600.0, 5.0 + rng.exponential(60.0, n_users))

    valid = np.arange(steps)[None, :] < visits[:, None]
    users = np.repeat(np.arange(n_users), visits)
    first = np.concatenate([[0], np.cumsum(visits)[:-1]])
    pause_flat = pause[valid]
    pause_flat[first] = 0.0
    return _funnels(rng, users, item[valid], begin[users], pause_flat, first, p_click, p_fav, p_cart, p_buy)


def _clusters(
    rng: np.random.Generator, n_items: int, clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle items onto one ring cut into `clusters` arcs: (ring, arc starts, arc sizes, item -> ring index)."""
    ring = rng.permutation(n_items)
    sizes = np.full(clusters, n_items // clusters, dtype=np.int64)
    sizes[: n_items % clusters] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(n_items, dtype=np.int64)
    position[ring] = np.arange(n_items)
    return ring, starts, sizes, position


def _funnels(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    begin: np.ndarray,
    pause: np.ndarray,
    first: np.ndarray,
    p_click: float,
    p_fav: float,
    p_cart: float,
    p_buy: float,
) -> pd.DataFrame:
    """Visits (grouped by user, `first` = each user's first row) -> events: view, then click,
    fav, cart, buy as the funnel allows; a visit starts `pause` seconds after the previous one ends."""
    n = items.shape[0]
    click = rng.random(n) < p_click
    fav = click & (rng.random(n) < p_fav)
    cart = click & (rng.random(n) < p_cart)
    buy = cart & (rng.random(n) < p_buy)
    happened = np.stack([np.ones(n, dtype=bool), click, fav, cart, buy], axis=1)
    dwell = np.full((n, len(EVENT_TYPES)), np.nan)
    dwell[:, 0] = rng.lognormal(np.log(8.0), 0.8, n)
    dwell[:, 1] = rng.lognormal(np.log(40.0), 0.7, n)
    # Each step happens after the previous one's dwell (or a few seconds when it has none).
    spent = np.where(np.isnan(dwell), 2.0 + rng.exponential(5.0, (n, len(EVENT_TYPES))), dwell)
    spent = np.where(happened, spent, 0.0)
    offset = np.concatenate([np.zeros((n, 1)), np.cumsum(spent, axis=1)[:, :-1]], axis=1)
    previous = np.concatenate([[0.0], spent.sum(axis=1)[:-1]])
    previous[first] = 0.0
    elapsed = np.cumsum(pause + previous)
    clock = begin + elapsed - np.repeat(elapsed[first], np.diff(np.append(first, n)))
    rows, kinds = np.nonzero(happened)  # row-major: a visit's events stay together, in funnel order
    return events_frame(
        user_id=_numbered(users[rows], int(users.max()) + 1),
        item_id=_numbered(items[rows], int(items.max()) + 1),
        timestamp=np.round(clock[rows] + offset[rows, kinds], 3),
        event_type=_named(kinds, EVENT_TYPES),
        dwell_time=np.round(dwell[rows, kinds], 3),
    )


def _numbered(index: np.ndarray, count: int) -> pd.Categorical:
    """0-based indices -> categorical ids "1".."count", without one Python string per row."""
    return _named(index, (np.arange(count) + 1).astype(str))


def _named(index: np.ndarray, names: tuple[str, ...] | np.ndarray) -> pd.Categorical:
    """Indices into `names` -> a categorical with sorted string categories, as the readers make."""
    labels = np.asarray(names, dtype=str)
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    codes = rank[index]
    return pd.Categorical.from_codes(codes, categories=pd.Index(labels[order], dtype="str")).remove_unused_categories()
