"""WorkerPool: per-call timeouts that kill the worker, errors, threads (stdlib targets)."""

import threading
import time

import pytest

from mm_rlhf_jax.rewards.math.pool import CallTimeout, WorkerError, WorkerPool


@pytest.fixture
def pool():
    p = WorkerPool("time:sleep", workers=2, timeout_s=1.0)
    yield p
    p.close()


def test_timeout_kills_the_worker_and_the_next_call_works(pool):
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        pool.call(30)
    assert time.monotonic() - start < 5  # the call returned at the timeout, not after 30 s
    assert pool.timeouts == 1
    assert pool.call(0) is None  # a fresh worker answers
    assert len(pool._live) <= 2


def test_calls_from_threads_run_in_parallel_across_workers(pool):
    results, start = [], time.monotonic()

    def one():
        results.append(pool.call(0.5))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [None] * 4
    assert time.monotonic() - start < 3.5 + 2  # 2 workers: two rounds of 0.5 s plus start-up


def test_errors_and_crashes_are_reported():
    sqrt = WorkerPool("math:sqrt", workers=1, timeout_s=10.0)
    try:
        assert sqrt.call(16) == 4.0
        with pytest.raises(WorkerError, match="ValueError: math domain error"):
            sqrt.call(-1)
        assert sqrt.call(9) == 3.0
        assert sqrt.map([[4], [-1], [25]])[0::2] == [2.0, 5.0]
    finally:
        sqrt.close()
    exit_ = WorkerPool("os:_exit", workers=1, timeout_s=10.0)
    try:
        with pytest.raises(WorkerError, match="exited with code 3"):
            exit_.call(3)
    finally:
        exit_.close()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="module:function"):
        WorkerPool("time.sleep")
    with pytest.raises(ValueError, match="workers"):
        WorkerPool("time:sleep", workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        WorkerPool("time:sleep", timeout_s=0)
    missing = WorkerPool("no_such_module_here:f", workers=1)
    with pytest.raises(WorkerError, match="did not start.*ModuleNotFoundError"):
        missing.call()
    missing.close()
    p = WorkerPool("time:sleep")
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.call(0)
