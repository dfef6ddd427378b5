"""Pure parts of nebula.kernel_ext: cell analysis, the cell runner, shipping checks, small helpers."""
from __future__ import annotations

import threading

import pytest

from nebula.kernel_ext.cell_analysis import IPythonSyntaxInCell, analyse_cell
from nebula.kernel_ext.cell_runner import CellActor, CellCode, UnpicklableValue, run_cell
from nebula.kernel_ext.server_extension import mounted
from nebula.kernel_ext.shipping import CellShippingError, pickled_size, ship_names
from nebula.kernel_ext.status import holders_of_refs

pytestmark = pytest.mark.timeout(30)


def reads(source: str) -> set:
    return set(analyse_cell(source).reads)


def test_reads_names_used_before_the_cell_binds_them():
    assert reads("y = x + 1\nz = y * w") == {"x", "w"}
    assert reads("x = x + 1") == {"x"}
    assert reads("total += step") == {"total", "step"}


def test_a_binding_inside_a_branch_or_loop_does_not_outlive_it():
    assert reads("if c:\n    v = 1\nprint(v)") == {"c", "print", "v"}
    assert reads("for f in files:\n    f.read()\nprint(f)") == {"files", "print", "f"}
    assert reads("for f in files:\n    f.read()") == {"files"}
    assert reads("try:\n    a = 1\nexcept E as e:\n    print(e)") == {"E", "print"}


def test_function_bodies_count_every_global_they_read():
    assert reads("def f(a):\n    return a + scale\nr = f(2)") == {"scale"}
    assert reads("g = lambda q=dflt: q * k") == {"dflt", "k"}
    assert reads("class K(Base):\n    size = default_size") == {"Base", "default_size"}


def test_comprehension_variables_are_not_reads():
    assert reads("out = [fn(x) for x in data if x > lim]") == {"fn", "data", "lim"}


def test_with_and_imports_bind():
    assert reads("import numpy as np\nwith open(p) as fh:\n    t = fh.read() + np.x") == {"open", "p"}


def test_binds_skip_imports_and_private_names():
    analysis = analyse_cell("import os\nfrom m import k\n_tmp = 1\na = 2\ndef f():\n    global g\n    g = 3\n"
                            "class C: pass\nfor i in range(2): pass")
    assert set(analysis.binds) == {"a", "f", "g", "C", "i"}


def test_last_expression_is_detected():
    assert analyse_cell("x = 1\nx + 1").ends_with_expression
    assert not analyse_cell("x = 1").ends_with_expression


@pytest.mark.parametrize("source", ["%time x = 1", "x = 1\n!ls -l", "files = !ls", "  %matplotlib inline"])
def test_ipython_syntax_is_refused_with_a_clear_error(source):
    with pytest.raises(IPythonSyntaxInCell, match="IPython syntax"):
        analyse_cell(source)


def test_plain_syntax_errors_stay_syntax_errors():
    with pytest.raises(SyntaxError) as info:
        analyse_cell("x = (1,")
    assert not isinstance(info.value, IPythonSyntaxInCell)


def test_run_cell_returns_bound_names_and_last_value():
    code = CellCode("import math\nb = a * 2\n_p = 1\nb + 1", "<t>", ("a",), ("b",))
    result = run_cell(code, 20)
    assert result.values == {"b": 40} and result.last == 41 and result.has_last


def test_run_cell_reports_what_cannot_travel_back():
    code = CellCode("import threading\nlk = threading.Lock()\nn = 1\nlk", "<t>", (), ("lk", "n"))
    result = run_cell(code)
    assert result.values == {"n": 1} and "lk" in result.not_sent
    assert isinstance(result.last, UnpicklableValue) and "lock" in repr(result.last)


def test_actor_namespace_persists_and_reports_missing_pulls():
    actor = CellActor()
    actor.run_cell(CellCode("acc = start", "<t>", ("start",)), 5)
    result = actor.run_cell(CellCode("acc += 1", "<t>", (), ("acc", "nope"), require_send_back=True))
    assert result.values == {"acc": 6} and result.missing == ("nope",)


def test_remote_traceback_shows_the_cell_source():
    import traceback
    with pytest.raises(ZeroDivisionError) as info:
        run_cell(CellCode("x = 1\nx / 0", "<remote In[7]>"))
    text = "".join(traceback.format_exception(info.value))
    assert 'File "<remote In[7]>", line 2' in text and "x / 0" in text


def test_unpicklable_value_fails_naming_the_variable():
    with pytest.raises(CellShippingError, match="'guard'"):
        ship_names({"guard": threading.Lock()}, {"guard"}, {})


def test_shipping_skips_ipython_helpers_and_unknown_names():
    helper = object()
    shipment = ship_names({"open": helper, "a": 1}, {"open", "a", "len"}, {"open": helper})
    assert shipment.names == ("a",) and shipment.values == (1,)


def test_pickled_size_counts_out_of_band_buffers():
    import numpy as np
    assert pickled_size("arr", np.zeros(1_000_000)) >= 8_000_000


def test_holders_name_variables_and_output_cache():
    import nebula
    ref = nebula.ObjectRef.__new__(nebula.ObjectRef)
    ref._id, ref._owner, ref._session = "ab" * 14, "", None
    found = holders_of_refs({"r": ref, "many": [ref], "Out": {3: ref}, "_": ref, "other": object()}, {})
    assert found == {"ab" * 14: ["r", "many", "Out[3]"]}


def test_dashboard_handlers_are_mounted_under_the_dashboard_path():
    handlers = [("/jh/nebula/dashboard/ws", "A"), ("/static/(.*)", "B", {"k": 1}), ("", "C")]
    assert mounted(handlers, "/jh/nebula/dashboard") == [
        ("/jh/nebula/dashboard/ws", "A"), ("/jh/nebula/dashboard/static/(.*)", "B", {"k": 1}),
        ("/jh/nebula/dashboard", "C")]
