#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The folder layering of the tree (docs/architecture.md, "Folders and their dependencies").

Reads every `#include "..."` of the product's sources (lib/, common/, include/, plugins/, tools/, perf/),
resolves it to a file of the tree the way the build does (the including file's own folder first, then
lib/, common/, include/, tools/), and fails on
  - an include from one folder into another that the table below does not allow (a wrong-way edge), or
  - a cycle between folders (which the table cannot allow, since it is checked for being acyclic too).

  layering.py ROOT          check the tree at ROOT
  layering.py --self-test   check the checker: a made-up tree with a back-edge and one with a cycle fail,
                            a clean one passes
"""
import os
import re
import sys
import tempfile

# Each folder and the folders it may include from. A folder not listed is an error (a new folder is a
# decision: add it here and to docs/architecture.md). tests/ may include anything and is not checked.
ALLOWED = {
    "common": [],
    "include": [],
    "lib/base": ["common"],
    "lib/transfer": ["lib/base", "common"],
    "lib/control": ["lib/base", "common"],
    "lib/core": ["lib/base", "common", "include"],
    "lib/sandbox": ["lib/core", "lib/base", "common"],
    "lib/migration": ["lib/control", "lib/transfer", "lib/sandbox", "lib/core", "lib/base", "common", "include"],
    "lib/shim": ["lib/sandbox", "lib/core", "lib/base", "common", "include"],
    "plugins/hostnccl": ["common"],
    "plugins/nullnccl": ["common"],
    "tools/common": ["lib/base"],
    "tools/tm_train": ["tools/common", "lib/base", "include", "common"],
    "tools/tmrun": ["tools/common", "lib/migration", "lib/control", "lib/base", "common"],
    "tools/trainmoverd": ["lib/migration", "lib/control", "lib/base", "common"],
    "tools/tmctl": ["tools/common", "lib/control", "lib/base", "common"],
    "tools/trainmover_info": ["lib/base", "common"],
    "tools/harness": [],
    "perf": ["lib/control", "lib/transfer", "lib/base", "common"],
}
SOURCE_TOPS = ["lib", "common", "include", "plugins", "tools", "perf"]
SEARCH = ["lib", "common", "include", "tools"]  # the build's include folders, in order
SUFFIXES = (".h", ".hpp", ".c", ".cc", ".cpp")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(rel):
    """The folder a file belongs to: lib/<x>, plugins/<x>, tools/<x>, or the top folder itself."""
    parts = rel.split("/")
    if parts[0] in ("lib", "plugins", "tools") and len(parts) > 2:
        return parts[0] + "/" + parts[1]
    return parts[0]


def edges(root):
    """Yields (including file, included file, from folder, to folder) for every resolved include."""
    for top in SOURCE_TOPS:
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if not f.endswith(SUFFIXES):
                    continue
                path = os.path.join(d, f)
                rel = os.path.relpath(path, root)
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                for name in INCLUDE.findall(text):
                    for base in [d] + [os.path.join(root, s) for s in SEARCH]:
                        cand = os.path.normpath(os.path.join(base, name))
                        if os.path.isfile(cand):
                            to = os.path.relpath(cand, root)
                            yield rel, to, folder_of(rel), folder_of(to)
                            break


def find_cycle(graph):
    """A cycle in {node: set(nodes)} as a list of nodes, or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def check(root, allowed):
    """The list of problems found in the tree at root (empty when it is layered as allowed)."""
    problems = []
    cyc = find_cycle({k: set(v) for k, v in allowed.items()})
    if cyc:
        problems.append("the allowed table itself has a cycle: " + " -> ".join(cyc))
    graph = {}
    for src, dst, a, b in edges(root):
        if a == b:
            continue
        graph.setdefault(a, set()).add(b)
        if a not in allowed:
            problems.append(f"{src}: folder {a} is not in the layering table")
        elif b not in allowed[a]:
            problems.append(f"{src} includes {dst}: {a} may not depend on {b}")
    cyc = find_cycle(graph)
    if cyc:
        problems.append("include cycle between folders: " + " -> ".join(cyc))
    return sorted(set(problems))


def self_test():
    def tree(files):
        d = tempfile.mkdtemp(prefix="layering-")
        for rel, text in files.items():
            os.makedirs(os.path.join(d, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as fh:
                fh.write(text)
        return d

    table = {"common": [], "lib/base": ["common"], "lib/control": ["lib/base", "common"],
             "lib/migration": ["lib/control", "lib/base", "common"]}
    clean = tree({"common/a.h": "", "lib/base/log.h": '#include "a.h"\n',
                  "lib/control/conn.h": '#include "base/log.h"\n#include "conn2.h"\n', "lib/control/conn2.h": "",
                  "lib/migration/engine.cc": '#include "control/conn.h"\n#include "base/log.h"\n'})
    assert check(clean, table) == [], check(clean, table)
    back = tree({"lib/control/conn.h": '#include "migration/engine.h"\n', "lib/migration/engine.h": ""})
    p = check(back, table)
    assert any("lib/control may not depend on lib/migration" in x for x in p), p
    cyc = tree({"lib/control/conn.h": '#include "migration/engine.h"\n',
                "lib/migration/engine.h": '#include "control/conn.h"\n'})
    p = check(cyc, {"lib/control": ["lib/migration"], "lib/migration": ["lib/control"]})
    assert any("cycle" in x for x in p), p
    unknown = tree({"lib/newthing/x.h": '#include "base/log.h"\n', "lib/base/log.h": ""})
    p = check(unknown, table)
    assert any("not in the layering table" in x for x in p), p
    print("self-test: a clean tree passes; a back-edge, a cycle and an unlisted folder fail")


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--self-test":
        self_test()
        return 0
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    problems = check(sys.argv[1], ALLOWED)
    for p in problems:
        print("layering:", p)
    if problems:
        print(f"layering: {len(problems)} problem(s); the table is in tests/layering/layering.py and "
              "docs/architecture.md")
        return 1
    print("layering: every include between folders points the allowed way; no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
