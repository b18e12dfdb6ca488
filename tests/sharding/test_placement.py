"""Row layouts of data batches (sharding/placement.py) on 8 fake CPU devices, one process."""

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from mm_rlhf_jax.sharding import make_mesh, placement


def _mesh(**sizes):
    return make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1, **sizes}, devices=jax.devices()[:8])


def test_rows_split_over_sequence_only_when_they_divide():
    mesh = _mesh(fsdp=2, sequence=4)
    assert placement.row_axes(mesh) == ("data", "fsdp")  # no row count: the batch axes
    assert placement.row_axes(mesh, 16) == ("data", "fsdp", "sequence")
    assert placement.row_axes(mesh, 8) == ("data", "fsdp", "sequence")
    assert placement.row_axes(mesh, 4) == ("data", "fsdp")  # 4 rows cannot split 8 ways
    assert placement.row_axes(_mesh(fsdp=8), 16) == ("data", "fsdp")  # no sequence axis
    assert placement.row_sharding(mesh, 3, 16).spec == P(("data", "fsdp", "sequence"), None, None)


def test_put_batch_places_each_row_once_and_fetch_restores_the_batch():
    mesh = _mesh(fsdp=2, sequence=4)
    batch = {"input_ids": np.arange(16 * 6, dtype=np.int32).reshape(16, 6),
             "pixel_values": np.random.default_rng(0).random((16, 3, 2, 2)).astype(np.float32)}
    placed = placement.put_batch(batch, mesh)
    for k, x in placed.items():
        assert x.sharding.spec[0] == ("data", "fsdp", "sequence"), k
        # each of the 8 devices holds 2 distinct rows: nothing is replicated
        shards = x.addressable_shards
        assert len(shards) == 8 and all(s.data.shape[0] == 2 for s in shards)
        assert sorted(s.index[0].start for s in shards) == list(range(0, 16, 2))
        np.testing.assert_array_equal(placement.fetch(x), batch[k])
    assert placement.global_rows(16, mesh) == 16
    slot = placement.host_slot(16, mesh)
    assert (slot.rows, slot.index, slot.count) == (16, 0, 1)


def test_a_jitted_step_reads_rows_laid_over_sequence_as_the_batch_axes_layout_gives_them():
    mesh = _mesh(fsdp=2, sequence=4)
    x = np.arange(16 * 4, dtype=np.float32).reshape(16, 4)
    fn = jax.jit(lambda b: (b["x"] * 2).sum(axis=1))
    over_seq = fn(placement.put_batch({"x": x}, mesh))
    batch_axes = fn({"x": placement.put_global(x, placement.row_sharding(mesh, 2))})
    np.testing.assert_array_equal(placement.fetch(over_seq), placement.fetch(batch_axes))
    np.testing.assert_array_equal(placement.fetch(over_seq), (x * 2).sum(axis=1))


def test_reshard_moves_to_the_target_layout_and_compiles_once_per_layout():
    """An RL run reshards the actor into the sampling layout every cycle: the second call with an equal
    target layout reuses the first call's executable instead of tracing and compiling again."""
    from jax.sharding import NamedSharding

    mesh = _mesh(fsdp=8)
    x = {"w": np.arange(64 * 4, dtype=np.float32).reshape(64, 4), "b": np.ones((4,), np.float32)}
    placed = jax.device_put(x, {"w": NamedSharding(mesh, P("fsdp", None)), "b": NamedSharding(mesh, P())})
    target = {"w": NamedSharding(mesh, P()), "b": NamedSharding(mesh, P())}  # a fresh but equal tree each cycle
    placement._resharder.cache_clear()
    traces = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _s, **kw: traces.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    for _ in range(3):
        out = placement.reshard(placed, {k: NamedSharding(mesh, s.spec) for k, s in target.items()})
        assert out["w"].sharding.spec == P() and len(out["w"].addressable_shards) == 8
        np.testing.assert_array_equal(placement.fetch(out["w"]), x["w"])
    assert placement._resharder.cache_info().misses == 1 and placement._resharder.cache_info().hits == 2
    assert len(traces) <= 1, traces
