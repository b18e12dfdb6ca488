"""progress.Progress off a terminal: one log line per 10% with the session's rate and the time left."""

from mm_rlhf_jax.progress import Progress


def test_lines_every_tenth_with_rate():
    bar = Progress(1000, "score", "pairs", enabled=True, tty=False)
    for _ in range(100):
        bar.update(10)
    bar.close()
    assert len(bar.lines) == 10
    assert bar.lines[0].startswith("score: 100/1000 pairs (10.0%), ") and "pairs/s" in bar.lines[0]
    assert "left" in bar.lines[0] and bar.lines[-1].startswith("score: 1000/1000 pairs (100.0%)")


def test_resumed_pass_counts_only_new_items_in_its_rate():
    bar = Progress(100, "score", "pairs", initial=60, enabled=True, tty=False, every=0.25)
    bar.update(15)  # 75: the next quarter mark
    assert len(bar.lines) == 1 and bar.lines[0].startswith("score: 75/100")
    assert bar.rate > 0 and bar.n - bar._start_n == 15
    bar.update(5)
    bar.close()  # 80 had no mark: close writes the last line
    assert bar.lines[-1].startswith("score: 80/100")


def test_unknown_total_and_disabled():
    bar = Progress(None, "read", "records", enabled=True, tty=False, interval_s=0)
    bar.update(3)
    bar.set_postfix({"computed": 3})
    bar.update(2)
    bar.close()
    assert bar.lines[0].startswith("read: 3 records, ") and bar.lines[-1].endswith("computed=3")
    off = Progress(10, "x", enabled=False, tty=False)
    off.update(10)
    off.close()
    assert off.lines == []
