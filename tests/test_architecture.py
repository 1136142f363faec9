"""The package's shape, read from the code: layers, no import cycles, small modules, empty __init__ files,
and what a CGI request process imports.

Imports are read with `ast` from every module under lib/wid, those inside functions included (a lazy
import is still a dependency); imports under `if TYPE_CHECKING:` are for the type checker only and do
not count.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
CGI_BIN = LIB.parent / "cgi-bin"
MAX_LINES = 400
# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = (("config", "config_parsers", "log", "metrics"), ("core",), ("store",), ("net",), ("upstreams",), ("service",),
          ("web",), ("cli",))


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (or package, when no module of that name exists)
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where} imports {self.target}"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((LIB / "wid").rglob("*.py")):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skip.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return skip


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    where = path.relative_to(LIB.parent) if path.is_relative_to(LIB.parent) else path
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        found += [Import(name, t, f"{where}:{node.lineno}") for t in targets if t.split(".")[0] == "wid"]
    return list(dict.fromkeys(found))


def _graph() -> list[Import]:
    modules = _modules()
    return [imp for name, path in modules.items() for imp in _imports(name, path, modules)]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return None


def _cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.target != edge.source and not edge.target.startswith(edge.source + "."):
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_layers_are_known() -> None:
    unknown = sorted(name for name in _modules() if name != "wid" and _layer(name) is None)
    assert not unknown, f"modules outside every layer (place them in LAYERS): {unknown}"


def test_no_layer_imports_a_higher_one() -> None:
    names = [" / ".join(layer) for layer in LAYERS]
    offending = []
    for edge in _graph():
        source, target = _layer(edge.source), _layer(edge.target)
        if source is not None and target is not None and target > source:
            offending.append(f"{edge} ({names[source]} must not import {names[target]})")
    assert not offending, "imports against the layer order:\n" + "\n".join(offending)


def test_no_import_cycles() -> None:
    edges = _graph()
    problems = []
    for component in _cycles(edges):
        members = set(component)
        inside = sorted(str(e) for e in edges if e.source in members and e.target in members and e.source != e.target)
        problems.append(" <-> ".join(component) + ":\n  " + "\n  ".join(inside))
    assert not problems, "import cycles (function-level imports included):\n" + "\n".join(problems)


def test_no_module_over_the_size_limit() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _modules().values()}
    big = sorted(f"{path.relative_to(LIB.parent)}: {n} lines" for path, n in sizes.items() if n > MAX_LINES)
    assert not big, f"modules over {MAX_LINES} lines (split them by what they do):\n" + "\n".join(big)


def test_package_init_files_are_empty() -> None:
    filled = sorted(str(p.relative_to(LIB.parent)) for p in (LIB / "wid").rglob("__init__.py") if p.read_text().strip())
    assert not filled, f"package __init__ files must stay empty: {filled}"


def test_the_checks_see_function_level_imports_and_skip_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from wid.web import app\n"
                      "def f():\n    from wid.web.request import Request\n    import wid.cli.main\n")
    found = {(imp.target, imp.where.rsplit(":", 1)[1]) for imp in _imports("wid.core.m", source, _modules())}
    assert found == {("wid.web.request", "5"), ("wid.cli.main", "6")}
    cycle = [Import("wid.a", "wid.b", "a:1"), Import("wid.b", "wid.c", "b:1"), Import("wid.c", "wid.a", "c:1"),
             Import("wid.c", "wid.d", "c:2")]
    assert _cycles(cycle) == [["wid.a", "wid.b", "wid.c"]]


def _future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names) for node in tree.body)


def _named_tuples(tree: ast.Module) -> list[str]:
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(isinstance(base, ast.Name | ast.Attribute) and ast.unparse(base).endswith("NamedTuple")
                    for base in node.bases)]


def test_named_tuples_live_in_modules_without_postponed_annotations() -> None:
    """With `from __future__ import annotations`, typing.NamedTuple compiles every field's annotation string
    when the module is imported (about half a million instructions a field), which each CGI process pays:
    docs/architecture.md, "What a request imports"."""
    offending = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if _future_annotations(tree) and (classes := _named_tuples(tree)):
            offending.append(f"{name} ({', '.join(classes)})")
    assert not offending, f"drop `from __future__ import annotations` from: {offending}"

# What no CGI request process may import (docs/architecture.md, "What a request imports"): each costs
# every request its import (`dataclasses` brings `inspect`, `dis`, `tokenize`, `ast`: about a quarter
# of an exchange's instructions) or belongs to operators, tests or the Droplet side. `http.cookies` (with
# store/browser_state.py, seven million instructions) is for the OAuth flows' browser state only; `hashlib`
# (OpenSSL's _hashlib, eleven million) for the requests that hash: an exchange or an API call does not.
# `http.client` brings `email` and `ssl` (net/http1.py is the proxy's client); `ssl` comes only with an
# https connection, when one is made. `wsgiref` (web/cgi.py writes the CGI answer), the `sqlite3` package
# with its `datetime` and `threading` cost 8 M instructions together: storage.py uses `_sqlite3` and
# `_thread` themselves.
REQUEST_FORBIDDEN = ("dataclasses", "inspect", "getpass", "shutil", "paramiko", "yaml", "requests", "hcl2",
                     "prometheus_client", "http.cookies", "hashlib", "http.client", "email", "ssl", "wsgiref",
                     "sqlite3", "datetime", "threading", "pathlib")
# git.py serves git with dulwich, which imports `dataclasses` (and so `inspect`) in dulwich/file.py and
# `shutil` in dulwich/index.py: a git request pays for them whatever lib/wid does. The OAuth callbacks
# (callback.py; atproto.py serves ATProto's flow beside its XRPC calls) read the flow's cookie; atproto.py
# resolves a handle several ways at once, in threads (dulwich uses them too).
REQUEST_ALLOWED = {"git.py": frozenset({"dataclasses", "inspect", "shutil", "hashlib", "threading", "pathlib"}),
                   "callback.py": frozenset({"http.cookies", "hashlib"}),
                   "atproto.py": frozenset({"http.cookies", "hashlib", "threading"}),
                   "droplet_create.py": frozenset({"hashlib"}), "oidc_prove.py": frozenset({"hashlib"}),
                   "metrics.py": frozenset({"hashlib"})}
_PROBE = ("import sys\nimport {modules}\n"
          "print(' '.join(m for m in {forbidden!r} if m in sys.modules))")


def _forbidden_imports(*modules: str) -> set[str]:
    """Which REQUEST_FORBIDDEN modules importing `modules` loads, in a fresh isolated interpreter (-I: no
    PYTHONPATH, no user site, no current directory, as the CGI scripts run)."""
    code = _PROBE.format(modules=", ".join(modules), forbidden=REQUEST_FORBIDDEN)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _handler_module(script: Path) -> str:
    found = re.findall(r"^from (wid[\w.]*) import handler$", script.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(found) == 1, f"cgi-bin/{script.name} must import exactly one request handler"
    return found[0]


@pytest.mark.parametrize("script", sorted(p.name for p in CGI_BIN.glob("*.py")))
def test_a_cgi_request_imports_nothing_it_should_not(script: str) -> None:
    handler = _handler_module(CGI_BIN / script)
    loaded = _forbidden_imports(handler, "wid.web.app", "wid.web.cgi")
    unexpected = sorted(loaded - REQUEST_ALLOWED.get(script, frozenset()))
    assert not unexpected, (f"cgi-bin/{script} ({handler}) imports {', '.join(unexpected)} on every request: "
                            "move the import into the function that needs it, or use a NamedTuple or a plain "
                            "class instead of a dataclass (python -X importtime shows who imports it)")


def test_the_request_import_check_sees_indirect_imports() -> None:
    assert _forbidden_imports("wid.web.app") == set()
    assert _forbidden_imports("dataclasses") == {"dataclasses", "inspect"}
    assert _forbidden_imports("tempfile") == {"shutil"}  # tempfile imports shutil
    assert _forbidden_imports("http.client") == {"http.client", "email", "ssl", "datetime"}
    assert _forbidden_imports("sqlite3") == {"sqlite3", "datetime"}


@pytest.mark.parametrize("modules", ["wid.web.handlers.oidc_issue", "wid.web.handlers.do_proxy, wid.net.upstream, "
                                     "wid.upstreams.digitalocean.api"])
def test_the_busiest_routes_need_no_url_parser(modules: str) -> None:
    """An exchange and a DigitalOcean API call, with their settings read as every request reads them, load
    no `urllib.parse` (and with it `ipaddress`: 9 M instructions a CGI process): config_parsers reads and
    splits URLs by hand, core/uri.py quotes a path, and a path escape, a query string or RFC 8693's form
    body imports the parser where it is met."""
    code = (f"import sys\nimport {modules}, wid.web.app, wid.web.cgi\nfrom wid import config\n"
            "config.settings()\nprint(' '.join(m for m in ('urllib.parse', 'ipaddress') if m in sys.modules))")
    env = {"PATH": "/usr/bin:/bin", "THIS_ENDPOINT": "https://wid.example.test",
           "DIGITALOCEAN_API_URL": "http://127.0.0.1:9000/base", "WID_TRUSTED_ISSUERS": "https://issuer.example"}
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
