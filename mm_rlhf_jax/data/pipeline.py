"""grain pipelines over pair sources: shuffle per epoch -> encode -> batch -> this host's slot.

    source (JsonlPairSource / TfdsPairSource)
      -> shuffle      (seeded, over the whole source; repeat() reshuffles every epoch with seed + epoch)
      -> repeat       (num_epochs, or forever)
      -> map          (ExampleEncoder: media + tokens -> fixed-shape arrays)
      -> batch        (this host's rows; drop_remainder keeps shapes static)
      -> host slot    (global batch i = host batches i*count .. i*count + count-1; host `index` takes its one)
      -> iterator     (in-process, or `num_workers` processes via mp_prefetch)

The order is global: the global batch (every host's rows together) is the
same whatever the number of processes, so N processes train on exactly the
batches one process would, each host encoding only its rows (grain's maps are
lazy: the other hosts' elements are never read here). (grain's own per-process
sharding, ShardByJaxProcess, gives each host a contiguous range of the source
instead, so the global batch would change with the process count.) Everything is a
deterministic function of (source, seed): the same config gives the same
batches, with or without worker processes. The iterator
has `get_state()` / `set_state(state)` (a small JSON-able dict): a run restored
from a saved state sees exactly the batches an uninterrupted run would have
seen next. For orbax, `grain.checkpoint.CheckpointSave(iterator)` /
`CheckpointRestore(iterator)` wrap the same state.

Worker processes use spawn and read absl flags: run under `absl.app.run`, or call
`absl.flags.FLAGS.mark_as_parsed()` first (tests/conftest.py does).
"""

import dataclasses

import grain

from mm_rlhf_jax.data.example import EncoderConfig, ExampleEncoder


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Order, batching and parallelism of a pipeline.

    Attributes:
      batch_size: examples per batch on this host.
      seed: shuffle seed (epoch e uses seed + e).
      shuffle: shuffle at all (evaluation pipelines keep file order).
      num_epochs: passes over the data; None repeats forever.
      drop_remainder: drop a last partial batch (static shapes).
      num_workers: 0 = encode in this process; > 0 = that many worker processes.
      worker_buffer_size: batches each worker process hands over ahead.
      read_threads / read_prefetch: threads and batches prepared ahead inside each process (grain's
        ReadOptions; its default of 500 elements ahead is far more than a training step needs).
      shard_index / shard_count: this host's slot of every global batch of shard_count * batch_size rows
        (sharding.placement.host_slot); None = jax.process_index() / process_count().
    """

    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    drop_remainder: bool = True
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 4
    read_prefetch: int = 4
    shard_index: int | None = None
    shard_count: int | None = None

    def shard(self) -> tuple[int, int]:
        if self.shard_index is not None and self.shard_count is not None:
            index, count = self.shard_index, self.shard_count
        elif self.shard_index is None and self.shard_count is None:
            import jax

            index, count = jax.process_index(), jax.process_count()
        else:
            raise ValueError("set both shard_index and shard_count, or neither (= one shard per jax process)")
        if not 0 <= index < count:
            raise ValueError(f"shard_index={index} is outside [0, shard_count={count})")
        return index, count


class Encode(grain.transforms.Map):
    """grain Map wrapper (module level, so worker processes can unpickle it)."""

    def __init__(self, encoder: ExampleEncoder):
        self.encoder = encoder

    def map(self, element):
        return self.encoder(element)


def host_slot(batches: grain.MapDataset, cfg: PipelineConfig) -> grain.MapDataset:
    """This host's batches of a dataset of host-sized batches taken in global order (see the module docstring).

    Only whole global batches are kept, so every host takes the same number of steps.
    """
    index, count = cfg.shard()
    if count == 1:
        return batches
    if cfg.num_epochs is not None:
        if not cfg.drop_remainder:
            raise ValueError("a finite pipeline over several hosts needs drop_remainder=True (every host must "
                             "take the same number of batches)")
        batches = batches[: len(batches) - len(batches) % count]
    return batches[index::count]


def host_shard(ds: grain.MapDataset, index: int, count: int) -> grain.MapDataset:
    """Strided shard of examples; every host gets exactly len // count of them (packed batches: each host packs
    its own examples into its rows, so step counts agree while the rows depend on the process count)."""
    n = len(ds) - len(ds) % count
    if n == 0:
        raise ValueError(f"{len(ds)} examples cannot be split over {count} hosts")
    return ds[:n][index::count]


def make_examples(source, encoder, cfg: PipelineConfig) -> grain.MapDataset:
    """This host's encoded, unbatched examples (random access: `ds[i]` is its i-th example); packed pipelines.

    encoder: a picklable element -> example callable (packed_example.PackedPairEncoder).
    """
    ds = host_shard(grain.MapDataset.source(source), *cfg.shard())
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    return ds.map(Encode(encoder))


def make_dataset(source, encoder_cfg: EncoderConfig, cfg: PipelineConfig, encode=None) -> grain.MapDataset:
    """The batched MapDataset of this host (random access: `ds[i]` is its batch i).

    encode: the element map (default: the ExampleEncoder of encoder_cfg).
    """
    ds = grain.MapDataset.source(source)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(encode or Encode(ExampleEncoder(encoder_cfg)))
    return host_slot(ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder), cfg)


def make_iterator(source, encoder_cfg: EncoderConfig, cfg: PipelineConfig, encode=None):
    """A checkpointable iterator of numpy batches (batch.py contract); encode as in make_dataset."""
    return iterate(make_dataset(source, encoder_cfg, cfg, encode), cfg)


def iterate(ds: grain.MapDataset, cfg: PipelineConfig):
    """The checkpointable iterator of a batched MapDataset, with cfg's read threads and worker processes."""
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_prefetch)
    ds = ds.to_iter_dataset(read)
    if cfg.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    return iter(ds)


def num_batches(source, cfg: PipelineConfig) -> int | None:
    """Batches per host for num_epochs (None when repeating forever)."""
    if cfg.num_epochs is None:
        return None
    _, count = cfg.shard()
    n = len(source) * cfg.num_epochs
    local = n // cfg.batch_size if cfg.drop_remainder else -(-n // cfg.batch_size)
    return local if count == 1 else local // count


class _Positions:
    """source[positions[i]] as a random-access source (an ordered pass's rows of this host)."""

    def __init__(self, source, positions):
        self.source, self.positions = source, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        return self.source[self.positions[i]]


def ordered_pass(source, batch_size: int, encode, *, shard: tuple[int, int] = (0, 1), read_threads: int = 4):
    """One ordered pass over the whole source in global batches of batch_size; yields (host rows, n_valid).

    The last global batch is padded by repeating its first row; n_valid counts
    its real rows. shard = (index, count): this host's rows of each global
    batch (sharding.placement.host_slot; (0, 1) = all rows, every process the
    same batches). Place host rows with placement.put_batch, whole batches with
    placement.put_global_batch.
    """
    index, count = shard
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} does not split into {count} host slots")
    rows, n = batch_size // count, len(source)
    positions = []
    for start in range(0, n, batch_size):
        for k in range(index * rows, (index + 1) * rows):
            positions.append(start + k if start + k < n else start)
    ds = grain.MapDataset.source(_Positions(source, positions)).map(encode).batch(rows)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads)))
    for start in range(0, n, batch_size):
        yield next(it), min(batch_size, n - start)
