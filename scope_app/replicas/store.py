"""The replicas' store: the URLs `--store` takes, and the Redis clients every part of a replica makes from one.

A plain Redis is named as the client names it: `redis://`, `rediss://` (TLS) or `unix://`. A Redis kept
available by Sentinel is named by its sentinels and the name they know its primary by:

    redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]

The client asks the sentinels for the primary on each (re)connection, so a replica follows Sentinel's
failover as it follows a restarted Redis: the command in flight fails, the next one reaches the new
primary. The credentials are the data nodes'; the sentinels are asked without. Redis Cluster is not
supported: a replica reads every tenant's stream in one blocking read, which a cluster refuses across
its slots.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SENTINEL_SCHEME = "redis+sentinel://"
#: URL schemes `--store` takes (TLS for rediss).
SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
#: Sentinel's own port, when a sentinel's address has none.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """A primary as Sentinel knows it: where to ask, under which name, and how to log in to it."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel(url: str) -> SentinelTarget:
    """The target a `redis+sentinel://` URL names (raises ValueError when it names none)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = [_host_port(host) for host in hosts.split(",")]
    path = [segment for segment in parts.path.split("/") if segment]
    if not 1 <= len(path) <= 2:
        raise ValueError(f"{redacted(url)!r}: want {SENTINEL_SCHEME}HOST:PORT[,HOST:PORT...]/SERVICE[/DB]")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"{redacted(url)!r}: the database must be a number, not {path[1][:20]!r}")
    return SentinelTarget(
        sentinels,
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
    )


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(SENTINEL_PORT)
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text[:80]!r} is not a sentinel's HOST:PORT")
    return host, int(port)


def store_url(text: str) -> str:
    """A `--store` value: a Redis URL the client understands (raises ValueError otherwise)."""
    if not text.startswith(SCHEMES):
        raise ValueError(f"{redacted(text)!r} is not a Redis URL ({', '.join(SCHEMES)})")
    if text.startswith(SENTINEL_SCHEME):
        parse_sentinel(text)
    else:
        redis.asyncio.connection.parse_url(text)  # raises ValueError for what the client would refuse
    return text


def store_arg(text: str) -> str:
    """`--store` for argparse: a Redis URL, or empty for none."""
    try:
        return store_url(text) if text else ""
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Times a command that found its connection broken is sent again at once, on a new connection.
RETRIES_ON_A_BROKEN_CONNECTION = 1


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client of the store `url` names; `options` are the client's connection options
    (timeouts), the same for the data nodes and the sentinels.

    A command that finds its pooled connection broken is sent once more at once, on a new connection:
    after Redis restarted (or Sentinel's failover), every idle connection in the pool is dead, and
    without it each client's first command fails although the store is back (the link's writer counted
    that batch as dropped). A timeout is not retried (a Redis that stopped answering is one that went
    away, and waiting twice as long says nothing more); a command that reached a Redis which broke the
    connection before answering may then run twice, as any command a client resends after a crash."""
    options = {
        **options,
        "retry": redis.asyncio.retry.Retry(NoBackoff(), RETRIES_ON_A_BROKEN_CONNECTION, (RedisConnectionError,)),
    }
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel(url)
        sentinel = redis.asyncio.sentinel.Sentinel(target.sentinels, **options)  # type: ignore[no-untyped-call]
        return cast(
            redis.asyncio.Redis,
            sentinel.master_for(
                target.service, db=target.db, username=target.username, password=target.password, **options
            ),
        )
    return redis.asyncio.from_url(url, **options)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client of the store `url` names (for the registry, which threads share); a broken
    connection is retried as in `async_client`."""
    options = {
        **options,
        "retry": redis.retry.Retry(NoBackoff(), RETRIES_ON_A_BROKEN_CONNECTION, (RedisConnectionError,)),
    }
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel(url)
        sentinel = redis.sentinel.Sentinel(target.sentinels, **options)  # type: ignore[no-untyped-call]
        return cast(
            redis.Redis,
            sentinel.master_for(  # type: ignore[no-untyped-call]
                target.service, db=target.db, username=target.username, password=target.password, **options
            ),
        )
    return redis.Redis.from_url(url, **options)


def redacted(url: str) -> str:
    """A store URL without its password, for logs and messages."""
    return re.sub(r"//[^@/]*@", "//***@", url)
