"""DynamicBatcher (fastformer/serving/batcher.py) on its own event loop: no Ray, no model."""
import asyncio
import time

import pytest

from fastformer.serving.batcher import DynamicBatcher


class Recorder:
    """A batch function that records each batch's items and takes `seconds`, as a forward would."""

    def __init__(self, seconds: float = 0.0, fail_on=None):
        self.seconds, self.fail_on, self.batches = seconds, fail_on, []

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"batch with {self.fail_on}")
        return [ValueError(f"bad {item}") if item == "bad" else f"out {item}" for item in items]


def test_requests_arriving_during_a_batch_ride_the_next_one():
    # Ray Serve 2.60's @serve.batch cuts a new batch every wait_s while one runs: here 20 requests arriving
    # over the first forward would be split into several small batches behind it.
    run = Recorder(seconds=0.3)

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=32, wait_s=0.01)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first batch is running
        later = []
        for i in range(1, 21):
            later.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(first, *later)

    answers = asyncio.run(main())
    assert answers == [f"out {i}" for i in range(21)]
    assert run.batches == [[0], list(range(1, 21))]


def test_a_batch_holds_at_most_max_batch_size_inputs_in_arrival_order():
    run = Recorder(seconds=0.05)

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.2)
        return await asyncio.gather(*(batcher.submit(f"r{i}", size=3) for i in range(5)))

    assert asyncio.run(main()) == [f"out r{i}" for i in range(5)]
    assert run.batches == [["r0", "r1"], ["r2", "r3"], ["r4"]]


def test_a_lone_request_waits_for_company_at_most_wait_s_and_a_full_batch_not_at_all():
    run = Recorder()

    async def timed(batcher, count):
        start = time.perf_counter()
        await asyncio.gather(*(batcher.submit(i) for i in range(count)))
        return time.perf_counter() - start

    async def main():
        return (await timed(DynamicBatcher(run, max_batch_size=4, wait_s=0.3), 1),
                await timed(DynamicBatcher(run, max_batch_size=4, wait_s=5.0), 4))

    alone, full = asyncio.run(main())
    assert 0.3 <= alone < 3.0
    assert full < 2.0  # far below the 5 s wait: a full batch starts at once
    assert run.batches == [[0], [0, 1, 2, 3]]


def test_an_exception_reaches_only_its_own_caller():
    async def main():
        batcher = DynamicBatcher(Recorder(), max_batch_size=4, wait_s=0.05)
        return await asyncio.gather(batcher.submit("a"), batcher.submit("bad"), return_exceptions=True)

    good, bad = asyncio.run(main())
    assert good == "out a"
    assert isinstance(bad, ValueError) and str(bad) == "bad bad"


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    run = Recorder(fail_on="boom")

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=2, wait_s=0.05)
        failed = await asyncio.gather(batcher.submit("boom"), batcher.submit("x"), return_exceptions=True)
        return failed, await batcher.submit("y")

    (first, second), after = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError)
    assert after == "out y"


def test_a_batch_function_that_loses_results_fails_its_callers():
    async def short(items):
        return items[:-1]

    async def main():
        batcher = DynamicBatcher(short, max_batch_size=2, wait_s=0.05)
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    for answer in asyncio.run(main()):
        assert isinstance(answer, RuntimeError) and "1 results for 2 items" in str(answer)


def test_a_cancelled_request_is_left_out_of_its_batch_and_depth_counts_the_queue():
    run = Recorder(seconds=0.2)
    depths = []

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=8, wait_s=0.01, on_depth=lambda: depths.append(batcher.depth))
        first = asyncio.create_task(batcher.submit("first"))
        await asyncio.sleep(0.05)  # "first" is running
        gone = asyncio.create_task(batcher.submit("gone"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await asyncio.gather(first, kept)

    assert asyncio.run(main()) == ["out first", "out kept"]
    assert run.batches == [["first"], ["kept"]]
    assert max(depths) == 2 and depths[-1] == 0


def test_one_batcher_serves_one_event_loop_after_another():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=4, wait_s=0.01)
    for name in ("first loop", "second loop"):  # a worker left on the closed first loop would never answer
        assert asyncio.run(asyncio.wait_for(batcher.submit(name), 10)) == f"out {name}"
    assert run.batches == [["first loop"], ["second loop"]]


@pytest.mark.parametrize("max_batch_size, wait_s, name", [(0, 0.01, "max_batch_size"), (True, 0.01, "max_batch_size"),
                                                          (4, -1.0, "wait_s")])
def test_bad_settings_are_refused_by_name(max_batch_size, wait_s, name):
    with pytest.raises(ValueError, match=name):
        DynamicBatcher(Recorder(), max_batch_size, wait_s)


def test_a_bad_size_or_batch_function_is_refused_by_name():
    with pytest.raises(TypeError, match="run must be"):
        DynamicBatcher("not a function", 4, 0.01)
    batcher = DynamicBatcher(Recorder(), 4, 0.01)
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="size must be an integer >= 1"):
            asyncio.run(batcher.submit("x", size=size))
