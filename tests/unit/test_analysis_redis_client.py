"""The Redis client the background parts share (analysis, fleet board, feedback index)
keeps the retry policy it was given (redis-py 8 converts, and warns about, a synchronous
Retry handed to the asyncio client)."""

from __future__ import annotations

import warnings

from redis.asyncio.retry import Retry

from proxy.backends.redis import shared_client


async def test_the_analysis_client_is_built_with_an_asyncio_retry() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = shared_client("redis://127.0.0.1:1/0")
    try:
        assert isinstance(client.get_retry(), Retry)
    finally:
        await client.aclose()
