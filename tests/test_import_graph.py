"""The packages depend on each other in one direction: no import cycle between zipformer_fast's
subpackages (kernels included), counting imports inside functions too (a cycle held together by
lazy imports is still a cycle), and nothing in kernels/ imports ops/."""
import ast
import pathlib

import zipformer_fast

REPO = pathlib.Path(zipformer_fast.__file__).resolve().parents[1]


def unit_of(module: str) -> str:
    """zipformer_fast.ops.bias_norm -> zipformer_fast.ops; top-level modules are their own unit."""
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(path: pathlib.Path) -> str:
    if path.is_relative_to(REPO / "kernels"):
        rel = ("zipformer_fast", "kernels") + path.relative_to(REPO / "kernels").with_suffix("").parts
    else:
        rel = path.relative_to(REPO).with_suffix("").parts
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def imports_of(path: pathlib.Path):
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield target
            yield from (f"{target}.{a.name}" for a in node.names)  # `from pkg import module`


def dependency_graph():
    sources = list((REPO / "zipformer_fast").rglob("*.py")) + list((REPO / "kernels").rglob("*.py"))
    graph = {}
    for path in sources:
        src = unit_of(module_name(path))
        for target in imports_of(path):
            if target.startswith("zipformer_fast.") and unit_of(target) != src:
                graph.setdefault(src, set()).add(unit_of(target))
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_packages():
    graph = dependency_graph()
    assert "zipformer_fast.ops" in graph and "zipformer_fast.kernels" in graph["zipformer_fast.ops"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_kernels_import_only_triton_torch_and_the_runtime():
    graph = dependency_graph()
    assert graph.get("zipformer_fast.kernels", set()) <= {"zipformer_fast.runtime"}


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
