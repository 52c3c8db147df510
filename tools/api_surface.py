"""Check that Python code only uses attributes and call shapes a binding library really has.

Why: our TensorRT (and PyCUDA) code paths only run on an NVIDIA GPU, which CI and most sessions lack,
so a misspelled method, a removed enum member or a wrong keyword would first surface on a user's
machine. This module reads our sources with ``ast``, follows the objects they get from the library
(``trt.Builder(...)`` is a Builder, ``builder.create_network()`` returns what the binding's signature
says it returns, ``ctx = self.context`` keeps the type) and checks every attribute and every call
against the imported library: names must exist, calls must bind to one of the signatures (pybind11
docstrings list them, overloads included). It needs the library importable, not a GPU.

Deliberately small: flow-insensitive type inference through assignments, tuple unpacking, lists,
``for`` loops, conditional expressions and the return values of methods in the same file (a value with
several possible types must suit each). What it cannot type it does not check, and it reports every
use it did check, so that a silent pass is visible.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

_SIG_LINE = re.compile(r"^(?:\d+\.\s+)?(\w+)\((.*)\)\s*->\s*(.+?)\s*$")


@dataclass(frozen=True)
class Instance:
    """A value known to be an instance of ``cls`` (a class of the checked library)."""

    cls: type


@dataclass(frozen=True)
class Method:
    """An attribute of an instance that is callable: ``owner.name``."""

    owner: type
    name: str
    func: Any


@dataclass(frozen=True)
class Seq:
    """A list or tuple whose items are all ``item`` (``[drv.Event() for _ in range(5)]``)."""

    item: Any


@dataclass(frozen=True)
class Tup:
    """A tuple of known length (``return module, "fatbin"``), for unpacking assignments."""

    items: tuple


@dataclass(frozen=True)
class OneOf:
    """One of several values (a method with two ``return`` paths); every use must suit each of them."""

    options: tuple


def _one_of(values: list[Any]) -> Any:
    known: list[Any] = []
    for v in values:
        if v is not None and not any(v is k or v == k for k in known):
            known.append(v)
    return None if not known else known[0] if len(known) == 1 else OneOf(tuple(known))


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "pos" (positional or keyword), "kwonly", "varargs", "varkw"
    has_default: bool


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str  # the annotation as text ("" when unknown)

    def accepts(self, n_positional: int, keywords: list[str], open_ended: bool = False) -> bool:
        """Whether a call with these positional count and keyword names binds to this signature;
        ``open_ended``: the call also passes ``*args``/``**kwargs``, so only what is written is checked."""
        pos = [p for p in self.params if p.kind == "pos"]
        if n_positional > len(pos) and not any(p.kind == "varargs" for p in self.params):
            return False
        bound = {p.name for p in pos[:n_positional]}
        names = {p.name for p in self.params if p.kind in ("pos", "kwonly")}
        varkw = any(p.kind == "varkw" for p in self.params)
        for k in keywords:
            if k in bound or (k not in names and not varkw):
                return False
            bound.add(k)
        required = {p.name for p in self.params if p.kind in ("pos", "kwonly") and not p.has_default}
        return open_ended or required <= bound


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    use: str
    level: str  # "ok" | "error" | "optional-missing"
    message: str


@dataclass
class Report:
    library: str
    version: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def summary(self) -> str:
        ok = sum(f.level == "ok" for f in self.findings)
        opt = sum(f.level == "optional-missing" for f in self.findings)
        return f"{self.library} {self.version}: {ok} uses checked, {len(self.errors)} errors, {opt} optional absent"


def _split_top_level(text: str) -> list[str]:
    """Split a parameter list at commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


_BOOST_PARAM = re.compile(r"\(([^()]*)\)\s*(\w+)(\s*=)?")


def _params_from_text(text: str) -> list[Param]:
    """Parameters of one signature line: pybind11 ``a: int = 0`` or Boost.Python ``(int)a [, (int)b=0]``."""
    if _BOOST_PARAM.match(text.strip()):
        required, _, optional = text.partition("[")
        return [
            Param(m.group(2), "pos", part is optional or bool(m.group(3)))
            for part in (required, optional)
            for m in _BOOST_PARAM.finditer(part)
        ]
    params = []
    for raw in _split_top_level(text):
        if raw.startswith("**"):
            params.append(Param(raw[2:], "varkw", True))
        elif raw.startswith("*"):
            params.append(Param(raw[1:] or "*", "varargs", True))
        else:
            params.append(Param(raw.split(":")[0].split("=")[0].strip(), "pos", "=" in raw))
    return params


def _docstring_signatures(func: Any, drop_self: bool) -> list[Signature]:
    """The signature lines of a binding's docstring: pybind11 writes ``name(self: T, a: int = 0) -> R``
    (numbered when overloaded), Boost.Python ``name( (T)arg1 [, (int)flags=0]) -> R :``."""
    sigs = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        m = _SIG_LINE.match(line.strip())
        if not m or m.group(2) == "*args, **kwargs":
            continue
        params = _params_from_text(m.group(2))
        if drop_self and params and params[0].kind == "pos":
            params = params[1:]
        sigs.append(Signature(tuple(params), m.group(3).rstrip(" :")))
    return sigs


def signatures_of(func: Any, drop_self: bool) -> list[Signature]:
    """The call signatures of a library callable (Python introspection first, then the docstring)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return _docstring_signatures(func, drop_self)
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "pos",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "pos",
        inspect.Parameter.KEYWORD_ONLY: "kwonly",
        inspect.Parameter.VAR_POSITIONAL: "varargs",
        inspect.Parameter.VAR_KEYWORD: "varkw",
    }
    params = [Param(p.name, kinds[p.kind], p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]
    if drop_self and params and params[0].kind == "pos":
        params = params[1:]
    ret = sig.return_annotation
    ret_text = "" if ret is inspect.Signature.empty else (ret if isinstance(ret, str) else getattr(ret, "__name__", ""))
    return [Signature(tuple(params), ret_text)]


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class SurfaceChecker:
    """Type what it can of one source file and check every use of the library it reaches."""

    def __init__(self, library: ModuleType, roots: dict[str, Any], label: str):
        self.lib, self.label = library, label
        self.roots = dict(roots)
        self.findings: list[Finding] = []
        self._record = False
        self._scope = ""
        self._env: dict[str, Any] = {}
        self._methods: dict[str, ast.FunctionDef] = {}
        self._returning: set[str] = set()

    # -- names -------------------------------------------------------------------------------------

    def _key(self, dotted: str) -> str:
        return dotted if dotted.startswith("self.") or dotted in self.roots else f"{self._scope}:{dotted}"

    def _lookup(self, dotted: str) -> Any:
        if dotted in self.roots:
            return self.roots[dotted]
        return self._env.get(self._key(dotted))

    def _note(self, node: ast.AST, level: str, message: str) -> None:
        if self._record:
            use = ast.unparse(node)
            self.findings.append(Finding(self.label, getattr(node, "lineno", 0), use[:100], level, message))

    def _returned(self, text: str) -> Any:
        """A return annotation such as ``tensorrt_bindings.tensorrt.INetworkDefinition`` as a value."""
        for name in re.findall(r"[A-Za-z_][\w.]*", text):
            obj = getattr(self.lib, name.rsplit(".", 1)[-1], None)
            if inspect.isclass(obj):
                return Instance(obj)
        return None

    # -- evaluation ----------------------------------------------------------------------------------

    def value(self, node: ast.AST) -> Any:
        """The library object an expression denotes, or None when it is not (or not known to be) one."""
        dotted = _dotted(node)
        if dotted is not None:
            known = self._lookup(dotted)
            if known is not None:
                return known
        if isinstance(node, ast.Attribute):
            return self._attribute(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                self.value(v)
            return None
        if isinstance(node, ast.IfExp):
            self.value(node.test)
            return _one_of([self.value(node.body), self.value(node.orelse)])
        if isinstance(node, ast.ListComp):
            item = self.value(node.elt)
            return Seq(item) if item is not None else None
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(e) for e in node.elts]
            if isinstance(node, ast.Tuple):
                return Tup(tuple(items))
            item = _one_of(items)
            return Seq(item) if item is not None else None
        if isinstance(node, ast.Subscript):
            base = self.value(node.value)
            if isinstance(base, Seq):
                return base.item
            if isinstance(base, Tup) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int):
                return base.items[node.slice.value] if -len(base.items) <= node.slice.value < len(base.items) else None
            return None
        return None

    def _attribute(self, node: ast.Attribute) -> Any:
        base = self.value(node.value)
        options = base.options if isinstance(base, OneOf) else (base,)
        return _one_of([self._member(b, node.attr, node, optional=False) for b in options if b is not None])

    def _member(self, base: Any, attr: str, node: ast.AST, optional: bool) -> Any:
        """``base.attr`` checked and typed; ``optional`` marks a ``getattr(x, name, default)`` probe."""
        owner = base.cls if isinstance(base, Instance) else base
        if not isinstance(base, Instance) and not isinstance(base, (ModuleType, type)):
            return None
        name = getattr(owner, "__name__", "?")
        if not hasattr(owner, attr):
            level = "optional-missing" if optional else "error"
            self._note(node, level, f"{name} has no attribute {attr!r}")
            return None
        suffix = " (optional, present)" if optional else ""
        static = inspect.getattr_static(owner, attr)
        if isinstance(base, Instance) and isinstance(static, property):
            doc = (static.fget.__doc__ or "") if static.fget else ""
            m = re.search(r"->\s*([\w.]+)", doc)
            self._note(node, "ok", f"{name}.{attr} (property){suffix}")
            return self._returned(m.group(1)) if m else None
        value = getattr(owner, attr)
        if isinstance(base, Instance) and callable(value) and not inspect.isclass(value):
            if optional:
                self._note(node, "ok", f"{name}.{attr}{suffix}")
            return Method(owner, attr, value)
        if not callable(value) or inspect.isclass(value):
            self._note(node, "ok", f"{name}.{attr}{suffix}")
        if inspect.isclass(value) or isinstance(value, ModuleType) or callable(value):
            return value
        return Instance(type(value)) if type(value).__module__.startswith(self.lib.__name__) else None

    def _call(self, node: ast.Call) -> Any:
        for a in [*node.args, *(k.value for k in node.keywords)]:
            self.value(a)
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
            return self._getattr_call(node)
        own = self._own_method(node.func)
        if own is not None:
            return self._returns_of(own)
        func = self.value(node.func)
        options = func.options if isinstance(func, OneOf) else (func,)
        return _one_of([self._apply(node, f) for f in options if f is not None])

    def _apply(self, node: ast.Call, func: Any) -> Any:
        """Check the call ``node`` made to ``func`` and return what it returns (when known)."""
        starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
        n_args = sum(not isinstance(a, ast.Starred) for a in node.args)
        keywords = [k.arg for k in node.keywords if k.arg]
        if inspect.isclass(func):
            label = f"{func.__name__}(...)"
            init = func.__init__
            sigs = [] if init is object.__init__ else signatures_of(init, drop_self=True)
            result: Any = Instance(func)
        elif isinstance(func, Method):
            label = f"{func.owner.__name__}.{func.name}(...)"
            sigs = signatures_of(func.func, drop_self=True)
            result = None
        elif callable(func):
            label = f"{getattr(func, '__name__', '?')}(...)"
            sigs = signatures_of(func, drop_self=False)
            result = None
        else:
            return None
        if not sigs:
            self._note(node, "ok", f"{label} exists (arguments not checked: no signature)")
        elif any(s.accepts(n_args, keywords, open_ended=starred) for s in sigs):
            extra = " (as far as the unpacked arguments allow)" if starred else ""
            self._note(node, "ok", f"{label} binds one of {len(sigs)} signature(s){extra}")
        else:
            shown = " | ".join("(" + ", ".join(p.name for p in s.params) + ")" for s in sigs)
            self._note(node, "error", f"{label} called with {n_args} positional {keywords or ''} "
                                      f"but takes {shown}")  # fmt: skip
        if result is None and sigs:
            returned = [self._returned(s.returns) for s in sigs if s.returns]
            result = next((r for r in returned if r is not None), None)
        return result

    def _getattr_call(self, node: ast.Call) -> Any:
        base = self.value(node.args[0])
        name = node.args[1].value if isinstance(node.args[1], ast.Constant) else None
        if base is None or not isinstance(name, str):
            return None
        return self._member(base, name, node, optional=len(node.args) == 3)

    def _own_method(self, func: ast.AST) -> ast.FunctionDef | None:
        """``self.name`` or a plain ``name`` naming a method or function defined in the checked file
        (followed for its return value)."""
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            return self._methods.get(func.attr)
        if isinstance(func, ast.Name):
            return self._methods.get(func.id)
        return None

    def _returns_of(self, fn: ast.FunctionDef) -> Any:
        if fn.name in self._returning:  # recursion
            return None
        self._returning.add(fn.name)
        scope, self._scope = self._scope, fn.name
        try:
            return _one_of([self.value(n.value) for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value])
        finally:
            self._scope = scope
            self._returning.discard(fn.name)

    # -- statements ----------------------------------------------------------------------------------

    def _assign(self, targets: list[ast.AST], value: ast.AST) -> None:
        for target in targets:
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    self._assign([t], v)
            else:
                self._bind(target, self.value(value))

    def _bind(self, target: ast.AST, got: Any) -> None:
        """Give ``target`` (a name, ``self.x`` or a tuple of them) the value ``got``."""
        if got is None:
            return
        if isinstance(target, ast.Tuple):
            tuples = got.options if isinstance(got, OneOf) else (got,)
            n = len(target.elts)
            if all(isinstance(t, Tup) and len(t.items) == n for t in tuples):
                for i, t in enumerate(target.elts):
                    self._bind(t, _one_of([tup.items[i] for tup in tuples]))
            return
        dotted = _dotted(target)
        if dotted is not None:
            self._env[self._key(dotted)] = got

    def _visit(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            self._scope = node.name
            for inner in ast.walk(node):
                if isinstance(inner, ast.Assign):
                    self._assign(inner.targets, inner.value)
                elif isinstance(inner, ast.AnnAssign) and inner.value is not None:
                    self._assign([inner.target], inner.value)
                elif isinstance(inner, ast.withitem) and inner.optional_vars is not None:
                    self._assign([inner.optional_vars], inner.context_expr)
                elif isinstance(inner, ast.For):
                    seq = self.value(inner.iter)
                    if isinstance(seq, Seq):
                        self._bind(inner.target, seq.item)
                elif self._record and isinstance(inner, (ast.Attribute, ast.Call)):
                    self.value(inner)

    def check(self, source: str) -> list[Finding]:
        tree = ast.parse(source)
        self._methods = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        for _ in range(3):  # attributes set in one method (self.engine) are read in others
            self._visit(tree)
        self._record = True
        self._visit(tree)
        self._record = False
        unique: dict[tuple[int, str, str], Finding] = {}
        for f in self.findings:
            unique.setdefault((f.line, f.use, f.message), f)
        return sorted(unique.values(), key=lambda f: (f.line, f.use))


def check_files(library: ModuleType, files: dict[Path, dict[str, Any]], version: str) -> Report:
    """Check each file with its own roots (``{"trt": tensorrt_module, "self._trt": ...}``)."""
    report = Report(library.__name__, version)
    for path, roots in files.items():
        report.findings += SurfaceChecker(library, roots, path.name).check(path.read_text())
    return report
