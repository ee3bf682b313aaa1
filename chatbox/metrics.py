"""What chatbox counts for Prometheus, in one place.

Each server has its own registry, so tests can run several servers in one
process. Gauges that mirror state someone else owns (connections, who is
registered, history size) read that state when scraped instead of keeping a
copy that could drift.
"""

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ADMIN_OUTCOMES", "Metrics"]

ADMIN_OUTCOMES = ("ok", "unauthorized", "bad_request", "not_found", "conflict", "error")


# Request types counted by name in chatbox_requests_total; anything else a
# client sends is "other", so a client cannot mint label values.
REQUEST_TYPES = frozenset(
    {"name", "send", "get", "typing", "online", "auth", "moderate"}
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_open_fds against process_max_fds (connections are file
        # descriptors), memory, CPU, start time: read from /proc when scraped.
        ProcessCollector(registry=self.registry)
        self.connections = Gauge(
            "chatbox_connections", "Open connections.", registry=self.registry
        )
        self.registered = Gauge(
            "chatbox_registered_users",
            "Connections holding a nickname.",
            registry=self.registry,
        )
        self.messages_stored = Gauge(
            "chatbox_messages_stored",
            "Messages in the history.",
            registry=self.registry,
        )
        self.requests = Counter(
            "chatbox_requests",
            "Requests by type and outcome (ok, or the refusal reason).",
            ["type", "outcome"],
            registry=self.registry,
        )
        # The admin API's requests by outcome; the actions themselves are
        # counted by chatbox.admin.moderator.
        self.admin_requests = Counter(
            "chatbox_admin_requests",
            "Admin API requests by outcome: ok, unauthorized, bad_request, "
            "not_found, conflict, error.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ADMIN_OUTCOMES:
            self.admin_requests.labels(outcome=outcome)
        self._bytes_out: Callable[[], float] = lambda: 0
        self.registry.register(_BytesOut(self))
        self.batch_size = Histogram(
            "chatbox_persistence_batch_messages",
            "Messages written by one journal write and fsync (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.fsync_seconds = Histogram(
            "chatbox_persistence_write_seconds",
            "Time to write and fsync one batch to the journal.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.rooms_open = Gauge(
            "chatbox_rooms_open",
            "Rooms someone is connected to (the default room included).",
            registry=self.registry,
        )
        self.rooms_loaded = Gauge(
            "chatbox_rooms_loaded",
            "Rooms held in memory: open ones, and idle ones not yet unloaded.",
            registry=self.registry,
        )
        self._rooms: Any = None
        self.registry.register(_RoomChanges(self))
        self.moderation_actions = Counter(
            "chatbox_moderation_actions",
            "Operators' actions carried out (kick, ban, mute, delete, ...).",
            ["action"],
            registry=self.registry,
        )
        self.moderation_refusals = Counter(
            "chatbox_moderation_refusals",
            "Requests refused by an operator's rule: handshakes from banned "
            "addresses, nicknames banned or reserved, sends muted or slowed.",
            ["rule"],
            registry=self.registry,
        )
        self.retention_purged = Counter(
            "chatbox_retention_purged_messages",
            "Expired messages removed from storage by the retention purge.",
            registry=self.registry,
        )
        self.retention_failures = Counter(
            "chatbox_retention_purge_failures",
            "Retention purges that failed (and are tried again next interval).",
            registry=self.registry,
        )
        self.retention_last_purge = Gauge(
            "chatbox_retention_last_purge_timestamp_seconds",
            "When this process last finished a retention purge (Unix time); 0 "
            "before the first. Cluster nodes take turns under a lease: take the "
            "newest over the nodes.",
            registry=self.registry,
        )
        self.slow_consumers = Counter(
            "chatbox_slow_consumer_disconnects",
            "Clients cut off because they stopped reading.",
            registry=self.registry,
        )

    def observe(
        self,
        connections: Callable[[], float],
        registered: Callable[[], float],
        messages: Callable[[], float],
        bytes_out: Callable[[], float],
    ) -> None:
        """Read these when scraped; their owners keep the truth. Bytes out is
        counted on the broadcast hot path as a plain integer, not through a
        locked Prometheus counter."""
        self.connections.set_function(connections)
        self.registered.set_function(registered)
        self.messages_stored.set_function(messages)
        self._bytes_out = bytes_out

    def observe_rooms(self, rooms: Any, per_room: bool = False) -> None:
        """chatbox.chat.rooms.Rooms, read when scraped: one series each for
        all rooms, never one per room unless asked (`--room-metrics`), and
        then only for listed rooms: a thousand rooms would be a thousand
        series, and an unlisted room's name is an invitation."""
        self._rooms = rooms
        self.registry.register(_Health(rooms))
        self.rooms_open.set_function(rooms.open_count)
        self.rooms_loaded.set_function(rooms.loaded_count)
        if per_room:
            self.registry.register(_ListedRooms(rooms))

    def observe_tls(self, expiry: Callable[[], float]) -> None:
        """The served certificate's notAfter, read when scraped from
        chatbox.endpoints.ServedCertificate (a reload shows at the next
        scrape, with no copy to keep in step). Without --tls-cert the series
        is absent, as chatbox_redis_up is off a cluster: a 0 would read as
        a certificate expired in 1970 to an alert."""
        self.registry.register(_TLSExpiry(expiry))

    def request(self, kind: object, outcome: str) -> None:
        known = kind if kind in REQUEST_TYPES else "other"
        self.requests.labels(type=known, outcome=outcome).inc()


class _BytesOut:
    """Exposes the factory's byte count as a counter when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "chatbox_bytes_out",
            "Bytes written to WebSocket clients.",
            value=self.metrics._bytes_out(),
        )


class _RoomChanges:
    """Rooms loaded and unloaded since start, counted by the registry."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        rooms = self.metrics._rooms
        yield CounterMetricFamily(
            "chatbox_room_loads",
            "Rooms loaded into memory since start (the default room not counted).",
            value=0 if rooms is None else rooms.loads,
        )
        yield CounterMetricFamily(
            "chatbox_room_unloads",
            "Idle rooms closed and dropped from memory since start.",
            value=0 if rooms is None else rooms.unloads,
        )


class _TLSExpiry:
    def __init__(self, expiry: Callable[[], float]) -> None:
        self.expiry = expiry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "chatbox_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate the chat port serves now (--tls-cert) "
            "expires: its notAfter, Unix time.",
            value=self.expiry(),
        )


class _Health:
    """What /healthz says, for alerts: chatbox_healthy (1 up, 0 failing:
    one process, history writes failing; a node, Redis or its lease), and
    on a cluster node chatbox_redis_up (its link to Redis). Read when
    scraped from the rooms themselves, as /healthz reads them."""

    def __init__(self, rooms: Any) -> None:
        self.rooms = rooms

    def collect(self) -> Iterator[GaugeMetricFamily]:
        default = self.rooms.default
        failing = sum(1 for _, room in self.rooms.loaded() if not room.healthy)
        yield GaugeMetricFamily(
            "chatbox_healthy",
            "1 while /healthz answers 200, 0 while it answers 503.",
            value=1 if default.healthy and not failing else 0,
        )
        redis = default.health().get("redis")
        if redis is not None:
            yield GaugeMetricFamily(
                "chatbox_redis_up",
                "1 while this node reaches Redis (commands and events), else 0.",
                value=1 if redis == "ok" else 0,
            )


class _ListedRooms:
    """Per listed room: its registered users and stored messages on this
    process (a room not in memory has nobody here, and its count is not
    read from disk for a scrape)."""

    def __init__(self, rooms: Any) -> None:
        self.rooms = rooms

    def collect(self) -> Iterator[GaugeMetricFamily]:
        users = GaugeMetricFamily(
            "chatbox_room_registered_users",
            "Connections holding a nickname, per listed room.",
            labels=["room"],
        )
        stored = GaugeMetricFamily(
            "chatbox_room_messages_stored",
            "Messages in the history, per listed room in memory.",
            labels=["room"],
        )
        loaded = dict(self.rooms.loaded())
        for name in self.rooms.policy.listed:
            room = loaded.get(name)
            users.add_metric([name], 0 if room is None else room.registered_count())
            if room is not None:
                stored.add_metric([name], room.message_count())
        yield users
        yield stored
