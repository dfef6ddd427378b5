"""``%%remote``: run a notebook cell on the cluster, as a task, in a named actor, or on every node.

    %%remote [--num-cpus N] [--num-gpus N] [--resources JSON] [--node NODE_ID]
             [--all-nodes] [--actor NAME [--push a,b] [--pull x,y] [--detached]]
             [--no-block] [-o NAME] [--timeout S]

A default cell ships the notebook values it reads (found by analysing the cell), runs as one
task, and brings back the names it binds; its last expression is displayed. ``--actor``
runs the cell in the namespace of a named actor that persists across cells: only ``--push``
names travel there and only ``--pull`` names (and the last expression) come back.
``--all-nodes`` runs the cell once per node and binds only ``-o NAME`` to
``{node_id: {name: value}}``. ``--no-block`` returns at once and binds ``-o NAME`` (default
``_remote``) to a ref of the dict of names the cell binds.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import traceback

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import nebula
from nebula.exceptions import ActorDiedError, GetTimeoutError, NebulaError
from nebula.util import NodeAffinitySchedulingStrategy

from .cell_analysis import CellAnalysis, IPythonSyntaxInCell, analyse_cell
from .cell_runner import CellActor, CellCode, run_cell
from .node_groups import node_blocks
from .shipping import CellShippingError, ship_names

TASK_NAME = "remote_cell"
DEFAULT_OUTPUT = "_remote"
ALL_NODES_STORE_OVER = 1024 ** 2  # values shipped to every node go through the store once above this


class RemoteCellError(Exception):
    """A %%remote cell could not run or finish, for the reason its message gives."""

    def _render_traceback_(self):
        return [f"{type(self).__name__}: {self}"]


class RemoteCellTimeout(RemoteCellError, TimeoutError):
    """The cell did not finish within --timeout seconds; it was cancelled."""


class RemoteCellSyntaxError(RemoteCellError):
    """The cell is not valid Python (or uses IPython-only syntax); the message shows where."""

    def _render_traceback_(self):
        return str(self).splitlines()


@dataclasses.dataclass(frozen=True)
class CellRequest:
    """A parsed, checked ``%%remote`` invocation."""

    source: str
    filename: str
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict | None = None
    node: str | None = None
    all_nodes: bool = False
    actor: str | None = None
    push: tuple = ()
    pull: tuple = ()
    detached: bool = False
    no_block: bool = False
    output: str | None = None
    timeout: float | None = None

    def task_options(self) -> dict:
        options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": self.resources}
        return {k: v for k, v in options.items() if v is not None}


def _names(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"not a Python name: {', '.join(bad)} (give names separated by commas, e.g. --pull x,y)")
    return names


def _resources(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--resources takes a JSON object, e.g. --resources '{{\"TPU\": 1}}': {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("--resources takes a JSON object, e.g. --resources '{\"TPU\": 1}'")
    return value


def check_request(args, source: str, filename: str) -> CellRequest:
    """The request, or a UsageError naming the option combination that cannot work."""
    if args.all_nodes and (args.node or args.actor):
        raise UsageError("--all-nodes runs the cell on every node; it cannot be combined with --node or --actor")
    if (args.push or args.pull or args.detached) and not args.actor:
        raise UsageError("--push, --pull and --detached apply to --actor cells; a default cell ships the names it "
                         "reads and brings back the names it binds")
    if args.no_block and (args.all_nodes or args.timeout is not None):
        raise UsageError("--no-block cannot be combined with --all-nodes or --timeout")
    if args.output is not None and not args.output.isidentifier():
        raise UsageError(f"-o takes a Python name, got {args.output!r}")
    return CellRequest(source, filename, args.num_cpus, args.num_gpus, args.resources, args.node, args.all_nodes,
                       args.actor, args.push or (), args.pull or (), args.detached, args.no_block, args.output,
                       args.timeout)


@magics_class
class RemoteMagics(Magics):
    """The ``%%remote`` cell magic; keeps this kernel's ``--actor`` handles."""

    def __init__(self, shell, router=None):
        super().__init__(shell)
        self.router = router
        self.actors: dict = {}

    @magic_arguments()
    @argument("--num-cpus", type=float, default=None, help="CPUs the cell's task (or actor) needs")
    @argument("--num-gpus", type=float, default=None, help="GPUs the cell's task (or actor) needs")
    @argument("--resources", type=_resources, default=None, help="custom resources, as a JSON object")
    @argument("--node", default=None, metavar="NODE_ID", help="run on this node (an id or a unique prefix)")
    @argument("--all-nodes", action="store_true", help="run once on every node; only -o NAME is bound")
    @argument("--actor", default=None, metavar="NAME", help="run in the persistent namespace of actor NAME")
    @argument("--push", type=_names, default=(), metavar="a,b", help="--actor: notebook names to send")
    @argument("--pull", type=_names, default=(), metavar="x,y", help="--actor: names to bring back")
    @argument("--detached", action="store_true", help="--actor: the actor outlives this kernel")
    @argument("--no-block", action="store_true", help="return at once; -o NAME gets a ref to the bound names")
    @argument("-o", "--output", default=None, metavar="NAME", help="also bind the result to NAME")
    @argument("--timeout", type=float, default=None, metavar="S", help="cancel the cell after S seconds")
    @cell_magic
    def remote(self, line: str, cell: str):
        """Run this cell on the Nebula cluster (see ``%%remote?``)."""
        args = parse_argstring(self.remote, line)
        request = check_request(args, cell, f"<remote In[{self.shell.execution_count}]>")
        run = self.run_on_all_nodes if request.all_nodes else self.run_in_actor if request.actor else self.run_as_task
        try:
            return run(request)
        except (NebulaError, RemoteCellError, CellShippingError) as exc:
            # The message (for a TaskError: the remote traceback) says it all; dropping the local frames
            # also stops IPython's sys.last_traceback from keeping this cell's refs alive.
            raise exc.with_traceback(None) from None

    # ---- the three ways to run ------------------------------------------------------------------

    def run_as_task(self, request: CellRequest):
        analysis = _analyse(request)
        shipment = self._ship(analysis.reads)
        code = self._code(request, analysis, shipment.names, analysis.binds)
        options = {**request.task_options(), **_node_strategy(request.node)}
        ref = _cell_task(**options).remote(code, *shipment.values)
        return self._finish(request, ref)

    def run_in_actor(self, request: CellRequest):
        analysis = _analyse(request)
        missing = [n for n in request.push if n not in self.shell.user_ns]
        if missing:
            raise UsageError(f"--push {', '.join(missing)}: not defined in this notebook")
        shipment = self._ship(request.push)
        code = self._code(request, analysis, shipment.names, request.pull, require=True)
        handle = self._actor(request)
        ref = handle.run_cell.remote(code, *shipment.values)
        try:
            return self._finish(request, ref)
        except ActorDiedError:
            self.actors.pop(request.actor, None)
            raise

    def run_on_all_nodes(self, request: CellRequest):
        analysis = _analyse(request)
        shipment = self._ship(analysis.reads, store_over=ALL_NODES_STORE_OVER)
        code = self._code(request, analysis, shipment.names, analysis.binds)
        node_ids = [n["NodeID"] for n in nebula.nodes() if n.get("Alive")]
        blocks = node_blocks(self.shell, self.router, node_ids)
        refs = {}
        for node_id in node_ids:
            task = _cell_task(**request.task_options(), scheduling_strategy=NodeAffinitySchedulingStrategy(node_id))
            with blocks.printing_into(node_id):
                refs[node_id] = task.remote(code, *shipment.values)
        results = _wait_all(refs, request.timeout)
        return self._bring_back_per_node(request, results, blocks)

    # ---- shared steps -----------------------------------------------------------------------------

    def _ship(self, names, store_over: int | None = None):
        shipment = ship_names(self.shell.user_ns, names, self.shell.user_ns_hidden, store_over)
        for note in shipment.notes:
            _note(note)
        return shipment

    def _code(self, request: CellRequest, analysis: CellAnalysis, names, send_back, require=False) -> CellCode:
        from IPython.core.displayhook import DisplayHook
        quiet = DisplayHook.semicolon_at_end_of_expression(request.source)
        return CellCode(request.source, request.filename, tuple(names), tuple(send_back), require,
                        return_last=analysis.ends_with_expression and not quiet and not request.no_block,
                        result_as_dict=request.no_block)

    def _actor(self, request: CellRequest):
        handle = self.actors.get(request.actor) or _named_actor(request)
        try:
            handle.run_cell
        except AttributeError:
            raise UsageError(f"--actor {request.actor}: an actor of that name exists but is not a %%remote "
                             "namespace; choose another name") from None
        self.actors[request.actor] = handle
        return handle

    def _finish(self, request: CellRequest, ref):
        if request.no_block:
            name = request.output or DEFAULT_OUTPUT
            self.shell.push({name: ref})
            _note(f"running in the background; {name} is a ref to the names the cell binds (nebula.get({name}))")
            return None
        result = _wait(ref, request.timeout)
        return self._bring_back(request, result)

    def _bring_back(self, request: CellRequest, result):
        if result.missing:
            raise RemoteCellError(f"--pull {', '.join(result.missing)}: not defined in actor {request.actor!r} "
                                  "after the cell ran")
        self.shell.push(result.values)
        if request.output:
            self.shell.push({request.output: result.values})
        for name, why in result.not_sent.items():
            _note(f"{name} stays on the cluster: it cannot be sent back ({why})")
        return result.last if result.has_last else None

    def _bring_back_per_node(self, request: CellRequest, results: dict, blocks):
        errors = []
        for node_id, (result, error) in results.items():
            blocks.finish(node_id, result, error)
            errors += [error] if error is not None else []
        if request.output:
            self.shell.push({request.output: {n: r.values for n, (r, e) in results.items() if e is None}})
        if errors:
            raise errors[0]
        return None


# ---- helpers ------------------------------------------------------------------------------------

def _analyse(request: CellRequest) -> CellAnalysis:
    try:
        return analyse_cell(request.source, request.filename)
    except IPythonSyntaxInCell as exc:
        raise RemoteCellSyntaxError(exc.msg) from None
    except SyntaxError as exc:
        text = "".join(traceback.format_exception_only(SyntaxError, exc))
        raise RemoteCellSyntaxError(text.rstrip()) from None


def _note(text: str) -> None:
    print(f"%%remote: {text}", file=sys.stderr)


_task_function = []


def _cell_task(**options):
    """The ``run_cell`` remote function with these options (a cell runs at most once: no retries)."""
    if not _task_function:
        _task_function.append(nebula.remote(run_cell))
    return _task_function[0].options(name=TASK_NAME, max_retries=0, **options)


def _node_strategy(node: str | None) -> dict:
    if node is None:
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(resolve_node(node))}


def resolve_node(text: str) -> str:
    """The full id of the alive node whose id is ``text`` or starts with it."""
    node_ids = [n["NodeID"] for n in nebula.nodes() if n.get("Alive")]
    matches = [n for n in node_ids if n == text] or [n for n in node_ids if n.startswith(text)]
    if len(matches) != 1:
        known = ", ".join(n[:12] for n in node_ids) or "none"
        what = "no alive node" if not matches else "several nodes"
        raise UsageError(f"--node {text}: {what} match(es) that id; alive nodes: {known}")
    return matches[0]


def _named_actor(request: CellRequest):
    """The actor ``request.actor``: found if it exists (detached ones outlive kernels), else created."""
    try:
        return nebula.get_actor(request.actor)
    except ValueError:
        pass
    options = {"num_cpus": 0, **request.task_options(), **_node_strategy(request.node)}
    options.update(name=request.actor, get_if_exists=True, lifetime="detached" if request.detached else None)
    return nebula.remote(CellActor).options(**options).remote()


def _wait(ref, timeout: float | None):
    try:
        return nebula.get(ref, timeout=timeout)
    except GetTimeoutError:
        nebula.cancel(ref)
        raise RemoteCellTimeout(f"the cell did not finish within {timeout:g} s on the cluster and was cancelled; "
                                "raise --timeout or look at what it waits for") from None


def _wait_all(refs: dict, timeout: float | None) -> dict:
    """node id -> (result, None) or (None, error), waiting at most ``timeout`` for all of them."""
    _, late = nebula.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    for ref in late:
        nebula.cancel(ref)
    results = {}
    for node_id, ref in refs.items():
        try:
            results[node_id] = (nebula.get(ref, timeout=5 if ref in late else None), None)
        except GetTimeoutError:
            results[node_id] = (None, RemoteCellTimeout(f"did not finish within {timeout:g} s; cancelled"))
        except Exception as exc:  # noqa: BLE001 - reported per node, the first one re-raised
            results[node_id] = (None, exc)
    return results
