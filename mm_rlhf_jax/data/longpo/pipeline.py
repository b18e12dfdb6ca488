"""grain pipelines over LongPO samples: host shard -> shuffle -> repeat -> tokenize (+ cached ref logps) -> batch.

The same structure as `data.pipeline` (deterministic in (samples, seed, shard),
checkpointable iterator state), with the LongPO tokenizer (`samples.tokenize_sample`)
as the map. Reference log-probs, computed once per round with the short-context
model, ride along as `ref_logps` f32[2] (chosen, rejected) per sample.
"""

import grain
import numpy as np

from mm_rlhf_jax.data.longpo.samples import SampleLayout, collate, tokenize_sample
from mm_rlhf_jax.data.pipeline import PipelineConfig, host_shard
from mm_rlhf_jax.data.tokenizer import cached_tokenizer


class SampleSource:
    """Random access over samples (dicts from generate.load_samples) and their optional ref logps f32[N, 2]."""

    def __init__(self, samples: list[dict], ref_logps: np.ndarray | None = None):
        if ref_logps is not None and np.shape(ref_logps) != (len(samples), 2):
            raise ValueError(f"ref_logps has shape {np.shape(ref_logps)}, expected ({len(samples)}, 2)")
        self.samples, self.ref_logps = list(samples), ref_logps

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        ref = None if self.ref_logps is None else np.asarray(self.ref_logps[index], np.float32)
        return {"record": self.samples[index], "ref_logps": ref}


class Encode(grain.transforms.Map):
    """Element -> arrays (module level so grain worker processes can unpickle it)."""

    def __init__(self, tokenizer_path: str, layout: SampleLayout):
        self.tokenizer_path, self.layout = tokenizer_path, layout

    def map(self, element):
        out = tokenize_sample(cached_tokenizer(self.tokenizer_path), element["record"], self.layout)
        if element["ref_logps"] is not None:
            out["ref_logps"] = element["ref_logps"]
        return out


def make_iterator(source: SampleSource, tokenizer_path: str, layout: SampleLayout, cfg: PipelineConfig):
    """Checkpointable iterator of numpy batches (get_state / set_state)."""
    ds = host_shard(grain.MapDataset.source(source), *cfg.shard())
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs).map(Encode(tokenizer_path, layout))
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_prefetch)
    it = ds.to_iter_dataset(read)
    if cfg.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers,
                                                         per_worker_buffer_size=cfg.worker_buffer_size))
    return iter(it)


def padded_batches(source: SampleSource, tokenizer_path: str, layout: SampleLayout, batch_size: int):
    """One ordered pass over all samples (this host's are all of them); the last batch repeats its first row.

    Yields (batch, n_valid). For reference log-probs and evaluation, which every host computes whole.
    """
    enc = Encode(tokenizer_path, layout)
    for start in range(0, len(source), batch_size):
        rows = [enc.map(source[i]) for i in range(start, min(start + batch_size, len(source)))]
        n = len(rows)
        rows += [rows[0]] * (batch_size - n)
        yield collate(rows), n
