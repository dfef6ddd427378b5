"""Remote functions on a real embedded cluster: arguments, returns, resources, environments, refs."""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
import time

import numpy as np
import pytest

import nebula
from nebula.exceptions import GetTimeoutError, TaskCancelledError, TaskError

pytestmark = pytest.mark.timeout(60)


@nebula.remote
def add(a, b):
    return a + b


@nebula.remote
def identity(x):
    return x


@nebula.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


# ---- calling and returning ---------------------------------------------------------------

def test_remote_function_returns_its_value(cluster):
    assert nebula.get(add.remote(1, 2)) == 3
    assert nebula.get([add.remote(i, i) for i in range(10)]) == [2 * i for i in range(10)]


def test_keyword_arguments_and_defaults(cluster):
    @nebula.remote
    def f(a, b=10, *, c=100):
        return a + b + c

    assert nebula.get(f.remote(1)) == 111
    assert nebula.get(f.remote(1, c=0, b=2)) == 3


def test_calling_a_remote_function_directly_says_to_use_remote(cluster):
    with pytest.raises(TypeError, match=r"add\.remote"):
        add(1, 2)


def test_options_override_without_changing_the_original(cluster):
    @nebula.remote(num_returns=2)
    def pair():
        return 1, 2

    a, b = pair.remote()
    assert nebula.get([a, b]) == [1, 2]
    single = pair.options(num_returns=1)
    assert nebula.get(single.remote()) == (1, 2)
    assert len(pair.remote()) == 2  # the original keeps num_returns=2
    named = add.options(name="custom_add")
    ref = named.remote(2, 3)
    assert nebula.get(ref) == 5
    names = {t["name"] for t in nebula.state.snapshot().tasks if t["task_id"] == ref.task_id()}
    assert names == {"custom_add"}


def test_options_rejects_unknown_options(cluster):
    with pytest.raises(TypeError, match="num_cpu"):
        add.options(num_cpu=1)


def test_num_returns(cluster):
    @nebula.remote(num_returns=3)
    def three():
        return "a", "b", "c"

    @nebula.remote(num_returns=0)
    def nothing():
        return None

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert nebula.get(refs) == ["a", "b", "c"]
    assert nothing.remote() is None


def test_num_returns_mismatch_is_a_task_error(cluster):
    @nebula.remote(num_returns=2)
    def wrong():
        return 1, 2, 3

    a, _b = wrong.remote()
    with pytest.raises(TaskError, match="num_returns=2"):
        nebula.get(a)


# ---- references as arguments -------------------------------------------------------------

def test_top_level_refs_are_resolved(cluster):
    ref = nebula.put(41)
    assert nebula.get(add.remote(ref, 1)) == 42
    assert nebula.get(add.remote(a=add.remote(1, 1), b=ref)) == 43


def test_nested_refs_stay_refs(cluster):
    @nebula.remote
    def inspect(container):
        inner = container["refs"][0]
        return type(inner).__name__, nebula.get(inner)

    ref = nebula.put("payload")
    assert nebula.get(inspect.remote({"refs": [ref]})) == ("ObjectRef", "payload")


def test_nested_ref_keeps_its_object_alive(cluster):
    @nebula.remote
    def read_later(refs):
        time.sleep(1.0)
        return int(nebula.get(refs[0]).sum())

    array = np.arange(200_000, dtype=np.int64)  # large: lives in the shared store
    ref = nebula.put(array)
    expected = int(array.sum())
    out = read_later.remote([ref])
    del ref  # the driver's last handle goes; the ref inside the pending argument must keep it
    assert nebula.get(out) == expected


def test_nested_ref_of_a_pending_task_result(cluster):
    @nebula.remote
    def total(refs):
        return sum(nebula.get(refs))

    parts = [sleep_then.remote(0.2, i) for i in range(3)]
    assert nebula.get(total.remote(parts)) == 3


def test_returned_refs_stay_usable(cluster):
    @nebula.remote
    def make():
        return [nebula.put(np.full(50_000, 7, dtype=np.int64)), nebula.put("small")]

    big, small = nebula.get(make.remote())
    assert isinstance(big, nebula.ObjectRef)
    assert nebula.get(small) == "small"
    assert int(nebula.get(big).sum()) == 7 * 50_000


def test_large_arguments_travel_through_the_store(cluster):
    @nebula.remote
    def stored_sizes(array):
        sizes = [o["size"] for o in nebula.state.snapshot().objects]
        return int(array.sum()), max(sizes, default=0)

    array = np.ones(1_000_000, dtype=np.uint8)  # 1 MB, far above the 100 KB inline limit
    total, largest = nebula.get(stored_sizes.remote(array))
    assert total == 1_000_000
    assert largest >= 1_000_000


def test_small_arguments_stay_inline(cluster):
    before = {o["object_id"] for o in nebula.state.snapshot().objects}
    assert nebula.get(identity.remote(b"x" * 1000)) == b"x" * 1000
    assert not {o["object_id"] for o in nebula.state.snapshot().objects} - before


def test_unpicklable_argument_fails_at_remote_naming_it(cluster):
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 1 of add\(\).*lock"):
        add.remote(1, lock)
    with pytest.raises(TypeError, match=r"keyword argument 'b' of add\(\)"):
        add.remote(a=1, b=lock)


# ---- tasks inside tasks ------------------------------------------------------------------

@nebula.remote
def depth(n):
    if n == 0:
        return 0
    return 1 + nebula.get(depth.remote(n - 1))


def test_recursive_tasks_with_get_do_not_deadlock(cluster):
    assert nebula.get(depth.remote(5), timeout=40) == 5


def test_task_fans_out_and_gathers(cluster):
    @nebula.remote
    def fan(n):
        return sum(nebula.get([add.remote(i, 0) for i in range(n)]))

    assert nebula.get([fan.remote(5), fan.remote(6)], timeout=40) == [10, 15]


# ---- resources ---------------------------------------------------------------------------

def test_task_with_two_cpus_runs_alone(cluster):
    @nebula.remote(num_cpus=2)
    def busy():
        return nebula.available_resources().get("CPU", 0.0)

    assert nebula.get(busy.remote(), timeout=20) == 0.0
    assert nebula.get(busy.options(num_cpus=1).remote(), timeout=20) <= 1.0


def test_infeasible_request_stays_pending_warns_and_can_be_cancelled(cluster, caplog):
    caplog.set_level(logging.WARNING, logger="nebula")
    unicorn = add.options(resources={"unicorn": 1})
    refs = [unicorn.remote(1, 2) for _ in range(20)]  # the owner asks for several leases at once
    ref = refs[0]
    ready, not_ready = nebula.wait([ref], timeout=1.0)
    assert ready == [] and not_ready == [ref]
    deadline = time.monotonic() + 10
    while not any("unicorn" in r.getMessage() and "no node" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no warning about the infeasible request"
        time.sleep(0.05)
    assert nebula.wait([ref], timeout=0.5)[0] == []  # still pending
    warnings = [r for r in caplog.records if "unicorn" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one warning, not one per task
    for pending in refs:
        nebula.cancel(pending)
    with pytest.raises(TaskCancelledError):
        nebula.get(ref, timeout=10)
    assert nebula.get(add.remote(1, 2), timeout=10) == 3  # the cluster is unaffected


# ---- runtime environments ----------------------------------------------------------------

def test_runtime_env_env_vars(cluster):
    @nebula.remote(runtime_env={"env_vars": {"NEBULA_TEST_VAR": "hello"}})
    def read_var():
        return os.environ.get("NEBULA_TEST_VAR")

    assert nebula.get(read_var.remote(), timeout=20) == "hello"
    assert nebula.get(read_var.options(runtime_env=None).remote(), timeout=20) is None


def test_runtime_env_working_dir(cluster, tmp_path):
    (tmp_path / "nebula_wd_module.py").write_text("VALUE = 'from the working dir'\n")
    (tmp_path / "data.txt").write_text("relative file\n")

    @nebula.remote(runtime_env={"working_dir": str(tmp_path)})
    def use_working_dir():
        import nebula_wd_module
        with open("data.txt") as f:
            return nebula_wd_module.VALUE, os.getcwd(), f.read().strip()

    value, cwd, text = nebula.get(use_working_dir.remote(), timeout=20)
    assert value == "from the working dir"
    assert os.path.samefile(cwd, tmp_path)
    assert text == "relative file"


def test_runtime_env_pip_is_not_implemented(cluster):
    with pytest.raises(NotImplementedError, match="pip"):
        add.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(NotImplementedError, match="pip"):
        nebula.remote(runtime_env={"pip": ["requests"]})(lambda: 1)


def test_workers_limit_native_thread_pools(cluster):
    @nebula.remote
    def threads():
        return os.environ.get("OMP_NUM_THREADS")

    assert nebula.get(threads.remote()) == os.environ.get("OMP_NUM_THREADS", "1")


# ---- runtime context ---------------------------------------------------------------------

def test_runtime_context_ids(cluster):
    driver = nebula.get_runtime_context()
    assert driver.get_task_id() is None
    assert driver.get_node_id() == cluster["node_id"]
    assert driver.get_job_id() == cluster["job_id"]

    @nebula.remote
    def ids():
        ctx = nebula.get_runtime_context()
        return ctx.get_task_id(), ctx.get_node_id(), ctx.get_job_id(), ctx.get_actor_id()

    ref = ids.remote()
    task_id, node_id, job_id, actor_id = nebula.get(ref)
    assert task_id == ref.task_id()
    assert node_id == cluster["node_id"]
    assert job_id == cluster["job_id"]
    assert actor_id is None


def test_assigned_resources_are_what_the_task_or_actor_was_granted(cluster):
    assert nebula.get_runtime_context().get_assigned_resources() == {}  # the driver holds none

    @nebula.remote
    def granted():
        return nebula.get_runtime_context().get_assigned_resources()

    @nebula.remote(num_cpus=0.5)
    class Holder:
        def granted(self):
            return nebula.get_runtime_context().get_assigned_resources()

    assert nebula.get(granted.remote()) == {"CPU": 1.0}
    assert nebula.get(granted.options(num_cpus=2).remote()) == {"CPU": 2.0}
    assert nebula.get(Holder.remote().granted.remote()) == {"CPU": 0.5}


# ---- ObjectRef ---------------------------------------------------------------------------

def test_object_ref_is_hashable_and_comparable(cluster):
    ref = nebula.put(1)
    same = pickle.loads(pickle.dumps(ref))
    assert same == ref and hash(same) == hash(ref)
    assert len({ref, same, nebula.put(1)}) == 2


def test_object_ref_pickles_and_stays_gettable(cluster):
    ref = add.remote(2, 2)
    assert nebula.get(pickle.loads(pickle.dumps(ref))) == 4


def test_await_object_ref_in_asyncio(cluster):
    async def main():
        first = await add.remote(1, 1)
        both = await asyncio.gather(add.remote(2, 2), sleep_then.remote(0.1, "late"))
        return first, both

    assert asyncio.run(asyncio.wait_for(main(), 20)) == (2, [4, "late"])


def test_await_object_ref_raises_task_errors(cluster):
    @nebula.remote
    def fail():
        raise ValueError("boom")

    async def main():
        await fail.remote()

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(asyncio.wait_for(main(), 20))


def test_object_ref_future(cluster):
    fut = add.remote(20, 22).future()
    assert fut.result(timeout=20) == 42


# ---- wait and get ------------------------------------------------------------------------

def test_wait_keeps_input_order(cluster):
    slow = sleep_then.remote(1.5, "slow")
    fast = [identity.remote(i) for i in range(3)]
    refs = [slow] + fast
    ready, not_ready = nebula.wait(refs, num_returns=3, timeout=10)
    assert ready == fast
    assert not_ready == [slow]
    ready, not_ready = nebula.wait(refs, num_returns=4, timeout=10)
    assert ready == refs and not_ready == []


def test_wait_timeout_returns_what_is_ready(cluster):
    slow = sleep_then.remote(5, "slow")
    done = nebula.put("done")
    started = time.monotonic()
    ready, not_ready = nebula.wait([slow, done], num_returns=2, timeout=0.5)
    elapsed = time.monotonic() - started
    assert ready == [done] and not_ready == [slow]
    assert 0.4 <= elapsed < 4  # it waited for the timeout, not for the task
    ready, not_ready = nebula.wait([slow], timeout=0)
    assert ready == [] and not_ready == [slow]
    nebula.cancel(slow)


def test_wait_rejects_bad_arguments(cluster):
    ref = nebula.put(1)
    with pytest.raises(ValueError, match="duplicate"):
        nebula.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        nebula.wait([ref], num_returns=2)
    with pytest.raises(TypeError):
        nebula.wait(ref)


def test_get_timeout_raises_get_timeout_error(cluster):
    slow = sleep_then.remote(5, "slow")
    with pytest.raises(GetTimeoutError) as info:
        nebula.get(slow, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    nebula.cancel(slow)


def test_get_rejects_non_refs(cluster):
    with pytest.raises(TypeError, match="position 1"):
        nebula.get([nebula.put(1), 2])


# ---- Ray features Nebula does not have ---------------------------------------------------

def test_ray_names_without_nebula_support_raise_not_implemented():
    with pytest.raises(NotImplementedError, match="placement groups"):
        nebula.util.placement_group([{"CPU": 1}])
    with pytest.raises(NotImplementedError, match="generator"):
        nebula.ObjectRefGenerator  # noqa: B018
    with pytest.raises(NotImplementedError, match="dynamic"):
        add.options(num_returns="dynamic")
    with pytest.raises(NotImplementedError, match="placement group"):
        add.options(placement_group="pg")


# ---- a cluster with a custom resource (last: it replaces the module's cluster) -----------

@pytest.fixture
def accelerator_cluster():
    nebula.shutdown()
    yield nebula.init(num_cpus=2, resources={"accel": 1})
    nebula.shutdown()


def test_custom_resource_limits_concurrency(accelerator_cluster):
    @nebula.remote(resources={"accel": 1})
    def hold_accelerator():
        started = time.time()
        time.sleep(0.5)
        return started, time.time()

    assert nebula.cluster_resources()["accel"] == 1
    spans = sorted(nebula.get([hold_accelerator.remote() for _ in range(2)], timeout=30))
    assert spans[1][0] >= spans[0][1]  # one unit of "accel": the two tasks never overlapped
    assert nebula.get(add.options(resources={"accel": 0.5}).remote(1, 1), timeout=30) == 2
