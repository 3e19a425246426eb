"""The package layout holds: the core imports no framework or adapter, no import cycles, thin adapters.

Code lines are counted as a reviewer would: not blank lines, comments or docstrings (attribute docstrings included).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

from bge_icl import EmbedderOptions

ROOT = Path(__file__).resolve().parents[1]
ABOVE_THE_CORE = ("langchain", "llama_index", "ray", "bge_icl_cli", "langchain_bge_icl", "llamaindex_bge_icl",
                  "ray_bge_icl", "sentence_transformers", "mteb", "mteb_bge_icl", "bge_icl_server", "fastapi",
                  "uvicorn", "prometheus_client", "bge_icl_client", "httpx")
# An optional library the core may import, lazily, in this one module only (the extra's single entry point):
# quantize_embeddings, for precision="int8" etc. The SentenceTransformer interop itself imports nothing.
OPTIONAL_IN_THE_CORE = {"sentence_transformers": "precision.py"}
# Calls whose first argument, a constant string, names a module they import.
IMPORTING_CALLS = ("import_module", "__import__", "find_spec", "optional_import")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports: import statements at any depth, and ``importlib.import_module("x")`` /
    ``optional_import("x", ...)`` calls."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            if func.endswith(IMPORTING_CALLS) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _code_lines(source: str, first: int = 1, last: int | None = None) -> int:
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstrings.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines = {
        line
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type not in skip
        for line in range(tok.start[0], tok.end[0] + 1)
    }
    return len({n for n in lines - docstrings if first <= n <= (last or n)})


@pytest.mark.parametrize("path", sorted((ROOT / "bge_icl").rglob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_framework_and_no_adapter(path: Path) -> None:
    bad = _above_the_core(path)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _above_the_core(path: Path) -> list[str]:
    """What core module ``path`` imports from above the core (bar its one allowed optional library)."""
    top = {m: m.split(".")[0] for m in _imports(path)}
    return sorted(m for m, t in top.items() if t in ABOVE_THE_CORE and OPTIONAL_IN_THE_CORE.get(t) != path.name)


def test_the_import_checker_sees_lazy_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    import langchain_core\n    importlib.import_module('llama_index.core')\n"
        "    optional_import('ray.data', 'ray', 'f')\n"
    )
    assert _imports(probe) == {"langchain_core", "llama_index.core", "ray.data"}


@pytest.mark.parametrize(
    ("name", "module", "bad"),
    [("evaluation.py", "httpx", ["httpx"]), ("evaluation.py", "sentence_transformers.quantization",
     ["sentence_transformers.quantization"]), ("precision.py", "sentence_transformers.quantization", [])],
)  # fmt: skip
def test_optional_import_of_a_framework_counts_outside_its_one_module(
    tmp_path: Path, name: str, module: str, bad: list[str]
) -> None:
    probe = tmp_path / name
    probe.write_text(f"def f():\n    return optional_import({module!r}, 'extra', 'f')\n")
    assert _above_the_core(probe) == bad


@pytest.mark.parametrize(
    "package", ["langchain_bge_icl", "llamaindex_bge_icl", "bge_icl", "bge_icl_cli", "mteb_bge_icl", "bge_icl_server",
                "bge_icl_client"]
)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    modules = {p.stem: p for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}
    graph = {
        name: {m.split(".")[1] for m in _imports(path) if m.startswith(f"{package}.") and m.split(".")[1] in modules}
        for name, path in modules.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not cycles, f"import cycle through {cycles}: {graph}"


def test_iclembedder_class_body_is_at_most_220_code_lines() -> None:
    source = (ROOT / "bge_icl" / "encoder.py").read_text(encoding="utf-8")
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "ICLEmbedder")
    assert _code_lines(source, cls.lineno, cls.end_lineno) <= 220


@pytest.mark.parametrize("package", ["langchain_bge_icl", "llamaindex_bge_icl"])
def test_each_adapter_package_is_at_most_180_code_lines(package: str) -> None:
    total = sum(_code_lines(p.read_text(encoding="utf-8")) for p in (ROOT / package).rglob("*.py"))
    assert total <= 180


def test_the_line_counter_skips_docstrings_and_comments() -> None:
    source = '"""Module doc."""\n\nx = 1  # a comment\n# only a comment\ny: int = 2\n"""Doc of y."""\n'
    assert _code_lines(source) == 2


@pytest.mark.parametrize(("module", "cls"), [("langchain_bge_icl", "BgeIclEmbeddings"),
                                             ("llamaindex_bge_icl", "BgeIclEmbedding")])
def test_adapters_declare_no_option(module: str, cls: str) -> None:
    adapter = getattr(pytest.importorskip(module), cls)
    own = set(vars(adapter).get("__annotations__", {}))
    assert not own & set(EmbedderOptions.OPTION_NAMES)
    for name in EmbedderOptions.OPTION_NAMES:  # inherited: the same default and doc as the core declares
        assert adapter.model_fields[name].default == EmbedderOptions.model_fields[name].default
        assert adapter.model_fields[name].description == EmbedderOptions.model_fields[name].description


def test_the_core_reads_no_environment_variable() -> None:
    """Variants are declared options resolved at setup (``prefix_attention``), never environment switches."""
    readers = []
    for path in sorted((ROOT / "bge_icl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = ast.unparse(node) if isinstance(node, (ast.Attribute, ast.Name)) else ""
            if name in ("os.environ", "os.getenv", "environ", "getenv", "os.putenv"):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not readers, f"environment read under bge_icl/: {readers}"


def test_the_environment_checker_sees_a_read(tmp_path: Path) -> None:
    probe = "import os\nx = os.environ.get('BGE_ICL_X')\ny = os.getenv('Y')\n"
    found = [ast.unparse(n) for n in ast.walk(ast.parse(probe)) if isinstance(n, ast.Attribute)]
    assert {"os.environ", "os.getenv"} <= set(found)


def test_the_kernels_module_imports_no_model_code() -> None:
    assert _imports(ROOT / "bge_icl" / "cascade_attention.py") == {"__future__", "typing", "torch"}


FORWARD_PATHS = ("forward_whole", "forward_copied_prefix", "forward_shared_prefix", "build_prefix_kv")


def test_every_forward_path_is_defined_in_the_forward_module() -> None:
    """Whole prompt, copied prefix, shared prefix (and the prefix's own pass): all in ``bge_icl/forward.py``, and
    nothing else in the core calls a model's forward or runs its decoder layers."""
    defined: dict[str, list[str]] = {}
    model_calls = []
    for path in sorted((ROOT / "bge_icl").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "model" for a in node.args.args):
                if node.name.startswith(("forward_", "build_prefix_kv")):
                    defined.setdefault(node.name, []).append(path.name)
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("model", "layer.mlp", "model.layers"):
                model_calls.append(f"{path.name}:{node.lineno}")
    assert {name: defined.get(name) for name in FORWARD_PATHS} == {name: ["forward.py"] for name in FORWARD_PATHS}
    assert set(defined) == set(FORWARD_PATHS), defined
    assert model_calls and all(call.startswith("forward.py:") for call in model_calls), model_calls


# -- the command line formats its own words from the core's fields; it never parses a message -----------------------

TEXT_LIBRARIES = {"re", "regex", "fnmatch", "parse"}
# str methods that look into a text (split() without arguments only folds whitespace, and is allowed).
INSPECTING = {"startswith", "endswith", "find", "rfind", "index", "rindex", "count", "partition", "rpartition",
              "replace", "removeprefix", "removesuffix", "split", "rsplit", "splitlines", "lower", "upper",
              "casefold", "strip", "lstrip", "rstrip", "match", "search", "fullmatch", "sub", "findall"}  # fmt: skip


class _MessageParsing(ast.NodeVisitor):
    """Finds where a module looks into the text of a caught exception or warning.

    A caught object is a name bound by ``except ... as e`` or by ``with warnings.catch_warnings(record=True) as c``
    (and whatever is read, called or iterated from one: ``w.message``, ``e.errors()``, ``for w in c``). Its *text* is
    ``str()`` / ``repr()`` / ``format()`` / an f-string of it, its ``args`` or ``msg``, or a ``["msg"]`` item, and
    names assigned from such text. Reading fields (``w.message.count``) is fine; comparing the text, slicing it or
    calling an inspecting str method on it is parsing.
    """

    def __init__(self) -> None:
        self.caught: set[str] = set()
        self.texts: set[str] = set()
        self.found: list[str] = []

    def is_caught(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.caught
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return self.is_caught(node.value)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
                return self.is_caught(node.args[0])
            return self.is_caught(node.func)
        return False

    def is_text(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.texts
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in ("str", "repr", "format", "ascii"):
                return any(self.is_caught(a) or self.is_text(a) for a in node.args)
            if isinstance(node.func, ast.Attribute):
                return self.is_text(node.func.value) or any(self.is_text(a) for a in node.args)
            return False
        if isinstance(node, ast.IfExp):
            return self.is_text(node.body) or self.is_text(node.orelse)
        if isinstance(node, ast.BoolOp):
            return any(self.is_text(v) for v in node.values)
        if isinstance(node, ast.BinOp):
            return self.is_text(node.left) or self.is_text(node.right)
        if isinstance(node, (ast.GeneratorExp, ast.ListComp)):
            return self.is_text(node.elt)
        if isinstance(node, ast.JoinedStr):
            return any(isinstance(v, ast.FormattedValue) and (self.is_caught(v.value) or self.is_text(v.value))
                       for v in node.values)  # fmt: skip
        if isinstance(node, ast.Attribute):
            return (node.attr in ("args", "msg") and self.is_caught(node.value)) or self.is_text(node.value)
        if isinstance(node, ast.Subscript):
            key = node.slice
            is_msg = isinstance(key, ast.Constant) and key.value in ("msg", "message")
            return (is_msg and self.is_caught(node.value)) or self.is_text(node.value)
        return False

    def bind(self, target: ast.AST, value: ast.AST) -> None:
        names = [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
        if self.is_text(value):
            self.texts.update(names)
        elif self.is_caught(value):
            self.caught.update(names)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        saved = set(self.caught), set(self.texts)  # names are local to their function
        self.caught, self.texts = set(), set()
        self.generic_visit(node)
        self.caught, self.texts = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.caught.add(node.name)
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if item.optional_vars is not None and "catch_warnings" in ast.unparse(item.context_expr):
                self.caught.update(n.id for n in ast.walk(item.optional_vars) if isinstance(n, ast.Name))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)  # first: a comprehension in the value binds its loop names
        for target in node.targets:
            self.bind(target, node.value)

    def visit_For(self, node: ast.For) -> None:
        self.bind(node.target, node.iter)
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self.bind(node.target, node.iter)
        self.generic_visit(node)

    def _visit_comprehensions(self, node: ast.AST) -> None:
        for generator in getattr(node, "generators", []):  # bind the loop names before the element is read
            self.visit(generator)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.comprehension):
                self.visit(child)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _visit_comprehensions

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(self.is_text(side) for side in (node.left, *node.comparators)):
            self.found.append(f"line {node.lineno}: compares message text: {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in INSPECTING and self.is_text(func.value):
            if func.attr != "split" or node.args or node.keywords:
                self.found.append(f"line {node.lineno}: inspects message text: {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self.is_text(node.value) and not (isinstance(node.slice, ast.Constant) and node.slice.value == "msg"):
            self.found.append(f"line {node.lineno}: slices message text: {ast.unparse(node)}")
        self.generic_visit(node)


def message_parsing(source: str) -> list[str]:
    """Where ``source`` parses the text of a caught exception or warning, or imports a text-matching library."""
    tree = ast.parse(source)
    found = [f"line {n.lineno}: imports {name}" for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for name in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
             if name.split(".")[0] in TEXT_LIBRARIES]  # fmt: skip
    checker = _MessageParsing()
    checker.visit(tree)
    return found + checker.found


@pytest.mark.parametrize("path", sorted((ROOT / "bge_icl_cli").glob("*.py")), ids=lambda p: p.name)
def test_the_cli_never_parses_a_core_message(path: Path) -> None:
    found = message_parsing(path.read_text(encoding="utf-8"))
    where = path.relative_to(ROOT)
    assert not found, f"{where} reads the text of a message instead of its fields:\n" + "\n".join(found)


PROBE = '''
import re
import warnings

def truncated(encode, texts):
    with warnings.catch_warnings(record=True) as caught:
        encode(texts)
    for w in caught:
        count = re.match(r"(\\\\d+) of ", str(w.message))
        if "have no qrels" not in str(w.message):
            print(w)

def load(make):
    try:
        return make()
    except ValueError as e:
        errors = getattr(e, "errors", None)
        text = "; ".join(str(x["msg"]).removeprefix("Value error, ") for x in errors()) if errors else str(e)
        if text.startswith("dtype"):
            raise
        return text[:10]
'''


def test_the_parsing_check_catches_what_the_cli_used_to_do() -> None:
    found = message_parsing(PROBE)
    assert len(found) == 5, found
    for needle in ("imports re", "compares message text", "inspects message text: str(x['msg']).removeprefix",
                   "inspects message text: text.startswith", "slices message text: text[:10]"):  # fmt: skip
        assert any(needle in line for line in found), (needle, found)
    fields = "def f(caught):\n    for w in caught:\n        if w.message.count > 0:\n            print(w.message)\n"
    assert message_parsing(fields) == []  # fields are read, not text


PACKAGES = ("bge_icl", "bge_icl_cli", "bge_icl_server", "bge_icl_client", "langchain_bge_icl", "llamaindex_bge_icl",
            "mteb_bge_icl", "ray_bge_icl")  # fmt: skip


def _functions(path: Path) -> list[tuple[str, int]]:
    """Each function (methods and nested ones too) of ``path`` with its code lines."""
    source = path.read_text(encoding="utf-8")
    return [(node.name, _code_lines(source, node.lineno, node.end_lineno)) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]  # fmt: skip


def test_the_server_routes_are_thin() -> None:
    """vLLM's shape: the app only wires routes (``create_app`` at most 40 code lines)."""
    lines = dict(_functions(ROOT / "bge_icl_server" / "app.py"))["create_app"]
    assert lines <= 40, f"create_app has {lines} code lines"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_over_50_code_lines(package: str) -> None:
    too_long = [f"{path.relative_to(ROOT)}: {name} ({lines})" for path in sorted((ROOT / package).rglob("*.py"))
                for name, lines in _functions(path) if lines > 50]  # fmt: skip
    assert not too_long, f"functions over 50 code lines: {too_long}"
