"""The Pallas TPU token log-probs over a device mesh: token-parallel and vocab-parallel.

A `pallas_call` is opaque to XLA's SPMD partitioner, so under a multi-device mesh
(`jax.set_mesh`) the kernels run inside one `shard_map` per direction with an
explicit plan:

  tokens  N split over every batch-like mesh axis whose running product divides N:
          ("data", "fsdp", "sequence") and, when the head is not vocab-parallel,
          also "tensor" (otherwise tensor ranks would redo the same tokens);
  vocab   vocab-parallel: W [H, V] split over "tensor" on V. Each shard runs the
          kernels on its V/tp columns; the forward returns unnormalised statistics
          (max, sum exp, target logit, sum p z), merged with one pmax and three
          psums of [N_local] vectors, so no device holds the whole head. The
          backward uses the merged logsumexp: dW needs no cross-vocab sum (each
          shard owns its columns), dh is summed over "tensor" (f32);
  head    W enters the shard_map still split over H by the token axes (when they
          divide H) and is all-gathered inside, one vocab slice of <= 128 MiB at a
          time (the next one in flight), cast to the compute dtype before the gather (half the bytes of an
          f32 master head); each slice's dW is reduce-scattered back over H at once.
          So no device holds the gathered head or an unreduced full-size dW, only
          one slice of each; the slices' statistics merge like vocab shards.

dW is summed over the token axes only (f32, rounded once to W's dtype), never over
every mesh axis. The custom_vjp lives outside the shard_maps, so autodiff never
transposes a shard_map (whose transpose would all-reduce over every axis). Without
a mesh the same code calls the kernels once on the whole head, as given.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mm_rlhf_jax.kernels.per_shard import ambient_mesh, split_axes
from mm_rlhf_jax.kernels.token_logprobs import common, pallas_tpu

_F32 = jnp.float32
TOKEN_AXES = ("data", "fsdp", "sequence")  # mesh axes that split examples / sequences (sharding.mesh)
VOCAB_AXIS = "tensor"
GATHER_SLICE_BYTES = 128 * 2**20  # the gathered head slice per step (compute dtype)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call is split over the ambient mesh (mesh None: a single-device call)."""

    mesh: object = None  # jax AbstractMesh
    tokens: tuple[str, ...] | None = None  # axes splitting N
    vocab: str | None = None  # axis splitting V (vocab-parallel), or None
    head_split: tuple[str, ...] | None = None  # axes W's H stays split over until gathered in-body
    slices: tuple[tuple[int, int], ...] = ()  # [lo, hi) column slices of the local vocabulary


def _size(mesh, axes) -> int:
    shape, size = dict(mesh.shape), 1
    for a in axes or ():
        size *= shape.get(a, 1)
    return size


def _slices(v_local: int, hid: int, itemsize: int, align: int):
    """[lo, hi) slices of v_local columns, each gathered slice [H, hi - lo] within
    GATHER_SLICE_BYTES, boundaries on multiples of `align` (the kernels' vocab tiles)."""
    n = max(1, -(-hid * v_local * itemsize // GATHER_SLICE_BYTES))
    width = common.round_up(-(-v_local // n), align)
    return tuple((lo, min(v_local, lo + width)) for lo in range(0, v_local, width))


def make_plan(n: int, hid: int, vocab: int, vocab_parallel: bool | None, *, itemsize: int = 2,
              align: int = 1024) -> Plan:
    """The plan for N tokens and an [H, V] head under the ambient mesh.

    vocab_parallel: None = when the mesh has a "tensor" axis (> 1) that divides V;
    True = required (an error if impossible); False = W gathered on every device.
    itemsize: bytes per head element as gathered (the compute dtype's).
    """
    mesh = ambient_mesh()
    tp = 1 if mesh is None else dict(mesh.shape).get(VOCAB_AXIS, 1)
    possible = tp > 1 and vocab % tp == 0
    if vocab_parallel and not possible:
        raise ValueError(f"token_logprobs: vocab_parallel=True needs a mesh axis {VOCAB_AXIS!r} (> 1) dividing "
                         f"V = {vocab}; the mesh is {None if mesh is None else dict(mesh.shape)}")
    if mesh is None:
        return Plan()
    vocab_axis = VOCAB_AXIS if (possible if vocab_parallel is None else vocab_parallel) else None
    tokens = split_axes(mesh, TOKEN_AXES if vocab_axis else TOKEN_AXES + (VOCAB_AXIS,), n)
    if tokens is None and vocab_axis is None:
        return Plan()
    head_split = tokens if tokens and hid % _size(mesh, tokens) == 0 else None
    v_local = vocab // (tp if vocab_axis else 1)
    slices = _slices(v_local, hid, itemsize, align) if head_split else ((0, v_local),)
    return Plan(mesh, tokens, vocab_axis, head_split, slices)


def _labels_of_shard(labels, v_local: int, vocab_axis):
    """Labels relative to this vocab shard's first column (ids of other shards fall
    outside [0, V_local) and never match a column)."""
    if vocab_axis is None:
        return labels
    return labels - jax.lax.axis_index(vocab_axis).astype(jnp.int32) * v_local


def _head_slice(w, lo, hi, plan: Plan, dtype):
    """Columns [lo, hi) of this device's head in the compute dtype, all-gathered over H."""
    w = w[:, lo:hi] if (lo, hi) != (0, w.shape[1]) else w
    if plan.mesh is not None and jnp.dtype(dtype).itemsize < jnp.dtype(w.dtype).itemsize:
        w = w.astype(dtype)  # before the gather: half the bytes on the wire and in memory
    if plan.head_split:
        w = jax.lax.all_gather(w, plan.head_split, axis=0, tiled=True)
    return w


def _merge(parts):
    """Online-softmax statistics (m, l, t, sz) of disjoint vocab parts -> of their union."""
    if len(parts) == 1:
        return parts[0]
    m = functools.reduce(jnp.maximum, [p[0] for p in parts])
    scales = [jnp.exp(p[0] - m) for p in parts]
    l = sum(p[1] * s for p, s in zip(parts, scales))
    sz = sum(p[3] * s for p, s in zip(parts, scales))
    return m, l, sum(p[2] for p in parts), sz


def _over_slices(w, plan: Plan, dtype, step):
    """step(slice index, lo, gathered head slice) for every slice, in order.

    XLA would otherwise start every slice's all-gather up front (they depend only on
    W) and hold all of them: each gather after the first two waits (through an
    optimization barrier) for the step two slices back, so at most two gathered
    slices are alive while the next gather still overlaps the current step."""
    slices = plan.slices
    tied = w
    upcoming = _head_slice(w, *slices[0], plan, dtype)
    for s, (lo, hi) in enumerate(slices):
        current = upcoming
        if s + 1 < len(slices):
            upcoming = _head_slice(tied, *slices[s + 1], plan, dtype)
        out = step(s, lo, current)
        if len(slices) > 2:
            tied, out = jax.lax.optimization_barrier((w, out))
        yield out


def _forward_body(h, w, labels, *, cfg):
    plan = cfg.plan
    labels = _labels_of_shard(labels, cfg.v_local, plan.vocab)

    def step(s, lo, w_s):
        stats = pallas_tpu.forward_stats(h, w_s, labels - lo, **cfg.fwd)
        return tuple(stats[:, k] for k in (pallas_tpu.M, pallas_tpu.L, pallas_tpu.T, pallas_tpu.SZ))

    m, l, t, sz = _merge(list(_over_slices(w, plan, h.dtype, step)))
    if plan.vocab is not None:  # merge the vocab shards' statistics
        m_all = jax.lax.pmax(m, plan.vocab)
        scale = jnp.exp(m - m_all)
        l, sz = jax.lax.psum(l * scale, plan.vocab), jax.lax.psum(sz * scale, plan.vocab)
        t, m = jax.lax.psum(t, plan.vocab), m_all
    logp, lse, ent = common.finish_stats(m, l, t, sz)
    return logp, lse, ent if cfg.with_entropy else jnp.zeros_like(ent)


def _backward_body(h, w, labels, lse, ent, g, ge, *, cfg):
    plan = cfg.plan
    rows = pallas_tpu.pack_rows(lse, ent, g, ge)
    labels = _labels_of_shard(labels, cfg.v_local, plan.vocab)
    # Partial results that are summed afterwards (over slices, vocab shards, token
    # shards) are produced in f32 and rounded once at the end.
    sum_dh = plan.vocab is not None or len(plan.slices) > 1

    def step(s, lo, w_s):
        dh_s, dw_s = pallas_tpu.backward(
            h, w_s, labels - lo, rows, **cfg.bwd,
            dh_dtype=_F32 if sum_dh else h.dtype, dw_dtype=_F32 if plan.tokens else cfg.w_dtype)
        if plan.tokens:
            dw_s = (jax.lax.psum_scatter(dw_s, plan.head_split, scatter_dimension=0, tiled=True)
                    if plan.head_split else jax.lax.psum(dw_s, plan.tokens))
        return dh_s, dw_s.astype(cfg.w_dtype)

    parts = list(_over_slices(w, plan, h.dtype, step))
    dh = functools.reduce(jnp.add, [p[0] for p in parts])
    dws = [p[1] for p in parts]
    if plan.vocab is not None:
        dh = jax.lax.psum(dh, plan.vocab)
    return dh.astype(h.dtype), dws[0] if len(dws) == 1 else jnp.concatenate(dws, axis=1)


@dataclasses.dataclass(frozen=True)
class Config:
    """Static arguments of one call: kernel options per direction and the plan."""

    fwd_items: tuple  # forward_stats keyword items
    bwd_items: tuple  # backward keyword items
    with_entropy: bool
    plan: Plan
    w_dtype: object  # dtype of the head as given (its gradient's dtype)
    v_local: int  # columns of one vocab shard

    @property
    def fwd(self) -> dict:
        return dict(self.fwd_items)

    @property
    def bwd(self) -> dict:
        return dict(self.bwd_items)


def _on_mesh(body, cfg: Config, in_specs, out_specs):
    body = functools.partial(body, cfg=cfg)
    if cfg.plan.mesh is None:
        return body
    # check_vma=False: pallas_call outputs carry no varying-axes types; the
    # collectives above are written out explicitly.
    return jax.shard_map(body, mesh=cfg.plan.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _specs(plan: Plan):
    """(hidden, head, per-token) partition specs inside the shard_maps."""
    return P(plan.tokens, None), P(plan.head_split, plan.vocab), P(plan.tokens)


def _forward(h, w, labels, cfg: Config):
    hs, ws, ts = _specs(cfg.plan)
    return _on_mesh(_forward_body, cfg, (hs, ws, ts), (ts, ts, ts))(h, w, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _logprobs(h, w, labels, cfg):
    logp, _, ent = _forward(h, w, labels, cfg)
    return logp, ent


def _logprobs_fwd(h, w, labels, cfg):
    logp, lse, ent = _forward(h, w, labels, cfg)
    return (logp, ent), (h, w, labels, lse, ent)


def _logprobs_bwd(cfg, res, cts):
    h, w, labels, lse, ent = res
    g, ge = (c.astype(_F32) for c in cts)
    hs, ws, ts = _specs(cfg.plan)
    dh, dw = _on_mesh(_backward_body, cfg, (hs, ws, ts, ts, ts, ts, ts), (hs, ws))(h, w, labels, lse, ent, g, ge)
    return dh, dw, None


_logprobs.defvjp(_logprobs_fwd, _logprobs_bwd)


def token_logprobs_pallas_tpu(h, w, labels, *, inv_temp: float, with_entropy: bool, blocks: common.BlockSizes,
                              interpret=False, vmem_limit: int, vocab_parallel: bool | None = None):
    """h[N, H], w[H, V], labels int32[N] -> (logp f32[N], entropy f32[N]) under the ambient mesh."""
    n, hid = h.shape
    vocab = w.shape[1]
    align = max(blocks.block_v, blocks.block_v_bwd, blocks.dw[1])
    itemsize = min(h.dtype.itemsize, w.dtype.itemsize)
    plan = make_plan(n, hid, vocab, vocab_parallel, itemsize=itemsize, align=align)
    mesh = ambient_mesh()
    if plan.mesh is None and mesh is not None and _size(mesh, tuple(dict(mesh.shape))) > 1:
        # No token axis divides N (e.g. one rescored token per row of a 1-row microbatch): a Mosaic call
        # cannot be partitioned automatically, so pad N to a multiple of every token axis (zero rows, whose
        # outputs are dropped and whose cotangents are zero) and split it like any other call.
        m = _size(mesh, TOKEN_AXES + (VOCAB_AXIS,))
        pad = -n % m
        logp, ent = token_logprobs_pallas_tpu(
            jnp.pad(h, ((0, pad), (0, 0))), w, jnp.pad(labels, (0, pad)), inv_temp=inv_temp,
            with_entropy=with_entropy, blocks=blocks, interpret=interpret, vmem_limit=vmem_limit,
            vocab_parallel=vocab_parallel)
        return logp[:n], ent[:n]
    n_loc = n // _size(plan.mesh, plan.tokens) if plan.mesh is not None else n
    v_loc = vocab // _size(plan.mesh, (plan.vocab,) if plan.vocab else ()) if plan.mesh is not None else vocab
    width = max(hi - lo for lo, hi in plan.slices) if plan.slices else v_loc  # the kernels see one slice
    bh = pallas_tpu.hidden_tile(hid, blocks.block_h)
    tiles = lambda bn, bv: (pallas_tpu.token_tile(n_loc, bn), pallas_tpu.vocab_tile(width, bv))
    # The backward accumulators are f32 [bn, H] (dh) and [H, bv] (dw): wide heads get
    # smaller tiles so that one stays within a third of the VMEM limit.
    budget = vmem_limit // 3
    dh_bn = pallas_tpu.fit_tile(blocks.block_n_bwd, 4 * hid, budget, 8)
    dw_bn, dw_bv = blocks.dw
    dw_bv = pallas_tpu.fit_tile(dw_bv, 4 * hid, budget, 128)
    common_kw = (("inv_temp", inv_temp), ("with_entropy", with_entropy), ("vmem_limit", vmem_limit),
                 ("interpret", interpret))
    cfg = Config(
        fwd_items=common_kw + (("tiles", tiles(blocks.block_n, blocks.block_v) + (bh,)),),
        bwd_items=common_kw + (("dh_tiles", tiles(dh_bn, blocks.block_v_bwd)),
                               ("dw_tiles", tiles(dw_bn, dw_bv)), ("bh", bh)),
        with_entropy=with_entropy, plan=plan if plan.slices else dataclasses.replace(plan, slices=((0, v_loc),)),
        w_dtype=jnp.dtype(w.dtype), v_local=v_loc)
    return _logprobs(h, w, labels, cfg)
