#!/usr/bin/env python3
"""Checks that the RPC names and proto files the k6 scripts (loadtest/k6/) name exist
(scripts/check-k6.sh, check 2).

Usage:
  scripts/k6/rpcnames.py <schema.json> <proto_root> <k6_dir> <script.js>...
      Every 'pkg.Service/Method' string literal in the scripts must name an rpc of a service in
      <schema.json> (`dispatch-loadgen proto-schema`: the API from the descriptor set compiled into
      the binaries), every '*.proto' string literal must exist under the proto root the scripts
      load from (their PROTO_DIR default), and that root must be <proto_root>. Prints errors and
      exits 1 on failure.
"""
import json
import os
import re
import sys

METHOD_RE = re.compile(r"""(['"`])/?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\.([A-Za-z_]\w*)/([A-Za-z_]\w*)\1""")
PROTO_LIT_RE = re.compile(r"""(['"`])([^'"`\s]+\.proto)\1""")
PROTO_DIR_DEFAULT_RE = re.compile(r"""envStr\(\s*['"]PROTO_DIR['"]\s*,\s*['"]([^'"]+)['"]\s*\)""")


def strip_js_comments(src):
    # Good enough for our scripts: drop // line comments not inside quotes and /* */ blocks.
    out = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), src, flags=re.S)
    lines = []
    for line in out.split("\n"):
        q = None
        cut = len(line)
        i = 0
        while i < len(line):
            c = line[i]
            if q:
                if c == "\\":
                    i += 2
                    continue
                if c == q:
                    q = None
            elif c in "'\"`":
                q = c
            elif c == "/" and line[i + 1:i + 2] == "/":
                cut = i
                break
            i += 1
        lines.append(line[:cut])
    return "\n".join(lines)


def check_methods(schema, root, k6_dir, scripts):
    errors = []
    n_methods = 0
    proto_dir_default = None
    for script in scripts:
        with open(script, encoding="utf-8") as f:
            m = PROTO_DIR_DEFAULT_RE.search(f.read())
        if m:
            proto_dir_default = m.group(1)
    if proto_dir_default is None:
        errors.append("no PROTO_DIR default (envStr('PROTO_DIR', '...')) found in the k6 scripts")
        proto_root_default = root
    else:
        proto_root_default = os.path.normpath(os.path.join(k6_dir, proto_dir_default))
        if os.path.normpath(proto_root_default) != os.path.normpath(root):
            errors.append(f"PROTO_DIR default {proto_dir_default!r} resolves to {proto_root_default}, "
                          f"not the proto root {root}")
    for script in scripts:
        with open(script, encoding="utf-8") as f:
            src = strip_js_comments(f.read())
        for m in METHOD_RE.finditer(src):
            n_methods += 1
            pkg, svc, rpc = m.group(2), m.group(3), m.group(4)
            full = f"{pkg}.{svc}"
            line = src.count("\n", 0, m.start()) + 1
            where = f"{os.path.relpath(script)}:{line}"
            if full not in schema["services"]:
                known = ", ".join(sorted(schema["services"])) or "(none)"
                errors.append(f"{where}: '{full}/{rpc}': no service {full} in {root} (services: {known})")
            elif rpc not in schema["services"][full]["rpcs"]:
                known = ", ".join(sorted(schema["services"][full]["rpcs"]))
                errors.append(f"{where}: '{full}/{rpc}': service {full} has no rpc {rpc} (rpcs: {known})")
        for m in PROTO_LIT_RE.finditer(src):
            rel = m.group(2)
            line = src.count("\n", 0, m.start()) + 1
            if not os.path.isfile(os.path.join(proto_root_default, rel)):
                errors.append(f"{os.path.relpath(script)}:{line}: proto file '{rel}' not found under {proto_root_default}")
    if n_methods == 0:
        errors.append("no 'package.Service/Method' strings found in the k6 scripts")
    return errors, n_methods


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        schema = json.load(f)
    if not schema.get("services"):
        print(f"rpcnames: no services in {argv[0]}", file=sys.stderr)
        return 1
    errors, n = check_methods(schema, argv[1], argv[2], argv[3:])
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"  {n} rpc name literal(s) match proto services")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
