"""Bounded per-client query histories, and the distance and calibration helpers of the per-client detectors.

``extraction`` and ``probing`` judge a client by its queries over time, so they keep, per client id, the most
recent encoded queries (and one number per query, such as PRADA's minimum distance). Client ids come from the
traffic and are unbounded in number: :class:`ClientHistories` keeps at most ``max_clients`` of them (least
recently active evicted first), at most ``max_history`` queries and values per client, and forgets a client
that has sent nothing for ``idle_expiry`` seconds of *event* time. Its memory is therefore bounded by
``max_clients * max_history * (dim * 4 + 8)`` bytes plus a small per-client overhead, whatever the traffic.

The state is saved as a few concatenated numpy arrays plus a JSON list of client ids (no pickle), in LRU
order, so that a restored store evicts and expires exactly as the original would have.

The peer comparison of ``evasion`` and ``extraction`` also lives here. Both test each client against the
reference; when the whole population shifts (a broken feature pipeline, a new kind of user), every client
fails that test although none is attacking. A client is therefore flagged only if it also stands out from
the other clients of the same window: :func:`rank_sum_p_values` compares a client's per-event scores with
every other event of the window, :func:`peer_robust_z` and :func:`peer_p_values` compare one number per
client with the other clients' numbers. Both tests are one-sided (the client is *more* extreme).

The module stays just above 500 lines: the bounded store, the peer tests and the base class of the
per-client detectors are what ``evasion``, ``extraction`` and ``probing`` share, kept in one place.
"""

from __future__ import annotations

import abc
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
from scipy import stats

from detectors._checks import check_float, check_int
from detectors.base import Batch, DetectionResult, Detector
from detectors.encoding import FeatureSchema
from detectors.state import DetectorState

__all__ = [
    "ClientHistories",
    "ClientHistory",
    "ClientHistoryDetector",
    "ClientHistoryState",
    "ClientQueries",
    "client_result",
    "earlier_distances",
    "group_by_client",
    "peer_p_values",
    "peer_robust_z",
    "pseudo_client_streams",
    "rank_sum_p_values",
    "robust_z",
]

# Clients tested in a window needed for the peer comparison (the detectors' ``min_peers`` default): with
# fewer, the other clients say too little about the population, and the reference-only test applies.
MIN_PEERS = 5

# Asymptotic efficiency of the MAD as an estimate of a normal standard deviation: a spread estimated from
# k values by the MAD is about as uncertain as a sample sd from 0.37 k values. Used for the degrees of freedom
# of the peer test, so that its tail stays calibrated with few peers (checked by simulation with 4 to 50
# normal peers: false-alarm rates within 1.1 times the nominal level down to 1e-4).
_MAD_EFFICIENCY = 0.37

# MAD to standard deviation for normal data.
_MAD_TO_SD = 1.4826

# Infinite client statistics (a W of exactly 1, a p-value that underflowed) are clipped to this for the peer
# median and MAD, which cannot subtract infinities.
_Z_CLIP = 1e3


@dataclass
class ClientHistory:
    """What is remembered of one client."""

    queries: np.ndarray
    """float32, shape ``(m, dim)``: the client's last ``m <= max_history`` encoded queries, oldest first."""
    values: np.ndarray
    """float64, shape ``(v,)``: one number per query oldest first, ``v <= max_history``."""
    n_queries: int
    """All queries ever seen from the client while it was remembered (not bounded)."""
    last_seen: float
    """Event time (epoch seconds) of the client's latest query."""


class ClientHistories:
    """An LRU map of client id -> :class:`ClientHistory`, bounded in clients, queries and idle time.

    Parameters
    ----------
    dim
        Width of an encoded query (>= 1).
    max_clients
        Clients remembered at most (>= 1); the least recently updated one is evicted first.
    max_history
        Queries (and values) kept per client at most (>= 1); the oldest are dropped first.
    idle_expiry
        A client with no query for this many seconds of event time is forgotten (> 0).
    """

    def __init__(self, dim: int, *, max_clients: int, max_history: int, idle_expiry: float) -> None:
        self.dim = dim
        self.max_clients = max_clients
        self.max_history = max_history
        self.idle_expiry = idle_expiry
        self._clients: OrderedDict[str, ClientHistory] = OrderedDict()
        self.evicted = 0  # clients dropped because the store was full (since creation or load)
        self.expired = 0  # clients dropped because they were idle

    def __len__(self) -> int:
        return len(self._clients)

    def __contains__(self, client: object) -> bool:
        return client in self._clients

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def get(self, client: str) -> ClientHistory | None:
        """The client's history, None if not (or no longer) remembered. Leaves the LRU order alone."""
        return self._clients.get(client)

    def empty_queries(self) -> np.ndarray:
        """A zero-row query matrix of the store's width (the history of a new client)."""
        return np.empty((0, self.dim), dtype=np.float32)

    @property
    def n_rows(self) -> int:
        """Queries stored over all clients."""
        return sum(history.queries.shape[0] for history in self._clients.values())

    def update(self, client: str, queries: np.ndarray, values: np.ndarray, last_seen: float) -> ClientHistory:
        """Append a client's new queries and values, mark it most recently used, evict beyond ``max_clients``.

        Parameters
        ----------
        client
            The client id.
        queries
            float32, shape ``(n, dim)``: the new queries, oldest first.
        values
            float64, shape ``(v,)``: the new per-query values (may be shorter than ``n``, e.g. PRADA has no
            distance for a client's first query).
        last_seen
            Event time of the latest of the new queries.

        Returns
        -------
        ClientHistory
            The client's updated history.
        """
        previous = self._clients.pop(client, None)
        if previous is None:
            stored_queries, stored_values, count, seen = self.empty_queries(), np.empty(0), 0, -math.inf
        else:
            stored_queries, stored_values = previous.queries, previous.values
            count, seen = previous.n_queries, previous.last_seen
        history = ClientHistory(
            # np.array copies: a slice of the concatenation would keep the whole concatenation alive.
            queries=np.array(
                np.concatenate([stored_queries, queries])[-self.max_history :], dtype=np.float32
            ),
            values=np.array(np.concatenate([stored_values, values])[-self.max_history :], dtype=np.float64),
            n_queries=count + int(queries.shape[0]),
            last_seen=max(seen, float(last_seen)),
        )
        self._clients[client] = history
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
            self.evicted += 1
        return history

    def expire(self, now: float) -> int:
        """Forget clients idle for more than ``idle_expiry`` seconds before ``now``; returns how many."""
        cutoff = now - self.idle_expiry
        idle = [client for client, history in self._clients.items() if history.last_seen < cutoff]
        for client in idle:
            del self._clients[client]
        self.expired += len(idle)
        return len(idle)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The store as concatenated numpy arrays and a JSON list of client ids, in LRU order."""
        histories = list(self._clients.values())
        return {
            "clients": list(self._clients),
            "last_seen": np.array([h.last_seen for h in histories], dtype=np.float64),
            "n_queries": np.array([h.n_queries for h in histories], dtype=np.int64),
            "query_counts": np.array([h.queries.shape[0] for h in histories], dtype=np.int64),
            "value_counts": np.array([h.values.shape[0] for h in histories], dtype=np.int64),
            "queries": np.concatenate([h.queries for h in histories]) if histories else self.empty_queries(),
            "values": np.concatenate([h.values for h in histories]) if histories else np.empty(0),
            "evicted": self.evicted,
            "expired": self.expired,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a store saved by :meth:`state_dict`.

        Raises
        ------
        ValueError
            If the state is malformed or does not fit this store's ``dim`` and bounds.
        """
        try:
            clients = [str(client) for client in state["clients"]]
            last_seen = np.asarray(state["last_seen"], dtype=np.float64)
            n_queries = np.asarray(state["n_queries"], dtype=np.int64)
            query_counts = np.asarray(state["query_counts"], dtype=np.int64)
            value_counts = np.asarray(state["value_counts"], dtype=np.int64)
            queries = np.asarray(state["queries"], dtype=np.float32)
            values = np.asarray(state["values"], dtype=np.float64)
            evicted, expired = int(state["evicted"]), int(state["expired"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed client history state: {error!r}") from error
        n = len(clients)
        if any(a.shape != (n,) for a in (last_seen, n_queries, query_counts, value_counts)):
            raise ValueError(f"malformed client history state: per-client arrays do not have {n} entries")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"client history state has queries of shape {queries.shape}, expected (*, {self.dim})"
            )
        if queries.shape[0] != query_counts.sum() or values.shape != (value_counts.sum(),):
            raise ValueError("malformed client history state: counts do not match the stored rows")
        if n > self.max_clients or (n and max(query_counts.max(), value_counts.max()) > self.max_history):
            raise ValueError(
                f"client history state holds {n} clients / up to {query_counts.max(initial=0)} queries per "
                f"client, beyond this store's max_clients={self.max_clients}, max_history={self.max_history}"
            )
        query_ends, value_ends = np.cumsum(query_counts), np.cumsum(value_counts)
        self._clients = OrderedDict()
        for i, client in enumerate(clients):
            self._clients[client] = ClientHistory(
                queries=queries[query_ends[i] - query_counts[i] : query_ends[i]].copy(),
                values=values[value_ends[i] - value_counts[i] : value_ends[i]].copy(),
                n_queries=int(n_queries[i]),
                last_seen=float(last_seen[i]),
            )
        self.evicted, self.expired = evicted, expired


# ---------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class ClientQueries:
    """One client's queries in a window, in event-time order."""

    client: str
    rows: np.ndarray  # int, positions in the window
    last_seen: float


def group_by_client(window: Batch) -> list[ClientQueries]:
    """The window's events grouped by client id, each group in event-time order (events without id ignored).

    Clients come in the order of their latest event (ties by id), so that the LRU order of a store updated
    in this order follows event time.
    """
    timestamps = np.asarray(window.timestamps, dtype=np.float64)
    order = np.argsort(timestamps, kind="stable")
    rows: dict[str, list[int]] = {}
    for i in order:
        client = window.client_ids[i]
        if client is not None:
            rows.setdefault(str(client), []).append(int(i))
    groups = [
        ClientQueries(client, np.array(r, dtype=np.intp), float(timestamps[r[-1]]))
        for client, r in rows.items()
    ]
    groups.sort(key=lambda g: (g.last_seen, g.client))
    return groups


def earlier_distances(history: np.ndarray, new: np.ndarray, max_history: int) -> np.ndarray:
    """Euclidean distances from each new query to the client's queries before it, ``inf`` elsewhere.

    Parameters
    ----------
    history
        float32 ``(h, dim)``: the client's stored queries, oldest first.
    new
        float32 ``(n, dim)``: the client's new queries, oldest first.
    max_history
        Only the ``max_history`` queries right before a new query count as "earlier" (the store's bound, so
        that distances do not depend on whether the earlier queries arrived in this window or a former one).

    Returns
    -------
    np.ndarray
        float64 ``(n, h + n)``; entry ``(j, i)`` is the distance of new query ``j`` to query ``i`` of
        ``[history; new]`` when ``i`` is one of its ``max_history`` predecessors, else ``inf``.
    """
    pool = np.concatenate([history, new]).astype(np.float64)
    x = new.astype(np.float64)
    squared = (x * x).sum(axis=1)[:, None] + (pool * pool).sum(axis=1)[None, :] - 2.0 * (x @ pool.T)
    distances = np.sqrt(np.maximum(squared, 0.0))
    h, n = history.shape[0], new.shape[0]
    position = h + np.arange(n)[:, None]  # each new query's index in the pool
    index = np.arange(h + n)[None, :]
    distances[(index >= position) | (index < position - max_history)] = np.inf
    return distances


def pseudo_client_streams(n_reference: int, n_streams: int, length: int, seed: int) -> list[np.ndarray]:
    """Seeded random orders of reference rows: benign pseudo-clients sending ``length`` distinct rows each."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_reference)[:length] for _ in range(n_streams)]


def robust_z(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Robust z-scores ``(x - median) / (1.4826 MAD)`` of the clients' query counts (0 where MAD is 0)."""
    x = np.asarray(counts, dtype=np.float64)
    if x.size == 0:
        return x
    median = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - median))
    if mad == 0:
        return np.zeros_like(x)
    return (x - median) / mad


# ---------------------------------------------------------------------------------------------- peers


def peer_robust_z(values: np.ndarray, min_spread: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each client's value as a robust z-score against the *other* clients' values (leave-one-out).

    Parameters
    ----------
    values
        float, shape ``(m,)`` with ``m >= 2``: one statistic per client (infinities are clipped).
    min_spread
        Floor of the peers' spread: a MAD from a few peers can be near 0 by chance, and would turn a
        small difference into a large z.

    Returns
    -------
    tuple of np.ndarray
        Per client: the z-score ``(x - median) / spread`` of its value, and the median and spread
        (``max(1.4826 MAD, min_spread)``) of the others' values.
    """
    x = np.clip(np.asarray(values, dtype=np.float64), -_Z_CLIP, _Z_CLIP)
    m = x.size
    # Row i holds the values of every client but i (m x (m - 1); m is at most the clients in a window).
    others = np.broadcast_to(x, (m, m))[~np.eye(m, dtype=bool)].reshape(m, m - 1)
    centre = np.median(others, axis=1)
    spread = np.maximum(_MAD_TO_SD * np.median(np.abs(others - centre[:, None]), axis=1), min_spread)
    return (x - centre) / spread, centre, spread


def peer_p_values(z: np.ndarray, n_peers: int) -> np.ndarray:
    """One-sided p-values of :func:`peer_robust_z` scores against ``n_peers`` other clients.

    Student's t with ``0.37 (n_peers - 1)`` degrees of freedom (at least 1): the median and MAD of a few
    peers are themselves uncertain, so a normal tail would flag benign clients far more often than claimed.
    """
    df = max(1.0, _MAD_EFFICIENCY * (n_peers - 1))
    return np.asarray(stats.t.sf(z, df), dtype=np.float64)


def rank_sum_p_values(scores: np.ndarray, members: Sequence[np.ndarray]) -> np.ndarray:
    """One-sided Mann-Whitney p-values: does each client score higher than the rest of the window?

    Each client is compared with all other events of the window, so one ranking of the window serves every
    client: the client's rank sum within the whole window is its rank sum in "client + others". Normal
    approximation with tie and continuity correction (scipy's ``method="asymptotic"``).

    Parameters
    ----------
    scores
        float, shape ``(n,)``: one score per event of the window (NaN: left out of the comparison).
    members
        Per client, the positions of its events in ``scores``.

    Returns
    -------
    np.ndarray
        Per client, ``P(U >= u)`` under the hypothesis that its events are exchangeable with the others'
        (1.0 for a client without scored events or without scored peers).
    """
    finite = np.isfinite(scores)
    n = int(finite.sum())
    ranks = np.full(scores.shape, np.nan)
    ranks[finite] = stats.rankdata(scores[finite])
    _, tie_counts = np.unique(scores[finite], return_counts=True)
    tie_term = float((tie_counts**3 - tie_counts).sum()) / (n * (n - 1)) if n > 1 else 0.0
    p_values = np.ones(len(members))
    for i, rows in enumerate(members):
        own = ranks[rows]
        own = own[np.isfinite(own)]
        n1, n2 = own.size, n - own.size
        variance = n1 * n2 / 12.0 * ((n + 1) - tie_term)
        if n1 == 0 or n2 == 0 or variance <= 0:
            continue
        u = float(own.sum()) - n1 * (n1 + 1) / 2.0
        p_values[i] = float(stats.norm.sf((u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)))
    return p_values


class ClientHistoryState(DetectorState):
    """The fields every per-client detector's state has, declared for the type checker only.

    Not a dataclass on purpose: each subclass (a dataclass) lists these fields itself, in its own order,
    because the field order is the order of the stored mapping, and states saved before this class existed
    must stay byte-identical.
    """

    params: dict[str, Any]
    """The ``calibrated_with`` hyper-parameters."""
    schema: dict[str, Any]
    """``FeatureSchema.state_dict()``."""
    clients: dict[str, Any]
    """``ClientHistories.state_dict()``."""


ClientStateT = TypeVar("ClientStateT", bound=ClientHistoryState)


class ClientHistoryDetector(Detector[ClientStateT]):
    """What ``extraction`` and ``probing`` share: a fitted feature encoding and a bounded store of
    per-client query histories that ``evaluate`` extends (hence ``stateful``).

    Subclasses pass their ``max_history``, ``max_clients`` and ``idle_expiry`` arguments to
    :meth:`_init_histories` in ``__init__``, and ``fit`` installs the schema and a store from
    :meth:`_new_store`. Saving and loading are written here: a subclass names only its own learned fields
    (:meth:`_learned_fields`), checks them (:meth:`_check_learned`) and installs them
    (:meth:`_install_learned`).
    """

    stateful = True
    max_clients: int
    max_history: int
    idle_expiry: float

    def _init_histories(
        self, max_history: int, max_clients: int, idle_expiry: float, *, min_history: int
    ) -> None:
        """Check and store the bounds of the client histories (``max_history >= min_history``); no history
        is kept before ``fit``."""
        self.max_history = check_int("max_history", max_history, min_history)
        self.max_clients = check_int("max_clients", max_clients, 1)
        self.idle_expiry = check_float("idle_expiry", idle_expiry, 0.0, math.inf)
        self._schema: FeatureSchema | None = None
        self._clients = ClientHistories(1, max_clients=1, max_history=1, idle_expiry=1.0)

    @property
    def fitted(self) -> bool:
        return self._schema is not None

    @property
    def clients(self) -> ClientHistories:
        """The remembered client histories (read them, do not modify them)."""
        self._require_fitted()
        return self._clients

    def _fitted_schema(self) -> FeatureSchema:
        """The feature encoding learnt at ``fit``."""
        self._require_fitted()
        assert self._schema is not None  # fitted means a schema
        return self._schema

    def _new_store(self, dim: int) -> ClientHistories:
        return ClientHistories(
            dim, max_clients=self.max_clients, max_history=self.max_history, idle_expiry=self.idle_expiry
        )

    def _window_queries(self, window: Batch) -> np.ndarray | DetectionResult:
        """The window's encoded queries, once the window has what per-client histories need, with the
        clients idle for ``idle_expiry`` forgotten first; a skipped result when it cannot be tested.

        Raises
        ------
        NotFittedError
            If the detector has not been fitted or loaded.
        """
        schema = self._fitted_schema()
        n = len(window)
        if n == 0:
            return self.skipped(0, "empty window")
        if len(window.client_ids) != n or all(client is None for client in window.client_ids):
            return self.skipped(n, "the window carries no client ids")
        if len(window.timestamps) != n:
            return self.skipped(n, "the window carries no timestamps (needed to order each client's queries)")
        if len(window.features) != n:
            return self.skipped(n, "the window carries no features")
        encoded = window.encoded(schema)
        self._clients.expire(float(np.max(window.timestamps)))
        return encoded

    # ------------------------------------------------------------------ state

    def _save_state(self) -> ClientStateT:
        fields = {
            "params": self._calibration(),
            "schema": self._fitted_schema().state_dict(),
            "clients": self._clients.state_dict(),
            **self._learned_fields(),
        }
        return cast(ClientStateT, self.state_type(**fields))

    def _load_state(self, state: ClientStateT) -> None:
        self._check_calibration(state.params)
        schema = FeatureSchema.from_state(state.schema)
        self._check_learned(state, schema)
        store = self._restore_store(schema, state.clients)
        # Installed only once every check has passed: a rejected state leaves the detector as it was.
        self._schema = schema
        self._clients = store
        self._install_learned(state)

    @abc.abstractmethod
    def _learned_fields(self) -> dict[str, Any]:
        """The subclass's own state fields (the calibration), by field name."""

    @abc.abstractmethod
    def _check_learned(self, state: ClientStateT, schema: FeatureSchema) -> None:
        """A ValueError (see ``_malformed``) if the subclass's own fields of a loaded state are
        inconsistent."""

    @abc.abstractmethod
    def _install_learned(self, state: ClientStateT) -> None:
        """Install the subclass's own fields of a loaded, checked state."""

    def _restore_store(self, schema: FeatureSchema, clients: Mapping[str, Any]) -> ClientHistories:
        """The client histories saved by ``ClientHistories.state_dict``, checked against this detector's
        limits."""
        store = self._new_store(schema.dim)
        try:
            store.load_state_dict(clients)
        except (KeyError, ValueError) as error:
            raise ValueError(f"{self.id}: {error}") from error
        return store


def client_result(
    detector: Detector[Any],
    n_events: int,
    top: Mapping[str, Any],
    flagged: bool,
    evidence: dict[str, Any],
    *,
    threshold: float | None = None,
) -> DetectionResult:
    """The result of a detector that tests clients one by one.

    ``top`` is the most significant client's finding (``statistic``, ``threshold``, ``p_value`` and its
    ``subject``); its figures become the result's. When nothing is flagged the finding is still shown, as
    ``evidence["most_significant"]`` without the client's id: a client that was not flagged is not named.
    ``threshold`` replaces the finding's own when the detector has one critical value for every client.
    """
    if not flagged:
        evidence["most_significant"] = {key: value for key, value in top.items() if key != "subject"}
    return detector.result(
        n_events,
        alert=flagged,
        statistic=top["statistic"],
        threshold=top["threshold"] if threshold is None else threshold,
        p_value=top["p_value"],
        evidence=evidence,
    )
