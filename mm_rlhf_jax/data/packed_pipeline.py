"""A deterministic, checkpointable iterator of packed pair batches over a random-access pair stream.

    stream   pipeline.make_examples: host shard -> shuffle per epoch -> repeat -> PackedPairEncoder
             (ds[i] = the i-th compact pair of this process's stream)
    window   the pairs deferred by the previous window + the next `window` pairs of the stream,
             encoded with `num_threads` threads
    pack     packing.pack_rows (best-fit decreasing, the deferred pairs placed first)
    emit     rows chosen in batches of layout.rows: the rows holding a deferred pair first, then
             the fullest; choosing stops before a batch that would waste more than max_waste
             of its tokens (unless it holds a deferred pair). The chosen rows are batched in
             order of their tile counts (a batch's tile axis is its fullest row's bucket,
             so rows of similar media load share one). The rows left go back: their
             pairs are deferred to the next window, so nothing is padded away mid-stream,
             and a deferred pair always goes out in the next window. At the end of a finite
             stream every row is emitted, the last batch filled up with empty rows, unless
             drop_remainder.

The state is {"start": the window's first new stream index, "deferred": the
deferred indices, "emitted": batches of this window already returned}: small,
JSON-able, and enough to rebuild the window exactly (the stream is a pure
function of its index), so a restored iterator returns exactly the batches an
uninterrupted one would have.

Each process packs its own shard; with several processes the layout's
fixed_tiles keeps every batch the same shape on every process.
"""

import concurrent.futures

from mm_rlhf_jax.data import packing


class PackedIterator:
    """next() -> a packed batch (numpy, data/batch.py packed contract); get_state() / set_state(state)."""

    def __init__(self, dataset, layout: packing.PackingLayout, *, window: int, drop_remainder: bool = True,
                 num_threads: int = 4, max_waste: float = 0.05):
        if window < 1:
            raise ValueError(f"window must be >= 1 pair, got {window}")
        self.dataset, self.layout, self.window, self.max_waste = dataset, layout, window, max_waste
        self.drop_remainder, self.num_threads = drop_remainder, max(num_threads, 1)
        self.set_state({"start": 0, "deferred": [], "emitted": 0})

    def get_state(self) -> dict:
        return {"start": self._start, "deferred": list(self._deferred), "emitted": self._emitted}

    def set_state(self, state: dict) -> None:
        self._start, self._deferred = int(state["start"]), [int(i) for i in state["deferred"]]
        self._emitted = int(state["emitted"])
        self._rows = None  # the window is rebuilt on the next call

    def __iter__(self):
        return self

    def _encode(self, indices):
        if self.num_threads == 1 or len(indices) < 2:
            return [self.dataset[i] for i in indices]
        with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
            return list(pool.map(self.dataset.__getitem__, indices))

    def _pack_window(self):
        """Rows (lists of (stream index, pair)) of this window's batches, the next start and deferred indices."""
        total = len(self.dataset)
        new = range(self._start, min(self._start + self.window, total))
        indices = self._deferred + list(new)
        pairs = self._encode(indices)
        sizes = [(len(p["ids"]), p["tiles"].shape[0]) for p in pairs]
        old = set(self._deferred)
        rows = [[(indices[i], pairs[i]) for i in row]
                for row in packing.pack_rows(sizes, self.layout, first=len(self._deferred))]
        tokens = lambda row: sum(len(p["ids"]) for _, p in row)  # noqa: E731
        forced = lambda row: any(i in old for i, _ in row)  # noqa: E731
        rows.sort(key=lambda row: (not forced(row), -tokens(row), min(i for i, _ in row)))
        r, budget = self.layout.rows, self.layout.rows * self.layout.row_length
        emit = 0
        while emit + r <= len(rows):
            batch = rows[emit:emit + r]
            if 1 - sum(map(tokens, batch)) / budget > self.max_waste and not any(map(forced, batch)):
                break
            emit += r
        if new.stop >= total:  # the end of a finite stream: nothing is carried over
            out, nxt, deferred = (rows[:len(rows) // r * r] if self.drop_remainder else rows), total, []
        else:
            out, nxt, deferred = rows[:emit], new.stop, sorted(i for row in rows[emit:] for i, _ in row)
        # Batches of rows with similar tile counts: a batch's tile axis is its fullest row's bucket.
        tiles = lambda row: sum(p["tiles"].shape[0] for _, p in row)  # noqa: E731
        out.sort(key=lambda row: (tiles(row), min(i for i, _ in row)))
        return out, nxt, deferred

    def __next__(self):
        while True:
            if self._rows is None:
                if self._start >= len(self.dataset) and not self._deferred:
                    raise StopIteration
                self._rows, self._next_start, self._next_deferred = self._pack_window()
            r = self.layout.rows
            if self._emitted * r < len(self._rows):
                rows = self._rows[self._emitted * r:(self._emitted + 1) * r]
                self._emitted += 1
                return packing.collate([[p for _, p in row] for row in rows], self.layout,
                                       indices=[[i for i, _ in row] for row in rows])
            self.set_state({"start": self._next_start, "deferred": self._next_deferred, "emitted": 0})
