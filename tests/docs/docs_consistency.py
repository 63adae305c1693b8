#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Keeps the tools and the documentation together.

usage: docs_consistency.py SOURCE_ROOT TMRUN TMCTL TRAINMOVERD TRAINMOVER_INFO TM_TRAIN

Checks, from what the built tools print (--help, trainmover-info) against README.md, docs/*.md and
perf/README.md:
  1. every long flag a tool's --help prints is documented on that tool's page (and tmctl's subcommands);
  2. every TRAINMOVER_* parameter trainmover-info lists is in docs/configuration.md;
  3. every TRAINMOVER_* name the docs write is a parameter (or in ALLOWED below, with the reason);
  4. every long flag written after a tool's name on a command line in the docs (`tmctl migrate --rank 1`,
     `build/tools/tmrun/tmrun -n 2 -- ...`) is one that tool accepts, every `tmctl <word>` a subcommand, and
     every flag in the first column of a tool page's options table is that tool's;
  5. no page holds a merge's conflict markers.
Fix the docs (or the tool), not this test. Standard library only. Exit 0 pass, 1 fail.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(sys.argv[1])
TOOLS = dict(zip(["tmrun", "tmctl", "trainmoverd", "trainmover-info", "tm-train"], (os.path.abspath(p) for p in sys.argv[2:7])))
# The page that documents each tool's options.
PAGE = {"tmrun": "docs/tmrun.md", "tmctl": "docs/operator.md", "trainmoverd": "docs/operator.md",
        "trainmover-info": "docs/configuration.md", "tm-train": "docs/tm-train.md"}
# Names the docs may write although no tool knows them, each with its reason.
ALLOWED = {
    "TRAINMOVER_X": "placeholder for a parameter's name in the text of the invalid-value error (configuration.md)",
    "TRAINMOVER_TRAINMOVER_H_": "the include guard of trainmover.h, should a page quote it",
}
ALLOWED_FLAGS = {  # (tool, flag): reason
}
DOCS = ["README.md", "perf/README.md"] + sorted("docs/" + f for f in os.listdir(os.path.join(ROOT, "docs"))
                                                if f.endswith(".md"))
TOOL_RE = re.compile(r"(?<![\w.-])(tmrun|tmctl|trainmoverd|trainmover-info|tm-train)(?=[ \t]|$)")
FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def help_text(tool):
    r = subprocess.run([TOOLS[tool], "--help"], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def main():
    texts = {d: read(d) for d in DOCS}
    flags, subcommands = {}, set()
    for tool in TOOLS:
        h = help_text(tool)
        flags[tool] = set(FLAG_RE.findall(h)) | {"--help"}
        if len(flags[tool]) < 2 and tool != "trainmover-info":
            fail(f"{tool} --help printed no flags: {h!r}")
        if tool == "tmctl":
            subcommands = set(re.findall(r"^  ([a-z]+)\b", h, re.M))
            if not {"status", "migrate"} <= subcommands:
                fail(f"tmctl --help: subcommands not found ({sorted(subcommands)})")
    # 1. flags and subcommands documented on the tool's page
    for tool, fs in flags.items():
        page = texts[PAGE[tool]]
        for f in sorted(fs - {"--help"}):
            if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", page):
                fail(f"{tool} {f} (from --help) is not documented in {PAGE[tool]}")
    for sub in sorted(subcommands):
        if not re.search(rf"tmctl[^\n`]*\b{sub}\b", texts["docs/operator.md"]):
            fail(f"tmctl {sub} (from --help) is not shown in docs/operator.md")
    # 2./3. parameters
    info = subprocess.run([TOOLS["trainmover-info"]], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if not k.startswith("TRAINMOVER_")}).stdout
    params = set(re.findall(r"^(TRAINMOVER_[A-Z0-9_]+) = ", info, re.M))
    if len(params) < 5:
        fail(f"trainmover-info listed {len(params)} parameters: {info[:200]!r}")
    for p in sorted(params):
        if f"`{p}`" not in texts["docs/configuration.md"]:
            fail(f"{p} (trainmover-info) is not in docs/configuration.md")
    for doc, t in texts.items():
        for name in sorted(set(re.findall(r"TRAINMOVER_[A-Z0-9_]+", t))):
            if name not in params and name not in ALLOWED:
                fail(f"{doc}: {name} is not a parameter (trainmover-info) nor allowed with a reason")
    # 4. command lines in the docs: fenced code blocks and inline code
    checked = 0
    for doc, t in texts.items():
        fenced = False
        for lineno, line in enumerate(t.splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            for m in TOOL_RE.finditer(line):
                if not fenced and line[:m.start()].count("`") % 2 == 0:
                    continue  # prose
                tool = m.group(1)
                toks = re.split(r"`|\||;|&&|\s#\s|\)|\s--(?=\s|$)", line[m.end():])[0].split()
                if tool == "tmctl" and toks and re.fullmatch(r"[a-z]+", toks[0]) and toks[0] not in subcommands:
                    fail(f"{doc}:{lineno}: tmctl {toks[0]} is not a tmctl subcommand")
                for tok in toks:
                    f = re.match(r"--[a-z][a-z0-9-]*", tok)
                    if not f:
                        continue
                    checked += 1
                    if f.group(0) not in flags[tool] and (tool, f.group(0)) not in ALLOWED_FLAGS:
                        fail(f"{doc}:{lineno}: {tool} {f.group(0)} is not a flag of {tool} ({line.strip()[:100]})")
    for doc, t in texts.items():  # 5.
        for lineno, line in enumerate(t.splitlines(), 1):
            if re.match(r"(<{7}|>{7})( |$)|={7}$", line):
                fail(f"{doc}:{lineno}: a merge's conflict marker: {line[:40]}")
    for tool in ("tmrun", "tm-train"):
        for lineno, line in enumerate(texts[PAGE[tool]].splitlines(), 1):
            cell = re.match(r"^\|\s*([^|]*)\|", line)
            for f in FLAG_RE.findall(cell.group(1)) if cell else []:
                checked += 1
                if f not in flags[tool]:
                    fail(f"{PAGE[tool]}:{lineno}: {f} in the options table is not a flag of {tool}")
    print(f"{sum(len(v) for v in flags.values())} flags of {len(flags)} tools, {len(subcommands)} tmctl subcommands, "
          f"{len(params)} parameters; {checked} flags written in {len(texts)} pages checked")
    print("FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
