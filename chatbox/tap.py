"""`twistd chatbox`: the options and the service they build.

makeService takes the reactor as an argument so tests build exactly what
twistd runs, listening on port 0 in the test's own reactor.
"""

import resource
from collections.abc import Callable
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.logger import Logger
from twisted.python import usage

from chatbox.admin.api import make_admin_site
from chatbox.admin.moderator import Moderator
from chatbox.admin.tokens import ReloadService, TokenFileError, Tokens
from chatbox.auth.keys import KeyFileError
from chatbox.auth.verifier import DEFAULT_LEEWAY, MAX_LEEWAY, Verifier
from chatbox.chat.arns import is_valid_name
from chatbox.chat.moderation import IModerationStore, Moderation, OrderError
from chatbox.chat.retention import IPurger, PurgeService, RetentionPolicy
from chatbox.chat.room import IRoom
from chatbox.chat.roomnames import DEFAULT
from chatbox.chat.rooms import IRoomMaker, RoomPolicy, Rooms
from chatbox.cluster.address import parse_redis_url
from chatbox.endpoints import (
    EndpointError,
    ServedCertificate,
    server_endpoint,
    tls_port,
)
from chatbox.limits import Limits
from chatbox.local import datafile
from chatbox.local.moderation import (
    LocalModeration,
    ModerationFileError,
    moderation_path,
)
from chatbox.local.room import LocalRoom
from chatbox.local.rooms import LocalRooms
from chatbox.local.store import DEFAULT_FOLD_THRESHOLD, DurableStore
from chatbox.metrics import Metrics
from chatbox.service import ChatService, ListenerService
from chatbox.web import make_site
from chatbox.wire.factory import ChatFactory

__all__ = ["Options", "makeService"]

log = Logger()

# Files kept free of connections: the history, its journal and folds, Redis
# and twistd's log (64), and one batch of accepted connections waiting to be
# told they are refused (at most the listen backlog, 50).
RESERVED_FILES = 128
# And for each room a single process may load: its journal and its lock (a
# cluster node's rooms share its two Redis connections).
FILES_PER_ROOM = 2


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


def _positive_int(value: str) -> int:
    number = _whole(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _count(value: str) -> int:
    number = _whole(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _at_least_zero(unit: str) -> Callable[[str], float]:
    """A coercer whose refusal names the unit, so `--rate=-1` is not told
    it needs seconds."""

    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number ({unit})") from None
        if not number >= 0:
            raise ValueError(f"must be 0 or more ({unit}), not {value}")
        return number

    return coerce


_seconds = _at_least_zero("seconds")

AUTH_MODES = ("off", "optional", "required")
AUTH_KEYS = ("auth-secret", "auth-public-key", "auth-jwks")


def _auth_mode(value: str) -> str:
    if value not in AUTH_MODES:
        raise ValueError(f"must be off, optional or required, not {value!r}")
    return value


def _leeway(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number of seconds") from None
    if not 0 <= number <= MAX_LEEWAY:
        raise ValueError(f"must be 0 to {MAX_LEEWAY} seconds, not {value}")
    return number


_per_second = _at_least_zero("per second")


class Options(usage.Options):
    synopsis = "[options]"
    optFlags = [
        [
            "room-metrics",
            None,
            "Also give /metrics one series per listed room (registered users, "
            "stored messages), labelled with its name.",
        ],
    ]
    longdesc = (
        "A WebSocket chat server speaking the classic-chatbox v2 protocol. "
        "Clients connect to ws://HOST:PORT/ (wss:// with TLS)."
    )
    optParameters = [
        [
            "port",
            "p",
            "9000",
            "Where to listen: a port number, or a Twisted endpoint string such "
            "as tcp:9000:interface=127.0.0.1 or "
            "ssl:9443:privateKey=key.pem:certKey=cert.pem.",
        ],
        [
            "data",
            "d",
            "data.json",
            "History file (a JSON array). Its journal is kept beside it as "
            "PATH.journal.",
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM certificate (leaf first, then any intermediates) to serve wss:// on "
            "--port. Needs --tls-key.",
        ],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
        [
            "history-cap",
            None,
            10_000,
            "Most messages one get returns (a bare get returns the newest this many).",
            _positive_int,
        ],
        [
            "json-ping",
            None,
            5.0,
            'Seconds between v2\'s JSON {"type":"ping"} keepalives; 0 turns them off.',
            _seconds,
        ],
        [
            "ws-ping-interval",
            None,
            10.0,
            "Seconds between WebSocket pings to each client; 0 turns dead-peer "
            "detection off.",
            _seconds,
        ],
        [
            "ws-ping-timeout",
            None,
            10.0,
            "Seconds a client has to answer a WebSocket ping before it is "
            "disconnected and its nickname freed.",
            _seconds,
        ],
        [
            "max-message-size",
            None,
            65_536,
            "Largest WebSocket message in bytes; bigger ones are refused with "
            "close code 1009.",
            _positive_int,
        ],
        [
            "fold-threshold",
            None,
            DEFAULT_FOLD_THRESHOLD,
            "Journal bytes before it is folded into the history file (at least "
            "the history file's own size, so the cost per message stays flat).",
            _positive_int,
        ],
        [
            "rate",
            None,
            5.0,
            "Requests per second one connection may keep up; faster ones get "
            "RateLimited with retry_after. 0 turns rate limiting off.",
            _per_second,
        ],
        [
            "burst",
            None,
            20,
            "Requests one connection may send at once before --rate applies.",
            _positive_int,
        ],
        [
            "max-connections",
            None,
            10_000,
            "Open connections in total; more are refused with HTTP 503. "
            "0 means no limit.",
            _count,
        ],
        [
            "max-connections-per-ip",
            None,
            200,
            "Open connections from one client address; more are refused with "
            "HTTP 429. 0 means no limit. (A class behind one NAT shares one.)",
            _count,
        ],
        [
            "max-pending-per-ip",
            None,
            64,
            "Connections from one client address that have not yet sent a "
            "complete request; more are refused with HTTP 429. 0 means no limit.",
            _count,
        ],
        [
            "connection-rate",
            None,
            40.0,
            "New connections per second one client address may keep up; more "
            "are refused with HTTP 429. 0 means no limit.",
            _per_second,
        ],
        [
            "connection-burst",
            None,
            400,
            "New connections one client address may open at once before "
            "--connection-rate applies.",
            _positive_int,
        ],
        [
            "allowed-origins",
            None,
            "",
            "Comma-separated Origin patterns whose pages may connect, such as "
            "https://chat.example.org,https://*.example.org. Others are refused "
            "with HTTP 403. Empty (the default, as v2) allows any; clients that "
            "send no Origin (programs, not browsers) are always let in.",
        ],
        [
            "trusted-proxies",
            None,
            0,
            "Reverse proxies in front of chatbox whose X-Forwarded-For header "
            "names the client address (for --max-connections-per-ip and logs). "
            "Leave 0 unless a proxy really is there: the header is easy to forge.",
            _count,
        ],
        [
            "max-pending-output",
            None,
            4 * 1024 * 1024,
            "Bytes a client may leave unread before it is disconnected "
            "(close code 1013) as too slow. 0 means no limit.",
            _count,
        ],
        [
            "shutdown-timeout",
            None,
            10.0,
            "Seconds SIGTERM/SIGINT waits for clients to close before dropping "
            "them; pending messages are acknowledged and saved first either way.",
            _seconds,
        ],
        [
            "handshake-timeout",
            None,
            5.0,
            "Seconds from accept a connection has to send a complete request "
            "head and finish the WebSocket handshake (and an idle keep-alive "
            "connection from the end of its last response); not extended by "
            "bytes. 0 means no limit.",
            _seconds,
        ],
        [
            "ip-send-rate",
            None,
            20.0,
            "Messages per second one client address may keep up, however many "
            "connections it uses; 0 turns this off.",
            _per_second,
        ],
        [
            "ip-send-burst",
            None,
            200,
            "Messages one client address may send at once before --ip-send-rate "
            "applies (a whole class behind one NAT saying hello).",
            _positive_int,
        ],
        [
            "ip-name-rate",
            None,
            5.0,
            "Registrations and renames per second one client address may keep "
            "up, however many connections it uses; 0 turns this off.",
            _per_second,
        ],
        [
            "ip-name-burst",
            None,
            200,
            "Registrations and renames one client address may make at once "
            "before --ip-name-rate applies (a class rejoining after a restart).",
            _positive_int,
        ],
        [
            "max-get-bytes",
            None,
            8 * 1024 * 1024,
            "Most bytes of history one get reply carries: its newest messages "
            "that fit (always at least one). 0 means no limit.",
            _count,
        ],
        [
            "max-reply-bytes",
            None,
            64 * 1024 * 1024,
            "Bytes of large get replies held for all clients at once; more "
            "wait their turn, so a crowd reconnecting cannot exhaust memory.",
            _positive_int,
        ],
        [
            "rooms",
            None,
            "",
            "Which rooms (ws://HOST:PORT/NAME) exist besides the default one at /: "
            "empty (the default) for none; 'open' to let any valid name make a room "
            "on first join (up to --max-rooms); or a comma list of names, or a file "
            "with one name per line. Other paths are refused with 404.",
        ],
        [
            "listed-rooms",
            None,
            "",
            "Rooms shown by GET /rooms and the page's room switcher (a comma list or "
            "a file); the others are unlisted, so a name can work as an invitation.",
        ],
        [
            "max-rooms",
            None,
            1000,
            "With --rooms open: most rooms (with history, or in use) there can be; "
            "joining a new name past that is refused with 404.",
            _positive_int,
        ],
        [
            "room-idle",
            None,
            60.0,
            "Seconds a room nobody is in stays in memory before it is closed (its "
            "history folded and its files released); it loads again on next join.",
            _seconds,
        ],
        [
            "retention-days",
            None,
            0.0,
            "Delete messages older than this many days (fractions allowed), in "
            "every room without its own --room-retention; 0 keeps them forever. "
            "They leave every get at once and the disk within --purge-interval.",
            _at_least_zero("days"),
        ],
        [
            "retention-messages",
            None,
            0,
            "Keep only this many newest messages per room (older ones are "
            "deleted as with --retention-days); 0 means no such limit.",
            _count,
        ],
        [
            "purge-interval",
            None,
            300.0,
            "Seconds between two retention purges, which remove expired "
            "messages from disk (or Redis) in every room, visited or not.",
            _seconds,
        ],
        [
            "announcer",
            None,
            "chatbox",
            "The nickname operators' announcements are posted under; no user "
            "can take it, nor anything that looks like it.",
        ],
        [
            "admin-tokens",
            None,
            None,
            "File of operator tokens (one 'NAME sha256:HEX' per line; "
            "chatbox-admin new-token makes them). Turns the admin API on.",
        ],
        [
            "admin-port",
            None,
            "tcp:9009:interface=127.0.0.1",
            "Where the admin API listens (a Twisted endpoint string): loopback "
            "only by default, never the chat port.",
        ],
        [
            "auth",
            None,
            "off",
            "Verified nicknames: off (the default, as v2: tokens are ignored), "
            "optional (a token verifies its nickname; guests may take any other) "
            "or required (only connections with a token get in; others get HTTP "
            "401). optional and required need --auth-secret, --auth-public-key "
            "or --auth-jwks.",
            _auth_mode,
        ],
        [
            "auth-secret",
            None,
            None,
            "File holding an HMAC secret (at least 32 bytes; one trailing "
            "newline is ignored) that HS256 tokens are checked against (HS384 "
            "and HS512 with 48 and 64 bytes), and that chatbox-admin token "
            "signs with. Read again on SIGHUP.",
        ],
        [
            "auth-public-key",
            None,
            None,
            "PEM public key (RSA of 2048 bits or more, EC P-256/384/521, "
            "Ed25519/Ed448) that a website's tokens are checked against, each "
            "only with its own type's algorithms. Read again on SIGHUP.",
        ],
        [
            "auth-jwks",
            None,
            None,
            'JWKS file ({"keys":[...]}) of public keys, picked by a token\'s kid; '
            "symmetric (oct) keys are refused. Read again on SIGHUP.",
        ],
        [
            "auth-leeway",
            None,
            DEFAULT_LEEWAY,
            "Seconds of clock difference allowed on a token's exp, nbf and iat "
            f"(0 to {MAX_LEEWAY}).",
            _leeway,
        ],
        ["auth-issuer", None, None, "Require tokens' iss claim to be this."],
        ["auth-audience", None, None, "Require tokens' aud claim to include this."],
        [
            "redis",
            None,
            None,
            "Run as one node of a cluster: nicknames, history and events live in "
            "Redis at this URL (redis://[:PASSWORD@]HOST:PORT/DB or "
            "unix:///PATH?db=N), shared by every node given the same URL. "
            "--data is not used then.",
        ],
        [
            "redis-lease",
            None,
            15.0,
            "With --redis: seconds within which the nicknames of a node that "
            "died are released and their leaves sent to everyone.",
            _seconds,
        ],
        [
            "redis-timeout",
            None,
            5.0,
            "With --redis: seconds to wait for Redis to answer a request before "
            "the client gets ErrorWhen... and the connection is re-made.",
            _seconds,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["room-retention"] = []

    def opt_room_retention(self, value: str) -> None:
        """A room's own retention, replacing --retention-days and
        --retention-messages for it: ROOM:days=N,messages=M (either or both),
        or ROOM:forever. '-' is the default room. Repeat for each room."""
        self["room-retention"].append(value)

    def postOptions(self) -> None:
        if not self["data"].strip():
            raise usage.UsageError("--data must name a file")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        # The pair as one value from here on, so no later code can see half.
        self["tls"] = (self["tls-cert"], self["tls-key"]) if self["tls-cert"] else None
        try:
            self["room-policy"] = RoomPolicy.from_options(
                self["rooms"], self["listed-rooms"], self["max-rooms"]
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["retention"] = RetentionPolicy.from_options(
                self["retention-days"],
                self["retention-messages"],
                self["room-retention"],
            )
        except ValueError as e:
            raise usage.UsageError(f"--room-retention: {e}") from None
        policy = self["room-policy"]
        strays = [
            name
            for name in self["retention"].rooms
            if name and not policy.open and name not in policy.names
        ]
        if strays:
            # A typo would otherwise leave the room under the server-wide
            # limits without a word.
            raise usage.UsageError(
                f"--room-retention names rooms --rooms does not: {', '.join(strays)}"
            )
        if not self["retention"].keeps_all and self["purge-interval"] < 1:
            raise usage.UsageError("--purge-interval must be at least 1 second")
        if not is_valid_name(self["announcer"]):
            raise usage.UsageError("--announcer must be a valid nickname")
        self._check_auth()
        if self["redis"] is not None:
            try:
                self["redis"] = parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}") from None
            if self["redis-lease"] < 1:
                raise usage.UsageError("--redis-lease must be at least 1 second")
            if not self["redis-timeout"] > 0:
                raise usage.UsageError("--redis-timeout must be above 0")

    def _check_auth(self) -> None:
        """--auth and its key options go together, either way."""
        given = [
            option
            for option in (*AUTH_KEYS, "auth-issuer", "auth-audience")
            if self[option] is not None
        ]
        if self["auth"] == "off" and given:
            raise usage.UsageError(
                f"--{given[0]} needs --auth optional or --auth required"
            )
        if self["auth"] != "off" and not any(self[key] for key in AUTH_KEYS):
            raise usage.UsageError(
                f"--auth {self['auth']} needs a key to check tokens with: "
                "--auth-secret, --auth-public-key or --auth-jwks"
            )
        for option in (*AUTH_KEYS, "auth-issuer", "auth-audience"):
            if self[option] is not None and not self[option].strip():
                raise usage.UsageError(f"--{option} must not be empty")


def raise_open_file_limit() -> tuple[int, int]:
    """Each connection is a file descriptor, and Debian's default soft limit
    (1024) would cap chatbox far below --max-connections. The hard limit is
    the operator's to set; up to it, take what is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, wanted if soft < wanted else soft


def _make_rooms(config: dict[str, Any], reactor: Any, metrics: Metrics) -> Rooms:
    """A cluster node's rooms in Redis, or this process's own in files: the
    default room with data.json is locked and loaded now, before anything
    listens (raises HistoryFileError, or an OSError naming its file); named
    rooms load on first join."""
    default: IRoom
    maker: IRoomMaker
    if config["redis"] is not None:
        # Only a cluster node loads the Redis client.
        from chatbox.cluster.room import RedisRoom
        from chatbox.cluster.rooms import RedisRooms

        node = RedisRoom.from_address(
            config["redis"],
            reactor,
            lease=config["redis-lease"],
            timeout=config["redis-timeout"],
        )
        policy = config["room-policy"]
        # --max-rooms is counted cluster-wide, in Redis; a fixed list needs no count.
        most = policy.max_rooms if policy.open else 0
        default = node
        maker = RedisRooms(
            node, reactor, most, config["redis-timeout"], config["retention"]
        )
    else:
        store = DurableStore(config["data"], reactor, config["fold-threshold"], metrics)
        store.load()
        room = LocalRoom(store, reactor.seconds)
        room.restore_sends()
        default = room
        maker = LocalRooms(
            config["data"],
            reactor,
            config["fold-threshold"],
            metrics,
            config["retention"],
        )
    default.retention = config["retention"].for_room(DEFAULT)
    return Rooms(default, maker, config["room-policy"], reactor, config["room-idle"])


def _make_purger(config: dict[str, Any], rooms: Rooms, reactor: Any) -> IPurger:
    """The backend's purge: this process's files, or Redis under a lease so
    one node purges at a time."""
    if config["redis"] is not None:
        from chatbox.cluster.purge import ClusterPurger

        return ClusterPurger(rooms, reactor)
    from chatbox.local.purge import LocalPurger

    return LocalPurger(rooms, reactor)


def _moderation_store(
    config: dict[str, Any],
    rooms: Rooms,
    moderation: Moderation,
    restore: Callable[[dict[str, Any]], None],
    reactor: Any,
) -> IModerationStore:
    """Where the operator's rules are kept: beside data.json, or in Redis
    for every node of a cluster (which stores snapshots for nodes that
    fall behind, and calls `restore` on one that did)."""
    if config["redis"] is not None:
        from chatbox.cluster.moderation import RedisModeration

        return RedisModeration(rooms.default, reactor, moderation.snapshot, restore)
    return LocalModeration(moderation_path(config["data"]), moderation.snapshot)


def _log_rooms(policy: RoomPolicy) -> None:
    """Say which rooms there are, so a mistaken --rooms shows in the log."""
    if policy.open:
        log.info(
            "rooms: any valid name makes one, up to {most}; {listed} listed",
            most=policy.max_rooms,
            listed=len(policy.listed),
        )
    elif policy.names:
        shown = sorted(policy.names)
        log.info(
            "rooms: {count} besides the default one ({names}); {listed} listed",
            count=len(shown),
            names=", ".join(shown[:10]) + (", ..." if len(shown) > 10 else ""),
            listed=len(policy.listed),
        )


def _add_admin(
    top: MultiService,
    config: dict[str, Any],
    moderator: Any,
    reactor: Any,
    metrics: Metrics,
    reloads: list[Any],
    tls: ServedCertificate | None = None,
) -> None:
    """The admin API on its own listener, with --admin-tokens only (whose
    reload is added to `reloads`, for SIGHUP); `tls` is the chat port's
    pair, for `POST /v1/tls/reload`."""
    if not config["admin-tokens"]:
        log.info("admin API off (no --admin-tokens)")
        return
    try:
        tokens = Tokens.load(config["admin-tokens"])
        endpoint, scheme = server_endpoint(
            reactor, str(config["admin-port"]), option="--admin-port"
        )
    except (TokenFileError, EndpointError) as e:
        raise SystemExit(f"chatbox: cannot start: {e}") from None
    site = make_admin_site(moderator, tokens, reactor, metrics)
    site.api.tls = tls
    admin = ListenerService(
        endpoint, site, "https" if scheme == "wss" else "http", reactor, "admin API"
    )
    admin.setName("admin")
    admin.setServiceParent(top)
    if scheme == "wss":
        log.info(
            "admin API: its ssl: certificate is read now only; SIGHUP and "
            "tls-reload renew --tls-cert/--tls-key, not this one"
        )
    reloads.append(tokens.reload)


def _make_verifier(config: dict[str, Any]) -> Verifier | None:
    """The keys tokens are checked against, read now (blocking, before the
    reactor runs); None with --auth off. A bad file stops start-up with one
    line naming it."""
    if config["auth"] == "off":
        return None
    try:
        verifier = Verifier.load(
            secret=config["auth-secret"],
            public_key=config["auth-public-key"],
            jwks=config["auth-jwks"],
            leeway=config["auth-leeway"],
            issuer=config["auth-issuer"],
            audience=config["auth-audience"],
        )
    except KeyFileError as e:
        raise SystemExit(f"chatbox: cannot start: {e}") from None
    log.info(
        "auth {mode}: tokens checked against {keys}, leeway {leeway} s",
        mode=config["auth"],
        keys=verifier.describe(),
        leeway=config["auth-leeway"],
    )
    return verifier


def makeService(config: dict[str, Any], reactor: Any = None) -> IServiceCollection:
    """Build the chat service; exits with a one-line error if it cannot start."""
    if reactor is None:
        from twisted.internet import reactor
    try:
        # The pair the chat port serves, kept to be read again on SIGHUP.
        tls = None
        if config["tls"]:
            tls_port(str(config["port"]))
            tls = ServedCertificate.load(*config["tls"])
        endpoint, scheme = server_endpoint(reactor, str(config["port"]), tls)
        verifier = _make_verifier(config)
        metrics = Metrics()
        rooms = _make_rooms(config, reactor, metrics)
    except (EndpointError, datafile.HistoryFileError) as e:
        raise SystemExit(f"chatbox: cannot start: {e}") from None
    except OSError as e:
        # chatbox.local.datafile names every file; the fallback is for anything else.
        where = e.filename if e.filename is not None else config["data"]
        raise SystemExit(f"chatbox: cannot start: {where}: {e.strerror}") from None

    before, after = raise_open_file_limit()
    if after != before:
        log.info(
            "open file limit raised from {before} to {after}",
            before=before,
            after=after,
        )
    # Connections past the open file limit would fail at accept (EMFILE) with
    # log lines each, and starve the history and Redis of files: the total cap
    # stays below it, so they are refused with a cheap 503 instead.
    max_connections = config["max-connections"]
    room_files = (
        0 if config["redis"] else FILES_PER_ROOM * config["room-policy"].most_rooms
    )
    fits = max(1, after - RESERVED_FILES - room_files)
    if max_connections > fits:
        log.warn(
            "open file limit {limit} leaves room for {fits} connections, below "
            "--max-connections {max}; raise it (ulimit -n, or LimitNOFILE= under "
            "systemd)",
            limit=after,
            fits=fits,
            max=max_connections,
        )
    if not max_connections or max_connections > fits:
        max_connections = fits

    limits = Limits(
        rate=config["rate"],
        burst=config["burst"],
        max_connections=max_connections,
        max_connections_per_address=config["max-connections-per-ip"],
        allowed_origins=tuple(
            origin.strip()
            for origin in config["allowed-origins"].split(",")
            if origin.strip()
        ),
        trusted_proxies=config["trusted-proxies"],
        max_pending_output=config["max-pending-output"],
        address_send_rate=config["ip-send-rate"],
        address_send_burst=config["ip-send-burst"],
        address_name_rate=config["ip-name-rate"],
        address_name_burst=config["ip-name-burst"],
        max_get_bytes=config["max-get-bytes"],
        max_reply_bytes=config["max-reply-bytes"],
        max_pending_per_address=config["max-pending-per-ip"],
        connection_rate=config["connection-rate"],
        connection_burst=config["connection-burst"],
        handshake_timeout=config["handshake-timeout"],
    )
    factory = ChatFactory(
        rooms,
        reactor,
        history_cap=config["history-cap"],
        limits=limits,
        metrics=metrics,
        moderation=Moderation(config["announcer"]),
    )
    factory.noisy = False
    try:
        store = _moderation_store(
            config,
            rooms,
            factory.moderation,
            lambda snapshot: moderator.restore(snapshot),
            reactor,
        )
        moderator = Moderator(
            factory.moderation, store, factory, rooms, reactor.seconds, metrics
        )
    except ModerationFileError as e:
        raise SystemExit(f"chatbox: cannot start: moderation rules: {e}") from None
    except OrderError as e:
        where = "in Redis" if config["redis"] else moderation_path(config["data"])
        raise SystemExit(
            f"chatbox: cannot start: moderation rules {where}: {e}"
        ) from None
    factory.auth_mode = config["auth"]
    factory.verifier = verifier
    factory.moderator = moderator
    metrics.observe_rooms(rooms, per_room=bool(config["room-metrics"]))
    if tls is not None:
        metrics.observe_tls(tls.expiry)
    _log_rooms(config["room-policy"])
    factory.setProtocolOptions(
        maxFramePayloadSize=config["max-message-size"],
        maxMessagePayloadSize=config["max-message-size"],
        autoPingInterval=config["ws-ping-interval"],
        autoPingTimeout=config["ws-ping-timeout"],
        openHandshakeTimeout=config["handshake-timeout"],
        # Refuse bad frames with a close frame carrying the RFC code (1007,
        # 1009) instead of silently dropping TCP, so clients can tell why.
        failByDrop=False,
        # setProtocolOptions resets this to False whenever it is called, which
        # would refuse pages opened from a file (Origin: null), as the classic
        # client often is. chatbox's own --allowed-origins check decides.
        allowNullOrigin=True,
    )

    top = MultiService()
    chat = ChatService(factory, rooms, config["json-ping"], config["shutdown-timeout"])
    chat.setName("chat")
    chat.setServiceParent(top)
    listener = ListenerService(endpoint, make_site(factory), scheme, reactor)
    listener.setName("listener")
    listener.setServiceParent(top)
    chat.moderator = moderator
    reloads: list[Any] = []
    if tls is not None:
        reloads.append(tls.on_hangup)
    _add_admin(top, config, moderator, reactor, metrics, reloads, tls)
    if verifier is not None:
        reloads.append(verifier.reload)
    # Always: without a handler SIGHUP would end the process, and
    # `systemctl reload` (deploy/chatbox.service) would stop the chat.
    reload = ReloadService(reactor, *reloads)
    reload.setName("reload")
    reload.setServiceParent(top)
    chat.moderation_store = store
    retention = config["retention"]
    if not retention.keeps_all:
        log.info(
            "retention: {policy}; purged every {s:g} s",
            policy=retention.describe(),
            s=config["purge-interval"],
        )
        purge = PurgeService(
            _make_purger(config, rooms, reactor),
            retention,
            reactor,
            config["purge-interval"],
            metrics,
        )
        purge.setName("purge")
        purge.setServiceParent(top)
    return top
