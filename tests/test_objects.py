"""The object store on a real cluster: round trips, zero-copy reads, freeing, pinning, spilling."""
from __future__ import annotations

import gc
import pickle
import time

import numpy as np
import pytest

import nebula
from clusters import private_cluster
from nebula.exceptions import ObjectStoreFullError
from polling import wait_until

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


def store_object_ids() -> set:
    return {o["object_id"] for o in nebula.state.snapshot().objects}


def store_stats() -> dict:
    return dict(nebula.state.snapshot().nodes[0]["store"])


class Blob:
    """A non-numpy value that hands its bytes to pickle 5 out of band."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return Blob, (pickle.PickleBuffer(self.data),)


# ---- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    0, -1.5, "text", b"\x00bytes", None, True, [1, [2, [3]]], {"a": (1, 2), 3: {4}},
    b"x" * (300 * 1024),  # above the inline limit: goes through the store
    np.arange(10), np.zeros((0, 3)), np.array(["a", "bc"]),
], ids=lambda v: type(v).__name__)
def test_put_get_round_trip(cluster, value):
    got = nebula.get(nebula.put(value))
    if isinstance(value, np.ndarray):
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value)
    else:
        assert got == value


def test_round_trip_of_large_structured_values(cluster):
    value = {"matrix": np.random.default_rng(0).random((500, 300)), "ints": np.arange(100_000, dtype=np.int32),
             "fortran": np.asfortranarray(np.arange(60_000.0).reshape(200, 300)), "label": "big"}
    got = nebula.get(nebula.put(value))
    assert got["label"] == "big"
    for key in ("matrix", "ints", "fortran"):
        assert got[key].dtype == value[key].dtype and np.array_equal(got[key], value[key])
    assert got["fortran"].flags.f_contiguous


def test_put_of_an_object_ref_is_refused(cluster):
    ref = nebula.put(1)
    with pytest.raises(TypeError, match="ObjectRef"):
        nebula.put(ref)
    assert nebula.get(nebula.put([ref]))[0] == ref


def test_numpy_get_is_a_read_only_zero_copy_view(cluster):
    ref = nebula.put(np.arange(1_000_000, dtype=np.float64))
    first, second = nebula.get(ref), nebula.get(ref)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 1.0
    assert np.shares_memory(first, second)
    assert first[123_456] == 123_456.0


def test_task_result_arrays_are_zero_copy_too(cluster):
    @nebula.remote
    def make():
        return np.full(500_000, 3, dtype=np.int64)

    ref = make.remote()
    first, second = nebula.get(ref), nebula.get(ref)
    assert np.shares_memory(first, second) and not first.flags.writeable
    assert int(first.sum()) == 1_500_000


def test_pickle5_buffers_of_a_non_numpy_object(cluster):
    payload = bytes(range(256)) * 4096  # 1 MiB
    ref = nebula.put(Blob(bytearray(payload)))
    first, second = nebula.get(ref), nebula.get(ref)
    assert isinstance(first, Blob)
    assert bytes(first.data) == payload
    view = np.asarray(first.data)
    assert not view.flags.writeable
    assert np.shares_memory(view, np.asarray(second.data))


# ---- freeing -----------------------------------------------------------------------------

def test_put_object_is_freed_when_the_last_ref_goes(cluster):
    used_before = store_stats()["used"]
    ref = nebula.put(np.ones(4 * MiB, dtype=np.uint8))
    copy = pickle.loads(pickle.dumps(ref))  # a second handle in this process
    object_id = ref.hex()
    assert object_id in store_object_ids()
    del ref
    gc.collect()
    time.sleep(0.3)
    assert object_id in store_object_ids()  # `copy` still holds it
    del copy
    gc.collect()
    assert wait_until(lambda: object_id not in store_object_ids())
    assert wait_until(lambda: store_stats()["used"] <= used_before)


def test_task_result_in_the_store_is_freed_when_the_last_ref_goes(cluster):
    @nebula.remote
    def make():
        return np.ones(2 * MiB, dtype=np.uint8)

    ref = make.remote()
    assert int(nebula.get(ref).sum()) == 2 * MiB
    object_id = ref.hex()
    assert object_id in store_object_ids()
    del ref
    gc.collect()
    assert wait_until(lambda: object_id not in store_object_ids())


def test_an_object_inside_another_lives_as_long_as_its_container(cluster):
    inner = nebula.put(np.ones(MiB, dtype=np.uint8))
    inner_id = inner.hex()
    outer = nebula.put([inner, np.zeros(MiB, dtype=np.uint8)])
    outer_id = outer.hex()
    del inner
    gc.collect()
    time.sleep(0.3)
    assert inner_id in store_object_ids()
    (got_inner, _zeros) = nebula.get(outer)
    assert int(nebula.get(got_inner).sum()) == MiB
    del got_inner, _zeros, outer
    gc.collect()
    assert wait_until(lambda: not {inner_id, outer_id} & store_object_ids())


# ---- a small store: pinning, spilling, a full store (last: replaces the module's cluster) -

@pytest.fixture(scope="module")
def small_store():
    yield from private_cluster(num_cpus=2, object_store_memory="64MiB")


def test_a_viewed_array_stays_intact_while_the_store_fills_past_capacity_twice(small_store):
    rng = np.random.default_rng(1)
    expected = rng.integers(0, 2**63, size=MiB, dtype=np.int64)  # 8 MiB
    view = nebula.get(nebula.put(expected))  # the ref is dropped at once; only the view remains
    gc.collect()
    for round_ in range(2):
        kept = [nebula.put(np.full(MiB, round_ * 100 + i, dtype=np.int64)) for i in range(9)]  # 72 MiB
        del kept
        for i in range(9):
            nebula.put(np.full(MiB, -i, dtype=np.int64))  # each dropped at once, its space reused
    assert np.array_equal(view, expected)


def test_spilled_objects_are_restored_on_demand(small_store):
    refs = [nebula.put(np.full(MiB, i, dtype=np.int64)) for i in range(14)]  # 112 MiB into 64 MiB
    stats = store_stats()
    assert stats["spilled"] > 0 and stats["spilled_bytes"] > 0
    assert any(o["spilled"] for o in nebula.state.snapshot().objects)
    for i, ref in enumerate(refs):
        value = nebula.get(ref)
        assert value.shape == (MiB,) and value[0] == i and value[-1] == i and int(value.sum()) == i * MiB
        del value
    del refs, ref
    gc.collect()
    assert wait_until(lambda: store_stats()["spilled_bytes"] == 0 and store_stats()["objects"] == 0)


def test_task_results_spill_and_restore(small_store):
    @nebula.remote
    def make(i):
        return np.full(MiB, i, dtype=np.int64)

    refs = [make.remote(i) for i in range(12)]
    nebula.wait(refs, num_returns=len(refs), timeout=30)
    assert [int(nebula.get(r)[0]) for r in refs] == list(range(12))


def test_an_object_larger_than_the_store_says_what_to_change(small_store):
    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        nebula.put(np.zeros(100 * MiB, dtype=np.uint8))
    assert nebula.get(nebula.put("still works")) == "still works"
    assert int(nebula.get(nebula.put(np.ones(MiB, dtype=np.uint8))).sum()) == MiB


def test_views_that_fill_the_store_make_further_puts_fail_cleanly(small_store):
    views = [nebula.get(nebula.put(np.full(MiB, i, dtype=np.int64))) for i in range(7)]  # 56 MiB pinned
    with pytest.raises(ObjectStoreFullError, match="zero-copy"):
        nebula.put(np.zeros(16 * MiB, dtype=np.uint8))
    assert [int(v[0]) for v in views] == list(range(7))
    del views
    gc.collect()
    assert wait_until(lambda: store_stats()["pinned"] == 0)
    assert int(nebula.get(nebula.put(np.ones(16 * MiB, dtype=np.uint8))).sum()) == 16 * MiB
