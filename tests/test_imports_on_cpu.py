"""The project's import graph: no cycles, entry modules imported by none, layers pointing one way.

Read from the source with ``ast`` (nothing is imported), counting every import: module level,
inside functions, under ``if TYPE_CHECKING``. ``from launch import foo`` is an import of module
``launch.foo`` when ``launch/foo.py`` exists, else of the package ``launch``; importing
``reward.extract`` from outside ``reward`` also runs ``reward/__init__.py``, so it counts as an
import of ``reward`` too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rollout", "learner", "reward", "meta", "launch", "data")

ENTRY_MODULES = {
    "launch.run": "python -m launch.run: the Hydra training entry point",
    "launch.evaluate": "python -m launch.evaluate: held-out evaluation of a checkpoint",
    "launch.compare": "python -m launch.compare: strategies x seeds, one run each",
    "launch.export": "python -m launch.export: a checkpoint as a Hugging Face model folder",
    "launch.serve": "python -m launch.serve: an exported folder behind vLLM's OpenAI server",
    "launch.bench.__main__": "python -m launch.bench <name>: the benchmarks",
}
"""Modules whose product is their command line: no project module may import them."""

LIBRARY_CLIS = {
    "launch.analyze": "the run report: written at the end of every run (launch.pipeline) and "
                      "read by launch.compare; its command line rewrites one run's report",
    "launch.build_model": "the embedded model: built on first use by launch.pipeline; its "
                          "command line builds one with other settings",
    "launch.bench.host_step": "the decode step's host microseconds: measured in-process by "
                              "launch.bench rollout, and run as a file over another commit's "
                              "tree for --baseline",
    "launch.bench.rollout_arms": "the rollout benchmark's arms: built in-process by launch.bench "
                                 "rollout, and served by a child over another commit's tree for "
                                 "--baseline",
    "launch.bench.learner_memory": "the learner's memory and checkpoint costs: run in-process by "
                                   "launch.bench learner --memory, and over another commit's "
                                   "tree for --baseline",
}
"""Modules with a ``__main__`` block that are libraries first: importing them is fine."""

BENCH_MAIN = "launch.bench.__main__"
BENCH_PARTS = {"launch.bench.rollout", "launch.bench.learner", "launch.bench.trl",
               "launch.bench.pipeline", "launch.bench.sync", "launch.bench.gpu"}
"""Subcommands of ``python -m launch.bench``: imported by its ``__main__`` alone (the shared
helpers are ``BENCH_HELPERS``)."""
BENCH_HELPERS = {
    "launch.bench.harness": "interleaved timing, statistics, tables: every benchmark",
    "launch.bench.baseline": "another commit's tree beside this one (--baseline)",
    "launch.bench.host_step": "the decode step's host microseconds (rollout; any tree)",
    "launch.bench.rollout_arms": "the rollout benchmark's engines and arms (any tree)",
    "launch.bench.learner_memory": "the learner's memory and checkpoint costs (any tree)",
}

LEAF_FOR_ALL = {"launch.checks"}
"""Imported from every layer (ConfigError, require); imports no project module itself."""


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str  # file:line
    in_main_block: bool  # inside the importer's own `if __name__ == "__main__":`


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__"
                    for c in test.comparators))


def _imports(tree: ast.AST):
    """(node, inside a `__main__` guard) for every Import / ImportFrom in the tree."""
    stack = [(tree, False)]
    while stack:
        node, in_main = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_main
        guard = in_main or _is_main_guard(node)
        stack.extend((child, guard) for child in ast.iter_child_nodes(node))


def _targets(node, importer: str, is_package: bool, modules: set[str]) -> list[str]:
    """The project modules an import statement loads (without their parent packages)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n for n in names if n in modules]
    if node.level:  # relative: from the importer's package, one level up per extra dot
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        if sub in modules:
            out.append(sub)
        elif prefix in modules:
            out.append(prefix)
    return out


def import_graph() -> tuple[dict[str, list[Edge]], set[str]]:
    files = module_files()
    modules = set(files)
    graph: dict[str, list[Edge]] = {m: [] for m in modules}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, in_main in _imports(tree):
            for dst in dict.fromkeys(_targets(node, mod, is_package, modules)):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                parts = dst.split(".")
                # the packages above dst run first, unless the importer is inside them already
                for i in range(1, len(parts) + 1):
                    target = ".".join(parts[:i])
                    inside = mod == target or mod.startswith(target + ".")
                    if target in modules and target != mod and (target == dst or not inside):
                        graph[mod].append(Edge(mod, target, where, in_main))
    return graph, modules


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted({e.dst for e in graph[root]})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted({e.dst for e in graph[w]}))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def cycle_chain(graph: dict[str, list[Edge]], comp: list[str], start: str) -> list[Edge]:
    """A shortest cycle through `start` inside the component (breadth first)."""
    members = set(comp)
    prev: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in graph[v]:
                if e.dst not in members or e.dst in prev:
                    continue
                prev[e.dst] = e
                if e.dst == start:
                    chain = [e]
                    while chain[0].src != start:
                        chain.insert(0, prev[chain[0].src])
                    return chain
                nxt.append(e.dst)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {comp}")


def describe(chain: list[Edge]) -> str:
    return " -> ".join([chain[0].src] + [f"{e.dst} ({e.where})" for e in chain])


def cycles_of(graph: dict[str, list[Edge]], comp: list[str]) -> list[list[Edge]]:
    """A shortest cycle through each module of the component, each cycle once."""
    out, seen = [], set()
    for start in comp:
        chain = cycle_chain(graph, comp, start)
        key = frozenset((e.src, e.dst) for e in chain)
        if key not in seen:
            seen.add(key)
            out.append(chain)
    return out


def test_the_graph_sees_every_kind_of_import():
    graph, modules = import_graph()
    assert {"launch.run", "launch.config", "rollout.worker", "meta"} <= modules
    dsts = {m: {e.dst for e in es} for m, es in graph.items()}
    assert "launch.config" in dsts["launch.run"]  # module level
    assert "launch.trainer" in dsts["launch.pipeline"]  # inside a function
    assert "meta.registry" in dsts["meta"]  # a package's __init__
    assert "reward" in dsts["data.loaders"]  # reward/__init__.py runs for reward.extract


def test_no_import_cycles():
    graph, _ = import_graph()
    cycles = [c for c in strongly_connected(graph)
              if len(c) > 1 or any(e.dst == c[0] for e in graph[c[0]])]
    assert not cycles, "import cycles (each chain: importer -> imported (where)):\n" + "\n".join(
        f"  {{{', '.join(c)}}}:\n" + "\n".join(f"    {describe(ch)}" for ch in cycles_of(graph, c))
        for c in cycles)


def test_entry_modules_are_imported_by_no_module():
    graph, modules = import_graph()
    with_main = {m for m, p in module_files().items()
                 if p.name == "__main__.py" or any(_is_main_guard(n) for n in ast.walk(ast.parse(
                     p.read_text())))}
    assert with_main == set(ENTRY_MODULES) | set(LIBRARY_CLIS), (
        "a module gained or lost a `__main__` block: list it in ENTRY_MODULES (a command line "
        "nothing imports) or LIBRARY_CLIS (a library with a command line)")
    bad = [e for es in graph.values() for e in es
           if e.dst in ENTRY_MODULES and not e.in_main_block]
    assert not bad, "entry modules imported:\n" + "\n".join(
        f"  {e.where}: {e.src} imports {e.dst}" for e in bad)
    in_bench = {m for m in modules if m.startswith("launch.bench.")}
    assert in_bench == BENCH_PARTS | {BENCH_MAIN} | set(BENCH_HELPERS), (
        "launch/bench/ gained or lost a module: list a subcommand in BENCH_PARTS (or a shared "
        "helper in BENCH_HELPERS)")
    parts = [e for es in graph.values() for e in es
             if e.dst in BENCH_PARTS and e.src != BENCH_MAIN]
    assert not parts, [f"{e.where}: {e.src} imports {e.dst}" for e in parts]


def test_lower_layers_do_not_import_launch():
    """rollout/, learner/, reward/, meta/ and data/ are configured by launch/ and never import it
    (their config schemas live next to them: rollout/config.py, learner/config.py), except for
    launch.checks, a leaf that imports no project module."""
    graph, _ = import_graph()
    allowed = LEAF_FOR_ALL | {"launch"}  # launch/__init__.py, which runs first, imports nothing
    bad = [e for m, es in graph.items() if not m.startswith("launch") for e in es
           if (e.dst == "launch" or e.dst.startswith("launch.")) and e.dst not in allowed]
    assert not bad, "\n".join(f"{e.where}: {e.src} imports {e.dst}" for e in bad)
    for leaf in allowed:
        assert not graph[leaf], [f"{e.where}: {e.dst}" for e in graph[leaf]]


def test_package_layers_point_one_way():
    """Package level, launch.checks aside: in the order meta, rollout, learner, reward, data,
    launch, a package imports only packages before it."""
    order = ["meta", "rollout", "learner", "reward", "data", "launch"]
    graph, _ = import_graph()
    up = defaultdict(list)
    for m, es in graph.items():
        for e in es:
            a, b = m.split(".")[0], e.dst.split(".")[0]
            if e.dst in LEAF_FOR_ALL | {"launch"}:  # checked above: leaves
                continue
            if a != b and order.index(b) > order.index(a):
                up[(a, b)].append(e.where)
    assert not up, dict(up)


def test_the_cycle_finder_reports_a_cycle_with_its_chain():
    def e(a, b):
        return Edge(a, b, f"{a}.py:1", False)

    graph = {"a": [e("a", "b")], "b": [e("b", "c")], "c": [e("c", "a"), e("c", "d")],
             "d": [], "s": [e("s", "s")]}
    comps = strongly_connected(graph)
    assert ["a", "b", "c"] in comps and ["d"] in comps
    (chain,) = cycles_of(graph, ["a", "b", "c"])  # the same cycle from each of its modules
    assert describe(chain) == "a -> b (a.py:1) -> c (b.py:1) -> a (c.py:1)"
    assert [e.dst for e in cycle_chain(graph, ["s"], "s")] == ["s"]
