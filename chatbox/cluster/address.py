"""Where Redis is, parsed from `--redis` without importing txredisapi.

tap validates `--redis` while parsing options, and a single-process start
must not pay for (or depend on) the Redis client: so the address lives apart
from the link that connects to it.
"""

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["RedisAddress", "parse_redis_url"]


@dataclass(frozen=True)
class RedisAddress:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None
    socket: str | None = None  # a unix socket path instead of host:port

    def __str__(self) -> str:
        """For logs: never the password."""
        where = f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"
        return f"redis://{where}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """`redis://[[user]:password@]host[:port][/db]` or `unix:///path[?db=N]`;
    raises ValueError with a reason."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        query = dict(
            item.split("=", 1) for item in parts.query.split("&") if "=" in item
        )
        if not parts.path:
            raise ValueError("unix:// needs a socket path")
        return RedisAddress(
            db=_db(query.get("db", "0")),
            password=password,
            username=username,
            socket=parts.path,
        )
    if parts.scheme != "redis":
        raise ValueError("expected redis://HOST:PORT/DB or unix:///PATH")
    if not parts.hostname:
        raise ValueError("no host in the Redis URL")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("bad port in the Redis URL") from None
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=_db(parts.path.lstrip("/") or "0"),
        password=password,
        username=username,
    )


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the Redis database must be a number, not {text!r}")
    return int(text)
