"""Running a %%remote cell on the cluster: ``run_cell`` (a task) and ``CellActor`` (a namespace that persists).

Workers import this module when they unpickle ``run_cell`` or ``CellActor``, so it imports no
notebook library. A cell runs as ``__main__`` code in a dict namespace, like a notebook cell:
its last expression, if any, is evaluated separately so its value can be displayed. The
source is registered with ``linecache``, so remote tracebacks show the cell's lines.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import linecache

import cloudpickle


@dataclasses.dataclass(frozen=True)
class CellCode:
    """One cell as a worker needs it; the values of ``names`` are passed after it, in order."""

    source: str
    filename: str
    names: tuple = ()
    send_back: tuple = ()          # names to return, where the cell left them defined
    require_send_back: bool = False  # a missing ``send_back`` name is reported (--pull)
    return_last: bool = True       # evaluate and return the last expression's value
    result_as_dict: bool = False   # return just {name: value} (what --no-block refs hold)


@dataclasses.dataclass
class CellResult:
    values: dict
    last: object = None
    has_last: bool = False
    not_sent: dict = dataclasses.field(default_factory=dict)  # name -> why it stayed on the cluster
    missing: tuple = ()


class UnpicklableValue:
    """Stands for a last-expression value that cannot travel back: shows its repr."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return self.text


def run_cell(code: CellCode, *values):
    """The task: run ``code`` in a fresh namespace holding the shipped values."""
    return execute(code, fresh_namespace(), values)


class CellActor:
    """An actor whose namespace lives across cells (``%%remote --actor NAME``)."""

    def __init__(self):
        self.namespace = fresh_namespace()

    def run_cell(self, code: CellCode, *values):
        return execute(code, self.namespace, values)


def fresh_namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": builtins}


def execute(code: CellCode, namespace: dict, values) -> CellResult | dict:
    namespace.update(zip(code.names, values))
    body, last = compile_cell(code)
    exec(body, namespace)
    value = eval(last, namespace) if last is not None else None
    result = collect(code, namespace, value, last is not None and code.return_last)
    return result.values if code.result_as_dict else result


def compile_cell(code: CellCode):
    """(body, last expression or None) code objects; the source goes into linecache for tracebacks."""
    linecache.cache[code.filename] = (len(code.source), None, code.source.splitlines(True), code.filename)
    tree = ast.parse(code.source, code.filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), code.filename, "eval")
    return compile(tree, code.filename, "exec"), last


def collect(code: CellCode, namespace: dict, last, has_last: bool) -> CellResult:
    result = CellResult({}, has_last=has_last)
    for name in code.send_back:
        if name not in namespace:
            result.missing += (name,) if code.require_send_back else ()
            continue
        problem = pickling_problem(namespace[name])
        if problem:
            result.not_sent[name] = problem
        else:
            result.values[name] = namespace[name]
    if has_last:
        result.last = last if not pickling_problem(last) else UnpicklableValue(_safe_repr(last))
    return result


class _Discard:
    def write(self, data) -> int:
        return len(data)


def pickling_problem(value) -> str:
    """Why ``value`` cannot be pickled ('' if it can); large buffers are not copied."""
    try:
        cloudpickle.CloudPickler(_Discard(), protocol=5, buffer_callback=lambda _b: None).dump(value)
        return ""
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"{type(exc).__name__}: {exc}"


def _safe_repr(value) -> str:
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001
        return f"<{type(value).__name__} (repr failed: {exc})>"
