#!/usr/bin/env python3
"""The layering rule (docs/architecture.md, "Layers"): a top-level module of
src/ may use only modules of a lower layer, never one of its own layer or
above. Lists every `crate::X` a file names (also inside `use crate::{..}`)
and prints each upward or sideways use with its file and line.

A new top-level module must be added to LAYERS (an unlisted one fails), so
the table stays the map. clap, argv's parser, is for src/cli/ only: the
library takes plain config. APART names pairs that must not meet even
where the layers would allow it (the vAccel client and server). Test files (`tests.rs`) are exempt: a test may
drive a lower layer through a higher one."""

import os
import re
import sys

# Lowest first. A module may import the modules of every earlier row.
LAYERS = [
    # Leaves: process-wide services every layer may use; they use nothing.
    ["marks", "trace", "signals", "diag", "teardown", "seccomp"],
    # The process's stdio (widening pipes asks seccomp about an outer filter).
    ["stdio"],
    ["memory"],
    ["vcpu", "image"],
    # Decoders of untrusted input: a guest's exits; vAccel's wire format
    # (both the remote plugin and the agent use it).
    ["hypercall", "vaccel"],
    ["accel"],
    ["devices"],
    ["vmm", "config"],
    ["builder"],
    # Features: each stands on the core, none on another.
    ["snapshot", "debug", "oci", "bench", "agent"],
    # Live orchestration: migration stands on snapshots; the control
    # socket drives both.
    ["migrate"],
    ["control"],
    ["pool"],
    ["serve"],
    # Only the CLI turns argv into config and prints.
    ["cli"],
]
RANK = {m: i for i, row in enumerate(LAYERS) for m in row}

# Pairs inside or across layers that must not meet, as (files under this
# folder, must not name this path, why). The vAccel client and server
# share only the wire format (src/vaccel/).
APART = [
    ("src/agent/", "accel::remote", "the agent is the server: the wire format is crate::vaccel"),
    ("src/accel/remote/", "agent", "the remote plugin is the client: the wire format is crate::vaccel"),
]

USE_GROUP = re.compile(r"crate::\{([^;]*?)\}\s*;", re.S)
PATH = re.compile(r"crate::(\w+)")


def names(line_text):
    found = set(PATH.findall(line_text))
    for group in USE_GROUP.findall(line_text):
        depth = 0
        item = ""
        for c in group + ",":
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            if c == "," and depth == 0:
                m = re.match(r"\s*(\w+)", item)
                if m:
                    found.add(m.group(1))
                item = ""
            else:
                item += c
    found.discard("self")
    return found


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    bad = []
    for root, _, files in os.walk("src"):
        for f in sorted(files):
            if not f.endswith(".rs") or f == "tests.rs" or root == "src" and f in ("main.rs", "lib.rs"):
                continue
            path = os.path.join(root, f)
            module = path[len("src/"):].split("/")[0].removesuffix(".rs")
            if module not in RANK:
                bad.append(f"{path}: module `{module}` is not in tools/layers.py's LAYERS")
                continue
            text = open(path, encoding="utf-8").read()
            # Comments and doc links name modules without using them.
            code = re.sub(r"//[^\n]*", "", text)
            # Join `use crate::{...};` groups onto their first line.
            for m in USE_GROUP.finditer(code):
                line = code.count("\n", 0, m.start()) + 1
                for n in names(m.group(0)):
                    check(bad, path, line, module, n)
            apart(bad, path, code)
            for i, line in enumerate(code.split("\n"), 1):
                for n in PATH.findall(line):
                    check(bad, path, i, module, n)
                if module != "cli" and re.search(r"\bclap::", line):
                    bad.append(f"{path}:{i}: clap outside src/cli/ (take plain config)")
    for b in sorted(set(bad)):
        print(b)
    if bad:
        print("upward or sideways imports: move the shared piece down a layer "
              "(docs/architecture.md, Layers)")
        return 1
    return 0


def apart(bad, path, code):
    for folder, banned, why in APART:
        if not path.startswith(folder):
            continue
        head, _, last = banned.rpartition("::")
        prefix = r"crate::" + (re.escape(head) + "::" if head else "")
        # `crate::a::b`, or `b` inside a `use crate::a::{..}` group.
        direct = re.compile(prefix + re.escape(last) + r"\b")
        group = re.compile(prefix + r"\{[^;]*?\b" + re.escape(last) + r"\b[^;]*?\}", re.S)
        for pat in (direct, group):
            for m in pat.finditer(code):
                line = code.count("\n", 0, m.start()) + 1
                bad.append(f"{path}:{line}: uses crate::{banned} ({why})")


def check(bad, path, line, module, used):
    if used == module or used == "self":
        return
    if used not in RANK:
        bad.append(f"{path}:{line}: crate::{used} is not in tools/layers.py's LAYERS")
    elif RANK[used] >= RANK[module]:
        bad.append(f"{path}:{line}: `{module}` (layer {RANK[module]}) uses `{used}` (layer {RANK[used]})")


if __name__ == "__main__":
    sys.exit(main())
