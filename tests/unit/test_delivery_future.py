"""DeliveryFuture: an acknowledgement wakes its waiters, threads and asyncio tasks alike."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from aosk.client._producer import DeliveringProducer, DeliveryFuture, producer_config
from aosk.errors import DeliveryError


class _Msg:
    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class _Err:
    def str(self) -> str:
        return "refused"


@pytest.fixture
def owner() -> Iterator[DeliveringProducer]:
    p = DeliveringProducer(producer_config("127.0.0.1:9", client_id="test"))  # never connects: nothing is produced
    yield p
    p.close(1)


def _ack_soon(future: DeliveryFuture, err: Any = None) -> threading.Timer:
    t = threading.Timer(0.05, future._complete, (err, _Msg()))  # as librdkafka's callback thread would
    t.start()
    return t


def test_an_awaited_acknowledgement_wakes_the_task_and_a_thread_on_the_same_record(owner: DeliveringProducer) -> None:
    future = DeliveryFuture(owner)
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.append(future.result(5).offset))

    async def main() -> int:
        waiting.start()
        _ack_soon(future)
        return (await future.delivered(5)).offset

    assert asyncio.run(main()) == 42
    waiting.join(5)
    assert got == [42]


def test_delivered_after_the_acknowledgement_returns_at_once(owner: DeliveringProducer) -> None:
    future = DeliveryFuture(owner)
    future._complete(None, _Msg())
    assert asyncio.run(future.delivered(0.01)).partition == 3


def test_delivered_raises_the_brokers_refusal_and_times_out(owner: DeliveringProducer) -> None:
    refused = DeliveryFuture(owner)

    async def refuse() -> None:
        _ack_soon(refused, _Err())
        await refused.delivered(5)

    with pytest.raises(DeliveryError, match="refused"):
        asyncio.run(refuse())
    with pytest.raises(TimeoutError, match="no acknowledgement"):
        asyncio.run(DeliveryFuture(owner).delivered(0.05))
