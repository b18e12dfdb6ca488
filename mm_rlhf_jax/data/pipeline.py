"""grain pipelines over pair sources: host shard -> shuffle per epoch -> encode -> batch.

    source (JsonlPairSource / TfdsPairSource)
      -> host shard   (equal-sized strided slice per jax process)
      -> shuffle      (seeded; repeat() reshuffles every epoch with seed + epoch)
      -> repeat       (num_epochs, or forever)
      -> map          (ExampleEncoder: media + tokens -> fixed-shape arrays)
      -> batch        (per-host batch; drop_remainder keeps shapes static)
      -> iterator     (in-process, or `num_workers` processes via mp_prefetch)

Everything is a deterministic function of (source, seed, shard): the same
config gives the same batches, with or without worker processes. The iterator
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
      shard_index / shard_count: this host's shard; None = jax.process_index() / process_count().
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


class _Encode(grain.transforms.Map):
    """grain Map wrapper (module level, so worker processes can unpickle it)."""

    def __init__(self, encoder: ExampleEncoder):
        self.encoder = encoder

    def map(self, element):
        return self.encoder(element)


def host_shard(ds: grain.MapDataset, index: int, count: int) -> grain.MapDataset:
    """Strided shard; every host gets exactly len // count elements so step counts agree."""
    n = len(ds) - len(ds) % count
    if n == 0:
        raise ValueError(f"{len(ds)} examples cannot be split over {count} hosts")
    return ds[:n][index::count]


def make_examples(source, encoder, cfg: PipelineConfig) -> grain.MapDataset:
    """The encoded, unbatched MapDataset (random access: `ds[i]` is the i-th example of the stream).

    encoder: a picklable element -> example callable (ExampleEncoder, or packed_example.PackedPairEncoder).
    """
    ds = host_shard(grain.MapDataset.source(source), *cfg.shard())
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    return ds.map(_Encode(encoder))


def make_dataset(source, encoder_cfg: EncoderConfig, cfg: PipelineConfig) -> grain.MapDataset:
    """The batched MapDataset (random access: `ds[i]` is batch i)."""
    return make_examples(source, ExampleEncoder(encoder_cfg), cfg).batch(cfg.batch_size,
                                                                         drop_remainder=cfg.drop_remainder)


def make_iterator(source, encoder_cfg: EncoderConfig, cfg: PipelineConfig):
    """A checkpointable iterator of numpy batches (batch.py contract)."""
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_prefetch)
    ds = make_dataset(source, encoder_cfg, cfg).to_iter_dataset(read)
    if cfg.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    return iter(ds)


def num_batches(source, cfg: PipelineConfig) -> int | None:
    """Batches per host for num_epochs (None when repeating forever)."""
    if cfg.num_epochs is None:
        return None
    _, count = cfg.shard()
    n = (len(source) // count) * cfg.num_epochs
    return n // cfg.batch_size if cfg.drop_remainder else -(-n // cfg.batch_size)
