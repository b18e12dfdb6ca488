"""grain pipelines over LongPO samples: shuffle -> repeat -> tokenize (+ cached ref logps) -> batch -> host slot.

The same structure as `data.pipeline` (global order, deterministic in (samples, seed),
checkpointable iterator state), with the LongPO tokenizer (`samples.tokenize_sample`)
as the map. Reference log-probs, computed once per round with the short-context
model, ride along as `ref_logps` f32[2] (chosen, rejected) per sample.
"""

import grain
import numpy as np

from mm_rlhf_jax.data.longpo.samples import SampleLayout, tokenize_sample
from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.pipeline import PipelineConfig
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
    return pipeline.make_iterator(source, None, cfg, encode=Encode(tokenizer_path, layout))


def padded_batches(source: SampleSource, tokenizer_path: str, layout: SampleLayout, batch_size: int, *,
                   shard: tuple[int, int] = (0, 1)):
    """One ordered pass over all samples (data.pipeline.ordered_pass); yields (batch, n_valid).

    shard (0, 1): every host holds whole batches (evaluation); a host slot
    (placement.host_slot(...).shard): this host's rows only (the reference pass).
    """
    yield from pipeline.ordered_pass(source, batch_size, Encode(tokenizer_path, layout), shard=shard)
