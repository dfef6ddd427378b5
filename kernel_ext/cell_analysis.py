"""What a %%remote cell reads and binds, found by analysing its source (ast and symtable).

``reads``: names the cell may read before binding them itself; the notebook's values of
these are shipped. Top-level code is followed in execution order, so ``x = load(); f(x)``
reads ``load`` but not ``x``; a binding inside a branch or loop body counts only inside it.
Function, class, lambda and comprehension bodies run later (or in their own scope), so every
global they read counts as read.

``binds``: names the cell binds in the notebook's namespace (assignments, ``def``, ``class``,
``for`` targets, ``global`` in a function), without imports and ``_``-prefixed names.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import symtable

# "%time f()", "!ls", "files = !ls", "x = %who_ls": IPython syntax, not Python
_IPYTHON_LINE = re.compile(r"^\s*(?:[%!]|[\w.,\s\[\]]+=\s*[%!])")


class IPythonSyntaxInCell(SyntaxError):
    """A %%remote cell uses a line magic or a shell escape, which only exist in the notebook."""


@dataclasses.dataclass(frozen=True)
class CellAnalysis:
    reads: frozenset
    binds: tuple
    ends_with_expression: bool


def analyse_cell(source: str, filename: str = "<cell>") -> CellAnalysis:
    tree = parse_cell(source, filename)
    table = symtable.symtable(source, filename, "exec")
    reads = _TopLevelReads().names(tree) | _globals_read_in_nested_scopes(table)
    ends = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return CellAnalysis(frozenset(reads), _bound_names(table), ends)


def parse_cell(source: str, filename: str = "<cell>") -> ast.Module:
    """The cell's syntax tree; IPython-only lines get an error that says what to do instead."""
    try:
        return ast.parse(source, filename)
    except SyntaxError as exc:
        line = _first_ipython_line(source)
        if line is None:
            raise
        raise IPythonSyntaxInCell(
            f"line {line[0]}: {line[1].strip()!r} is IPython syntax (a line magic or a ! shell command); a "
            "%%remote cell runs as plain Python on the cluster. Run it in a cell of its own, or use "
            "subprocess.run([...]) for shell commands") from exc


def _first_ipython_line(source: str):
    for number, text in enumerate(source.splitlines(), 1):
        if _IPYTHON_LINE.match(text):
            return number, text
    return None


def _bound_names(table: symtable.SymbolTable) -> tuple:
    names = [s.get_name() for s in table.get_symbols() if s.is_assigned() and not s.is_imported()]
    names += sorted(_globals_assigned_in_nested_scopes(table) - set(names))
    return tuple(n for n in names if not n.startswith("_"))


def _nested_symbols(table: symtable.SymbolTable):
    for child in table.get_children():
        yield from child.get_symbols()
        yield from _nested_symbols(child)


def _globals_read_in_nested_scopes(table: symtable.SymbolTable) -> set:
    return {s.get_name() for s in _nested_symbols(table) if s.is_global() and s.is_referenced()}


def _globals_assigned_in_nested_scopes(table: symtable.SymbolTable) -> set:
    return {s.get_name() for s in _nested_symbols(table) if s.is_declared_global() and s.is_assigned()}


class _TopLevelReads(ast.NodeVisitor):
    """Names read by top-level code before it has certainly bound them."""

    def names(self, tree: ast.Module) -> set:
        self.bound: set = set()
        self.reads: set = set()
        self._block(tree.body)
        return self.reads

    # ---- blocks: bindings inside a branch or loop body do not outlive it ----------------

    def _block(self, statements) -> None:
        for statement in statements:
            self.visit(statement)

    def _branch(self, statements, bind=()) -> None:
        outer = set(self.bound)
        self.bound.update(bind)
        self._block(statements)
        self.bound = outer

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._branch(node.body)
        self._branch(node.orelse)

    visit_While = visit_If

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._branch(node.body, _target_names(node.target))
        self._branch(node.orelse)

    visit_AsyncFor = visit_For

    def visit_Try(self, node: ast.Try) -> None:
        self._branch(node.body)
        for handler in node.handlers:
            if handler.type is not None:
                self.visit(handler.type)
            self._branch(handler.body, [handler.name] if handler.name else [])
        self._branch(node.orelse)
        self._branch(node.finalbody)

    visit_TryStar = visit_Try

    def visit_Match(self, node) -> None:
        self.visit(node.subject)
        for case in node.cases:
            self.visit(case.pattern)
            self._branch([*([case.guard] if case.guard else []), *case.body], _capture_names(case.pattern))

    # ---- statements that bind -------------------------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bound.add(node.target.id)

    def visit_Import(self, node) -> None:
        for alias in node.names:
            self.bound.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node) -> None:
        self._visit_all([*node.decorator_list, *_defaults(node.args), *_annotations(node)])
        self.bound.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_all([*node.decorator_list, *node.bases, *(k.value for k in node.keywords)])
        self.bound.add(node.name)

    # ---- expressions with a scope of their own: only what runs here now ----------------------

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_all(_defaults(node.args))

    def _visit_comprehension(self, node) -> None:
        self.visit(node.generators[0].iter)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.bound.add(node.id)
        else:
            self.bound.discard(node.id)

    def _read(self, name: str) -> None:
        if name not in self.bound:
            self.reads.add(name)

    def _visit_all(self, nodes) -> None:
        for node in nodes:
            if node is not None:
                self.visit(node)


def _defaults(args: ast.arguments) -> list:
    return [*args.defaults, *(d for d in args.kw_defaults if d is not None)]


def _annotations(node) -> list:
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return [a.annotation for a in every if a is not None and a.annotation is not None] + [node.returns]


def _target_names(target) -> list:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _capture_names(pattern) -> list:
    return [n for node in ast.walk(pattern) for n in (getattr(node, "name", None),) if isinstance(n, str)]
