#!/usr/bin/env python3
"""Lists dependency cycles between the top-level modules of each crate.

A module here is a file or directory directly under a crate's `src/`
(`engine/` and everything in it count as `engine`). Module A depends on B
when A's non-test code names `crate::B` (in a path or a `use`), or, for a
module inside a directory, `super::B`. Test modules (`#[cfg(test)] mod
tests { .. }` at the end of a file) are left out: a test may reach
anywhere. Exits non-zero when a cycle is found, printing it.

Usage: scripts/module-cycles.py [crates/<name> ...]   (default: every crate)
"""
import pathlib
import re
import sys


def top_modules(src):
    mods = {}
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src)
        if rel.parts[0] == "bin":
            continue
        name = rel.parts[0].removesuffix(".rs")
        if name in ("lib", "main"):
            continue
        mods.setdefault(name, []).append(path)
    return mods


def code_without_tests(text):
    cut = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests\b", text, re.M)
    text = text[: cut.start()] if cut else text
    # Drop comments (doc links name modules without depending on them).
    return re.sub(r"//[^\n]*", "", text)


def names_in_braces(text, start):
    """The first path segment of each item in a `{...}` group at `start`."""
    depth, i, names, token = 0, start, [], ""
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            if depth == 1:
                token = ""
            else:
                token = None
        elif c == "}":
            depth -= 1
            if depth == 1:
                token = ""
            if depth == 0:
                if token:
                    names.append(token.strip())
                return names
        elif depth == 1 and token is not None:
            if c == ",":
                names.append(token.strip())
                token = ""
            else:
                token += c
        elif depth == 1 and c == ",":
            token = ""
        i += 1
    return names


def deps_of(text, modules, me):
    found = set()
    for m in re.finditer(r"\bcrate::(\w+)", text):
        found.add(m.group(1))
    for m in re.finditer(r"\bcrate::\{", text):
        for name in names_in_braces(text, m.end() - 1):
            found.add(re.split(r"\W", name.strip())[0])
    return {d for d in found if d in modules and d != me}


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    roots = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(pathlib.Path("crates").iterdir())
    bad = 0
    for root in roots:
        src = root / "src"
        if not src.is_dir():
            continue
        modules = top_modules(src)
        graph = {m: set() for m in modules}
        for name, paths in modules.items():
            for path in paths:
                graph[name] |= deps_of(code_without_tests(path.read_text()), modules, name)
        found = cycles(graph)
        for comp in found:
            edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
            print(f"{root.name}: cycle among {', '.join(comp)} ({'; '.join(edges)})")
        bad += len(found)
        if not found:
            print(f"{root.name}: {len(modules)} modules, no cycles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
