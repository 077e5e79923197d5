"""Connection pools to PostgreSQL, each bound to one schema of the database.

Every part of the PostgreSQL backend (registry, fleet board, analysis pool, lease, request
index, pair sink) works inside one schema, named by the deployment (like the Redis key
prefix), so several deployments or test runs can share one database. The schema is the
search path of every pooled connection, so SQL names its tables unqualified.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: A query that takes longer than this is a server in trouble; failing it lets the caller's
#: own fallback (last good snapshot, retry) act instead of a replica hanging on it.
STATEMENT_TIMEOUT_MS = 5_000
CONNECT_TIMEOUT_SECONDS = 3


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"PostgreSQL schema {schema!r} must be lowercase letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    return schema


def describe_url(url: str) -> str:
    """The URL without credentials, for logs and /readyz."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connection_kwargs(application: str) -> dict[str, object]:
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": application,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    }


def _configure_for(schema: str) -> object:
    async def configure(conn: AsyncConnection) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))

    return configure


def new_pool(
    url: str,
    *,
    schema: str,
    max_size: int = 10,
    application: str = "promptproxy",
) -> AsyncConnectionPool:
    """A closed pool: ``await pool.open()`` connects (callers bound how long they wait).

    Connections are in autocommit mode; a write that needs several statements opens
    ``async with conn.transaction()``.
    """
    check_schema_name(schema)
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs=connection_kwargs(application),
        configure=_configure_for(schema),  # type: ignore[arg-type]
        # A caller waiting longer than this for a pooled connection sees PoolTimeout, which
        # the parts turn into their "store unavailable" error.
        timeout=CONNECT_TIMEOUT_SECONDS,
        # psycopg_pool retries a failed connect with a doubling delay for up to this long
        # (default 300 s), so after a long outage a replica reconnected about as late as the
        # outage had lasted; giving up sooner lets the next request's connect succeed at
        # once (measured: 0.14-0.36 s after 20-40 s outages, against 8.4 s after 20 s).
        reconnect_timeout=5.0,
        name=f"promptproxy-{schema}",
    )


async def open_connection(url: str, *, schema: str, application: str) -> AsyncConnection:
    """One connection outside any pool: the LISTEN connection of change notification."""
    conn = await AsyncConnection.connect(url, **connection_kwargs(application))  # type: ignore[arg-type]
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn
