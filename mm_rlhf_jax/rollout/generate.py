"""The one host-side text generator: items -> encoded prompts -> jitted KV-cache sampler -> texts.

    gen = Generator(module, tokenizer, mesh, encode=chat_encoder(tokenizer, max_length=64),
                    max_new_tokens=16, batch_size=8)
    outs = gen(params, items, seed=0)        # list[Generation]: text, tokens, logprobs, truncated
    texts = gen.texts(params, items)
    groups = gen(params, items, num_samples=4)   # 4 consecutive Generations per item, one prefill each

Every caller that turns prompts into text goes through here: critique-RM
inference, GenRM judging, PPO / Align-Pro rollouts (`sample` on encoded device
batches), Pre-PPO scoring, LongPO pair generation and the generation evals.

`encode(item) -> {"prompt_ids": int[L], <pixel arrays of static shape>...}`
turns one caller item (a text, a record, a conversation) into a prompt;
`Prompt` dicts can also be passed directly (encode=None).

Shapes: a call's rows are padded with repeats to `batch_size` and its prompts
left-padded to a length bucket (`bucket_length`: multiples of a quarter of the
length's power of two, at least `min_bucket`; the smallest of a few fixed
`buckets` that holds the longest prompt, e.g. `fixed_buckets(max_length)`; or
one fixed `prompt_length`), so the sampler compiles once per bucket
(`trace_count` counts compiles).

Placement: by default every process encodes every item (callers pass the
same items on every process), a batch goes to the mesh with
placement.put_global_batch and comes back with placement.fetch, so the
generator runs unchanged as N processes. `sample_rows` is the sharded form:
each process passes only its host slot's prompts (placement.host_slot of
batch_size), the bucket is agreed across processes, and every process gets
back every row's generation. With `param_shardings` (e.g. the SAMPLING_RULES layout: weights not
FSDP-sharded, so a decode step never all-gathers them) the parameters are
resharded explicitly into that layout before sampling.

Randomness: the batch starting at row `start` of a call samples with
fold_in(PRNGKey(seed), start), so a call's output does not depend on how its
rows are batched elsewhere; within it each row has its own stream (sampler.row_keys).

Continuous batching (`slots=S`): each sampler call still takes batch_size rows,
but only S of them decode at a time and a finished row's slot takes the next
waiting row (rollout/continuous.py); the outputs are the same as without it.
Worth it when response lengths vary (stop tokens): the call costs about
(sum of lengths) / S decode steps instead of (batch_size / S) x (longest).
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.progress import Progress
from mm_rlhf_jax.rollout.continuous import sample_continuous
from mm_rlhf_jax.rollout.sampler import SampleOutput, left_pad, sample
from mm_rlhf_jax.rollout import weights
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import placement

Prompt = dict  # {"prompt_ids": int[L], optional pixel arrays (static shapes)}

# Prompt keys that carry vision inputs for the sampler's prefill.
PIXEL_KEYS = ("pixel_values", "image_sizes", "pixel_values_videos")


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    tokens: tuple[int, ...]  # generated ids, the stop token included when hit
    logprobs: np.ndarray  # f32[len(tokens)] under the sampling distribution
    truncated: bool  # ran to max_new_tokens without a stop token

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def bucket_length(n: int, minimum: int = 64) -> int:
    """Smallest multiple of max(minimum, 2**floor(log2 n) / 4) that is >= n."""
    if n <= minimum:
        return minimum
    step = max(minimum, 1 << (int(n).bit_length() - 3))
    return -(-n // step) * step


def fixed_buckets(max_length: int, count: int = 4, minimum: int = 64) -> tuple[int, ...]:
    """Up to `count` prompt lengths max_length / 2**k (k = count-1 .. 0), multiples of 8, at least `minimum`.

    A handful of shapes, so a long pass (scoring a whole pair file) compiles
    the sampler at most `count` times while a short prompt is not padded to
    max_length (prefill and KV cache scale with the padded length).
    """
    out = {max_length}
    for k in range(1, count):
        out.add(min(max_length, max(minimum, -(-(max_length >> k) // 8) * 8)))
    return tuple(sorted(out))


def apply_fn(module) -> Callable[..., Any]:
    """The sampler's apply_fn for a Flax model (Decoder, LLaVA-OV, ModelWithHeads): next-token logits only."""
    return lambda p, ids, **kw: module.apply({"params": p}, ids, compute_logits="last", **kw)


def prefill_inputs(batch: dict) -> dict:
    """Vision kwargs for the sampler's prefill ((0, 0) image size = no image)."""
    out = {k: batch[k] for k in PIXEL_KEYS if k in batch}
    if "image_sizes" in out and "has_image" in batch:
        out["image_sizes"] = jnp.where(batch["has_image"][:, None], out["image_sizes"], 0)
    return out


def collate_prompts(prompts: Sequence[Prompt], pad_id: int, length: int) -> dict:
    """Left-padded prompt_ids / prompt_mask int32[B, L] plus the stacked pixel arrays."""
    ids, mask = left_pad([list(np.asarray(p["prompt_ids"]).tolist()) for p in prompts], pad_id, length)
    out = {"prompt_ids": ids, "prompt_mask": mask}
    for k in prompts[0]:
        if k != "prompt_ids":
            out[k] = np.stack([np.asarray(p[k]) for p in prompts])
    return out


def chat_encoder(tokenizer, *, max_length: int | None = None, media=None) -> Callable[[Any], Prompt]:
    """encode for chat turns: a user text, or a list of {"role", "content"} messages, up to the assistant header.

    Raises ValueError when a prompt is longer than max_length (callers that
    want to skip such prompts use Generator.fits first).
    """

    def encode(item) -> Prompt:
        messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length is not None and len(ids) > max_length:
            first = messages[-1]["content"][:80]
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the prompt length {max_length} "
                             f"(starts {first!r})")
        return {"prompt_ids": np.asarray(ids, np.int32)}

    return encode


class Generator:
    """Generation with one module through rollout.sample; see the module docstring.

    Args:
      module: the model (`apply(..., positions=, segment_ids=, cache=, compute_logits=True)` and `init_cache`).
      tokenizer: decodes the generated ids (pad / eos ids from it).
      mesh: the mesh batches are placed on.
      max_new_tokens / sampling / stop_ids: decoding (stop_ids default: the tokenizer's eos).
      batch_size: rows per sampler call (global; divisible by the mesh's batch axes).
      encode: item -> Prompt (None: items are Prompts already).
      prompt_length: one fixed prompt length for every call (None: bucket by length).
      buckets: fixed prompt lengths to choose from (the smallest that fits; a longer prompt is a
        ValueError); None: bucket_length's buckets.
      min_bucket: the smallest length bucket (bucket_length).
      param_shardings: the layout to sample in (None: the parameters' own).
      cache_dtype: KV-cache dtype (None: the module's compute dtype).
      weights_dtype: the dtype `prepare` casts weight matrices to ("compute": the module's compute
        dtype, see rollout.weights; None: keep the parameters' own).
      slots: rows decoding at once within a call (continuous batching, at most batch_size and divisible
        by the mesh's batch axes); None: all batch_size rows in lockstep.
    """

    def __init__(self, module, tokenizer, mesh, *, max_new_tokens: int, batch_size: int,
                 encode: Callable[[Any], Prompt] | None = None, sampling: SamplingConfig = SamplingConfig("greedy"),
                 stop_ids: Sequence[int] | None = None, prompt_length: int | None = None,
                 buckets: Sequence[int] | None = None, min_bucket: int = 64, param_shardings=None, cache_dtype=None,
                 weights_dtype: Any = "compute", slots: int | None = None):
        if prompt_length is not None and buckets is not None:
            raise ValueError("give prompt_length (one fixed length) or buckets, not both")
        placement.check_rows(batch_size, mesh, "generation batch size")
        if slots is not None:
            placement.check_rows(slots, mesh, "continuous-batching slots")
            if slots > batch_size:
                raise ValueError(f"{slots} decode slots for {batch_size}-row sampler calls: give at most batch_size")
        self.slots = slots
        self.module, self.tokenizer, self.mesh = module, tokenizer, mesh
        self.max_new_tokens, self.batch_size, self.sampling = max_new_tokens, batch_size, sampling
        self.prompt_length, self.min_bucket, self.param_shardings = prompt_length, min_bucket, param_shardings
        self.buckets = tuple(sorted(buckets)) if buckets is not None else None
        self._encode = encode
        compute = isinstance(weights_dtype, str) and weights_dtype == "compute"
        self.weights_dtype = weights.compute_dtype(module) if compute else weights_dtype
        self.stop_ids = tuple(int(s) for s in (stop_ids if stop_ids is not None else [tokenizer.eos_token_id]))
        self.pad_id = int(tokenizer.pad_token_id)
        self.trace_count = 0  # sampler compiles (one per prompt shape)
        self._init_cache = functools.partial(module.init_cache, dtype=cache_dtype)
        self._jits: dict[int, Callable] = {}
        self._sample = self.sample_fn(1)

    def sample_fn(self, num_samples: int) -> Callable:
        """The jitted sampler (params, batch, rng, fold) -> SampleOutput for `num_samples` rows per prompt
        (one jit per group size; a batch of B prompts gives B * num_samples rows)."""
        if num_samples not in self._jits:
            rows2, rows1 = placement.row_sharding(self.mesh, 2), placement.row_sharding(self.mesh, 1)

            sampler = sample if self.slots is None else functools.partial(sample_continuous, slots=self.slots)

            def run(params, batch, rng, fold):
                self.trace_count += 1  # Python side effect: runs once per trace
                return sampler(apply_fn(self.module), params, batch["prompt_ids"], batch["prompt_mask"],
                               self._init_cache, max_new_tokens=self.max_new_tokens, stop_ids=self.stop_ids,
                               rng=jax.random.fold_in(rng, fold), sampling=self.sampling,
                               prefill_kwargs=prefill_inputs(batch), num_samples=num_samples)

            self._jits[num_samples] = jax.jit(run, out_shardings=SampleOutput(
                tokens=rows2, logprobs=rows2, mask=rows2, lengths=rows1))
        return self._jits[num_samples]

    def shares_prefill(self, num_samples: int) -> bool:
        """Can a call's num_samples rows per prompt share one prefill? The batch_size rows must hold whole
        groups, and the batch_size / num_samples prompts must split over the mesh's batch axes."""
        prompts, rest = divmod(self.batch_size, num_samples)
        return num_samples > 1 and not rest and prompts % placement.batch_size_divisor(self.mesh) == 0

    # ------------------------------------------------------------------------------------------ encoding

    def encode(self, item) -> Prompt:
        return item if self._encode is None else self._encode(item)

    def fits(self, item) -> bool:
        """Does `item` encode within the prompt length?"""
        try:
            prompt = self.encode(item)
        except ValueError:
            return False
        limit = self.prompt_length or (self.buckets[-1] if self.buckets else None)
        return limit is None or len(prompt["prompt_ids"]) <= limit

    def length_for(self, prompts: Sequence[Prompt], longest: int | None = None) -> int:
        """The padded prompt length for these prompts (longest: their longest length, when known)."""
        longest = max(len(p["prompt_ids"]) for p in prompts) if longest is None else longest
        if self.prompt_length is not None:
            return self.prompt_length
        if self.buckets is not None:
            fits = [b for b in self.buckets if b >= longest]
            if not fits:
                raise ValueError(f"a prompt of {longest} tokens exceeds the largest prompt bucket {self.buckets[-1]}")
            return fits[0]
        return bucket_length(longest, self.min_bucket)

    # ------------------------------------------------------------------------------------------ sampling

    def prepare(self, params):
        """Parameters in the sampling layout (an explicit reshard when param_shardings is set), weight
        matrices in weights_dtype (one cast here, not one per decode step)."""
        params = params if self.param_shardings is None else placement.reshard(params, self.param_shardings)
        return weights.cast_weights(params, self.weights_dtype)

    def sample(self, params, batch: dict, rng, fold=0, num_samples: int = 1) -> SampleOutput:
        """SampleOutput (global arrays) for a collated batch: host arrays every process holds in full, or
        global arrays already on the mesh.

        num_samples > 1: `batch` holds each prompt once and rows [i*k, (i+1)*k) of the output are
        prompt i's k samples (its prefill shared); the same output as a batch with every prompt
        repeated k times (same rng and fold).

        params must already be in the sampling layout (see prepare); rng is a
        PRNG key and fold an int folded into it on device (host values, or
        replicated global arrays such as a train state's rng and step).
        """
        on_mesh = lambda x: isinstance(x, jax.Array) and not isinstance(x, np.ndarray)
        if not all(on_mesh(v) for v in batch.values()):
            batch = placement.put_global_batch(batch, self.mesh)
        rng = rng if on_mesh(rng) else placement.put_replicated(np.asarray(rng), self.mesh)
        fold = fold if on_mesh(fold) else placement.put_replicated(np.int32(fold), self.mesh)
        return self.sample_fn(num_samples)(params, batch, rng, fold)

    def _generations(self, res: SampleOutput, n: int) -> list[Generation]:
        """The first n rows of a fetched SampleOutput as Generations."""
        out = []
        for row in range(n):
            k = int(res.lengths[row])
            tokens = tuple(int(t) for t in res.tokens[row][:k])
            out.append(Generation(
                text=self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip(), tokens=tokens,
                logprobs=np.asarray(res.logprobs[row][:k], np.float32),
                truncated=not (tokens and tokens[-1] in self.stop_ids)))
        return out

    def __call__(self, params, items: Sequence, *, seed: int = 0, num_samples: int = 1,
                 progress: str | None = None) -> list[Generation]:
        """Generations for items, num_samples consecutive ones per item (GRPO / RLOO groups, Pre-PPO
        scoring, best-of-N): one prefill per item where shares_prefill(num_samples), else the item is
        repeated; the output is the same either way. progress: the label of a progress bar (or lines)
        over the items, on process 0."""
        prompts = [self.encode(it) for it in items]
        if not prompts:
            return []
        k = num_samples if self.shares_prefill(num_samples) else 1
        if k != num_samples:
            prompts = [p for p in prompts for _ in range(num_samples)]
        params = self.prepare(params)
        rng = np.asarray(jax.random.PRNGKey(seed))
        per_call = self.batch_size // k
        out: list[Generation] = []
        bar = Progress(len(items), progress, "items") if progress else None
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start:start + per_call]
            n = len(chunk)
            chunk = chunk + [chunk[0]] * (per_call - n)  # static batch shape: pad with a repeat
            batch = collate_prompts(chunk, self.pad_id, self.length_for(chunk))
            # fold = the call's first row, as if every prompt were repeated k times.
            res = placement.fetch_tree(self.sample(params, batch, rng, start * k, num_samples=k))
            out.extend(self._generations(res, n * k))
            if bar is not None:
                bar.update(n * k // num_samples)
        if bar is not None:
            bar.close()
        return out

    def sample_rows(self, params, prompts: Sequence[Prompt], *, seed: int = 0, fold: int = 0) -> list[Generation]:
        """One sampler call from this process's rows; every row's Generation (global row order) on every process.

        prompts: exactly placement.host_slot(batch_size, mesh).rows encoded
        prompts on every process (pad with repeats). params: in the sampling
        layout (prepare). The bucket is the one of the longest prompt of any
        process, so every process builds the same shapes. fold: folded into
        PRNGKey(seed), as __call__ folds a batch's start row.
        """
        slot = placement.host_slot(self.batch_size, self.mesh)
        if len(prompts) != slot.rows:
            raise ValueError(f"sample_rows takes this process's {slot.rows} rows of a {self.batch_size}-row "
                             f"batch, got {len(prompts)} prompts")
        longest = placement.process_max(max(len(p["prompt_ids"]) for p in prompts))
        batch = placement.put_batch(collate_prompts(prompts, self.pad_id, self.length_for(prompts, longest)),
                                    self.mesh)
        res = placement.fetch_tree(self.sample(params, batch, np.asarray(jax.random.PRNGKey(seed)), fold))
        return self._generations(res, self.batch_size)

    def texts(self, params, items: Sequence, *, seed: int = 0, num_samples: int = 1,
              progress: str | None = None) -> list[str]:
        return [g.text for g in self(params, items, seed=seed, num_samples=num_samples, progress=progress)]

    def bind(self, params) -> "BoundGenerator":
        """This generator with fixed parameters: bound(items, seed) -> list[Generation]."""
        return BoundGenerator(self, self.prepare(params))


@dataclasses.dataclass(frozen=True)
class BoundGenerator:
    generator: Generator
    params: Any  # already in the generator's sampling layout

    @property
    def batch_size(self) -> int:
        return self.generator.batch_size

    def __call__(self, items: Sequence, seed: int = 0) -> list[Generation]:
        return self.generator(self.params, items, seed=seed)


class _TokenIds:
    """The two tokenizer ids the generator needs, for token-id-only generation (no text)."""

    def __init__(self, pad_id: int, stop_ids):
        self.pad_token_id, self.eos_token_id = pad_id, (list(stop_ids) or [-1])[0]

    def decode(self, ids, skip_special_tokens=True):
        return ""


def generate_tokens(model, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    stop_ids: Sequence[int] = (), sampling: str = "greedy", num_samples: int = 1, seed: int = 0,
                    temperature: float = 1.0, batch_size: int = 64, pad_id: int = 0,
                    slots: int | None = None) -> list[list[int]]:
    """Generated ids per prompt (stop token included when hit), num_samples consecutive rows per prompt.

    The same engine the algorithms' rollouts use (Generator over rollout.sample).
    model / params as models.hf.load_pretrained returns them; the mesh is the one
    params are placed on (or the first device). `sampling` is a
    rollout.strategies name; without stop_ids every row runs to max_new_tokens.
    slots: continuous batching, that many rows decoding at once out of each
    batch_size-row call (capped at the call's rows); the same ids as without.
    """
    from mm_rlhf_jax.sharding import make_mesh

    leaf = jax.tree.leaves(params)[0]
    mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
    if mesh is None or not hasattr(mesh, "shape"):
        mesh = make_mesh({"fsdp": 1}, devices=list(leaf.devices())[:1])
    rows = len(prompts) * num_samples
    divisor = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    size = min(batch_size, -(-rows // divisor) * divisor)
    size = -(-size // divisor) * divisor
    stops = tuple(int(s) for s in stop_ids)
    if slots is not None:
        slots = min(-(-slots // divisor) * divisor, size)
    gen = Generator(model, _TokenIds(pad_id, stops), mesh, max_new_tokens=max_new_tokens, batch_size=size,
                    sampling=SamplingConfig(sampling, temperature), stop_ids=stops or (-1,), slots=slots)
    items = [{"prompt_ids": np.asarray(list(map(int, p)), np.int32)} for p in prompts]
    out = gen(params, items, seed=seed, num_samples=num_samples)
    return [list(g.tokens) for g in out]
