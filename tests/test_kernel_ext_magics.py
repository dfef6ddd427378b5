"""``%load_ext nebula`` in an IPython InteractiveShell: %%remote in every mode, %nebula, reprs, progress text."""
from __future__ import annotations

import sys
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import nebula
import nebula.state

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def shell(cluster):
    ip = InteractiveShell.instance()
    ip.run_cell("%load_ext nebula\nimport nebula", store_history=True)
    yield ip
    from nebula.kernel_ext import unload_ipython_extension
    unload_ipython_extension(ip)
    ip.reset(new_session=False)


def run(ip, source: str):
    """Run a cell; returns its displayed value, raises what the cell raised."""
    result = ip.run_cell(source, store_history=True)
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        raise error
    return result.result


# ---- default mode ---------------------------------------------------------------------------------

def test_cell_ships_what_it_reads_and_binds_what_it_assigns(shell, capsys):
    run(shell, "a = 3\ndef sq(v):\n    return v * v")
    value = run(shell, "%%remote\nimport os\nb = sq(a) + 1\n_private = 1\nprint('pid', os.getpid())\nb * 10")
    assert value == 100 and shell.user_ns["b"] == 10
    assert "_private" not in shell.user_ns and "os" not in shell.user_ns
    assert "(remote_cell pid=" in capsys.readouterr().out


def test_cell_runs_in_a_worker_process(shell):
    import os
    assert run(shell, "%%remote\nimport os\nos.getpid()") != os.getpid()


def test_names_the_cell_does_not_read_are_not_shipped(shell):
    run(shell, "import threading\nguard = threading.Lock()")
    assert run(shell, "%%remote\nguard = 'rebound first'\nguard") == "rebound first"
    assert run(shell, "%%remote\n21 * 2") == 42


def test_unpicklable_value_fails_the_cell_before_it_runs(shell, tmp_path):
    marker = tmp_path / "ran"
    run(shell, f"import threading\nguard = threading.Lock()\nmarker = {str(marker)!r}")
    from nebula.kernel_ext.shipping import CellShippingError
    with pytest.raises(CellShippingError, match="'guard'"):
        run(shell, "%%remote\nopen(marker, 'w').close()\nprint(guard)")
    assert not marker.exists()


def test_object_refs_are_resolved(shell):
    run(shell, "r = nebula.put(41)")
    assert run(shell, "%%remote\ny = r + 1\ny") == 42 and shell.user_ns["y"] == 42


def test_semicolon_hides_the_last_value(shell):
    assert run(shell, "%%remote\nq = 5\nq;") is None and shell.user_ns["q"] == 5


def test_value_that_cannot_come_back_stays_with_a_note(shell, capsys):
    run(shell, "%%remote\nimport threading\nkept_lock = threading.Lock()\nn_done = 1")
    assert "kept_lock" not in shell.user_ns and shell.user_ns["n_done"] == 1
    assert "kept_lock stays on the cluster" in capsys.readouterr().err


def test_remote_exception_shows_the_remote_traceback(shell):
    with pytest.raises(ZeroDivisionError) as info:
        run(shell, "%%remote\nx = 1\nx / 0")
    lines = "\n".join(info.value._render_traceback_())
    assert "<remote In[" in lines and "x / 0" in lines and "ZeroDivisionError" in lines
    assert "kernel_ext" not in lines and "worker.py" not in lines


@pytest.mark.parametrize("cell", ["%time v = 1", "v = 1\n!ls", "files = !ls"])
def test_line_magics_and_shell_escapes_are_refused(shell, cell):
    from nebula.kernel_ext.remote_magic import RemoteCellSyntaxError
    with pytest.raises(RemoteCellSyntaxError, match="IPython syntax"):
        run(shell, "%%remote\n" + cell)


def test_python_syntax_errors_point_at_the_line(shell):
    from nebula.kernel_ext.remote_magic import RemoteCellSyntaxError
    with pytest.raises(RemoteCellSyntaxError, match="SyntaxError") as info:
        run(shell, "%%remote\nok = 1\nbad = (1,")
    assert "line 2" in str(info.value)


def test_local_modules_ship_by_value(shell, tmp_path):
    (tmp_path / "nbhelpers.py").write_text("def answer():\n    return 'notebook version'\n")
    run(shell, f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport nbhelpers")
    (tmp_path / "nbhelpers.py").write_text("def answer():\n    return 'edited on disk'\n")
    assert run(shell, "%%remote\nnbhelpers.answer()") == "notebook version"


def test_big_values_go_through_the_store_with_a_note(shell, capsys, monkeypatch):
    from nebula.kernel_ext import shipping
    monkeypatch.setattr(shipping, "BIG_VALUE", 1024)
    run(shell, "big = bytes(4096)")
    assert run(shell, "%%remote\nlen(big)") == 4096
    assert "big (0 MB) goes to the cluster through the object store" in capsys.readouterr().err


def test_timeout_cancels_the_cell(shell):
    from nebula.kernel_ext.remote_magic import RemoteCellTimeout
    start = time.monotonic()
    with pytest.raises(RemoteCellTimeout, match="within 0.5 s"):
        run(shell, "%%remote --timeout 0.5\nimport time\ntime.sleep(30)")
    assert time.monotonic() - start < 20


def test_node_option_takes_an_id_prefix(shell, cluster):
    node = cluster["node_id"]
    assert run(shell, f"%%remote --node {node[:6]}\nimport nebula\nnebula.get_runtime_context().get_node_id()") == node
    with pytest.raises(UsageError, match="no alive node"):
        run(shell, "%%remote --node zzzz\n1")


@pytest.mark.parametrize("line", ["--push a", "--detached", "--all-nodes --actor x", "--no-block --timeout 3",
                                  "--no-block --all-nodes", "-o 1bad", "--resources notjson"])
def test_option_conflicts_are_usage_errors(shell, line):
    with pytest.raises(UsageError):
        run(shell, f"%%remote {line}\n1")


# ---- --no-block, --actor, --all-nodes ---------------------------------------------------------------

def test_no_block_returns_a_ref_to_the_bound_names(shell):
    start = time.monotonic()
    assert run(shell, "%%remote --no-block\nimport time\ntime.sleep(1)\nz = 7\nz") is None
    assert time.monotonic() - start < 1
    ref = shell.user_ns["_remote"]
    assert isinstance(ref, nebula.ObjectRef) and nebula.get(ref) == {"z": 7}
    run(shell, "%%remote --no-block -o later\nw = 1")
    assert nebula.get(shell.user_ns["later"]) == {"w": 1}


def test_actor_keeps_its_namespace_and_sends_only_what_is_pulled(shell):
    run(shell, "seed = 10")
    assert run(shell, "%%remote --actor acc --push seed\ntotal = seed * 2\nhidden_in_actor = 1") is None
    assert "total" not in shell.user_ns
    assert run(shell, "%%remote --actor acc --pull total\ntotal += 1\ntotal") == 21
    assert shell.user_ns["total"] == 21 and "hidden_in_actor" not in shell.user_ns
    actor = next(a for a in nebula.state.snapshot().actors if a["name"] == "acc")
    assert actor["state"] == "ALIVE" and not actor["detached"]


def test_actor_reports_missing_pulls_and_pushes(shell):
    from nebula.kernel_ext.remote_magic import RemoteCellError
    with pytest.raises(RemoteCellError, match="nope"):
        run(shell, "%%remote --actor acc --pull nope\n1")
    with pytest.raises(UsageError, match="not defined"):
        run(shell, "%%remote --actor acc --push not_in_notebook\n1")


def test_actor_name_taken_by_another_actor_is_refused(shell):
    run(shell, "@nebula.remote\nclass Plain:\n    def ping(self):\n        return 1\n"
               "plain = Plain.options(name='plain_actor', num_cpus=0).remote()")
    with pytest.raises(UsageError, match="not a %%remote namespace"):
        run(shell, "%%remote --actor plain_actor\n1")


def test_detached_actor_is_detached(shell):
    run(shell, "%%remote --actor keeper --detached\nstate = 1")
    actor = next(a for a in nebula.state.snapshot().actors if a["name"] == "keeper")
    assert actor["detached"]
    nebula.kill(nebula.get_actor("keeper"))


def test_all_nodes_binds_only_the_output_name(shell, cluster, capsys):
    assert run(shell, "%%remote --all-nodes -o per_node\nmark = 'here'\nmark") is None
    assert shell.user_ns["per_node"] == {cluster["node_id"]: {"mark": "here"}}
    assert "mark" not in shell.user_ns
    printed = capsys.readouterr().out
    assert f"── node {cluster['node_id'][:12]} ──" in printed and "Out: 'here'" in printed


# ---- %nebula, reprs, progress ------------------------------------------------------------------------

def test_status_names_what_holds_the_kernels_objects(shell):
    run(shell, "held = nebula.put(bytes(300_000))")
    run(shell, "held")  # Out[n] now holds the ref too
    status = run(shell, "%nebula status")
    html = status._repr_html_()
    assert "held by" in html and "Out[" in html and "held" in html and "KiB" in html
    assert "node" in repr(status)


def test_timeline_writes_a_trace(shell, tmp_path, capsys):
    target = tmp_path / "trace.json"
    run(shell, f"%nebula timeline {target}")
    assert target.exists() and "wrote" in capsys.readouterr().out


def test_dashboard_shows_the_widgets_dashboard(shell, monkeypatch):
    notebook_views = pytest.importorskip("nebula.widgets.notebook")

    class FakeDashboard:
        pass
    monkeypatch.setattr(notebook_views, "Dashboard", FakeDashboard)
    assert isinstance(run(shell, "%nebula dashboard"), FakeDashboard)


def test_unknown_nebula_command_lists_the_commands(shell):
    with pytest.raises(UsageError, match="timeline FILE"):
        run(shell, "%nebula frobnicate")


def test_reprs_describe_refs_actors_and_the_cluster(shell, cluster):
    formatter = shell.display_formatter
    small, large = nebula.put(1), nebula.put(bytes(300_000))
    assert "inline in this kernel" in formatter.format(small)[0]["text/html"]
    html = formatter.format(large)[0]["text/html"]
    assert large.hex()[:12] in html and "object store" in html and "KiB" in html
    actor_html = formatter.format(nebula.get_actor("acc"))[0]["text/html"]
    assert "CellActor" in actor_html and "ALIVE" in actor_html
    info_html = formatter.format(nebula.init())[0]["text/html"]
    assert cluster["node_id"][:8] in info_html and "CPU 2" in info_html


def test_task_errors_render_their_remote_traceback(shell, capsys):
    run(shell, "@nebula.remote\ndef boom():\n    raise ValueError('from the task')")
    shell.run_cell("nebula.get(boom.remote())", store_history=True)
    out = capsys.readouterr().out
    assert "ValueError: from the task" in out and "boom" in out and "session.py" not in out


def test_get_on_many_refs_shows_a_text_progress_bar(shell, capsys):
    run(shell, "@nebula.remote\ndef nap(t):\n    import time\n    time.sleep(t)\n    return t")
    assert run(shell, "nebula.get([nap.remote(0.5) for _ in range(6)])") == [0.5] * 6
    err = capsys.readouterr().err
    assert "nebula.get [" in err and "6/6 ready" in err


def test_nebula_shutdown_and_init(shell):
    run(shell, "%nebula shutdown")
    assert not nebula.is_initialized()
    info = run(shell, "%nebula init local")
    assert nebula.is_initialized() and info["embedded"]
    nebula.shutdown()
    nebula.init(num_cpus=2, object_store_memory="512MiB")
    assert sys.modules["nebula"].is_initialized()
