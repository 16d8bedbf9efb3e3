"""The API worker's coalescer: merged calls, results back to the right caller, failures to every caller."""

from __future__ import annotations

import asyncio

import pytest

from service.coalescer import Coalescer


class Model:
    """Records each call; answers every text with its upper-case form after the test releases the call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model service said 503")
        return [text.upper() for text in texts]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_request_goes_out_at_once() -> None:
    async def scenario() -> None:
        model = Model()
        coalescer = Coalescer(model, max_items=64)
        pending = asyncio.create_task(coalescer.submit(["a", "b"]))
        await settle()
        assert model.calls == [["a", "b"]]  # sent before anything else arrived: no waiting on a quiet server
        model.release.set()
        assert await pending == ["A", "B"]

    asyncio.run(scenario())


def test_requests_arriving_during_a_call_share_the_next_one_and_get_their_own_results() -> None:
    async def scenario() -> None:
        model = Model()
        coalescer = Coalescer(model, max_items=64, max_in_flight=1)
        first = asyncio.create_task(coalescer.submit(["x"]))
        await settle()
        later = [asyncio.create_task(coalescer.submit([f"t{i}", f"u{i}"])) for i in range(5)]
        await settle()
        assert len(model.calls) == 1 and coalescer.waiting == 5
        model.release.set()
        assert await first == ["X"]
        assert [await task for task in later] == [[f"T{i}", f"U{i}"] for i in range(5)]
        assert model.calls[1] == [text for i in range(5) for text in (f"t{i}", f"u{i}")]
        assert len(model.calls) == 2

    asyncio.run(scenario())


def test_a_merged_call_never_exceeds_max_items_except_for_one_large_request() -> None:
    async def scenario() -> None:
        model = Model()
        model.release.set()
        coalescer = Coalescer(model, max_items=4, max_in_flight=1)
        blocker = asyncio.Event()

        async def slow(texts: list[str]) -> list[str]:
            await blocker.wait()
            return await model(texts)

        coalescer._call = slow
        tasks = [asyncio.create_task(coalescer.submit(items)) for items in
                 (["a"], ["b", "c"], ["d", "e"], ["f"], ["g", "h", "i", "j", "k", "l"])]
        await settle()
        blocker.set()
        results = await asyncio.gather(*tasks)
        assert results == [["A"], ["B", "C"], ["D", "E"], ["F"], ["G", "H", "I", "J", "K", "L"]]
        assert model.calls == [["a"], ["b", "c", "d", "e"], ["f"], ["g", "h", "i", "j", "k", "l"]]

    asyncio.run(scenario())


def test_a_failed_call_fails_each_of_its_callers_and_the_next_call_works() -> None:
    async def scenario() -> None:
        model = Model()
        coalescer = Coalescer(model, max_items=64, max_in_flight=1)
        model.fail_next = True
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        model.release.set()
        with pytest.raises(RuntimeError, match="503"):
            await first
        assert await coalescer.submit(["b"]) == ["B"]

    asyncio.run(scenario())


def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    async def scenario() -> None:
        model = Model()
        coalescer = Coalescer(model, max_items=64, max_in_flight=1)
        first = asyncio.create_task(coalescer.submit(["a"]))
        await settle()
        leaving = asyncio.create_task(coalescer.submit(["gone"]))
        staying = asyncio.create_task(coalescer.submit(["kept"]))
        await settle()
        leaving.cancel()
        await settle()
        model.release.set()
        assert await first == ["A"]
        assert await staying == ["KEPT"]
        assert leaving.cancelled()
        assert model.calls[1] == ["kept"]  # the cancelled request was not sent

    asyncio.run(scenario())


def test_a_wrong_number_of_results_is_an_error_not_a_misattribution() -> None:
    async def short(texts: list[str]) -> list[str]:
        return texts[:-1]

    async def scenario() -> None:
        coalescer: Coalescer[str, str] = Coalescer(short, max_items=64)
        with pytest.raises(RuntimeError, match="1 results for 2 texts"):
            await coalescer.submit(["a", "b"])

    asyncio.run(scenario())
