#!/usr/bin/env python3
"""Minimal .proto parser for scripts/check-k6.sh (no protoc needed).

Usage:
  protoschema.py schema <proto_root> <out.json>
      Parses every .proto under <proto_root> and writes services/rpcs, messages/fields and
      enums as JSON (consumed by tools/harness.mjs).
  protoschema.py methods <proto_root> <k6_dir> <script.js>...
      Static check: every 'pkg.Service/Method' string literal in the scripts must name an rpc
      declared in a `service X {` block, and every '*.proto' string literal must exist under the
      default proto root. Prints errors and exits 1 on failure.

Handles what proto3 files here use: package, import, option, message (nested), enum, oneof,
map<K,V>, repeated/optional, reserved, service/rpc with stream. Not a full grammar.
"""

# Over 400 lines because it carries its own .proto tokenizer and recursive-descent parser (about
# 240 lines) so that the k6 check needs no protoc; the `methods` static check of the scripts would
# move to a module of its own first.
import json
import os
import re
import sys

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}

TOKEN_RE = re.compile(
    r'\s+|//[^\n]*|/\*.*?\*/|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[A-Za-z_][\w.]*|\.[A-Za-z_][\w.]*|-?\d[\w.]*|[{}()\[\]<>;=,:]',
    re.S,
)


class ParseError(Exception):
    pass


def tokenize(text, path):
    toks = []
    pos = 0
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise ParseError(f"{path}:{line}: unexpected character {text[pos]!r}")
        t = m.group(0)
        pos = m.end()
        if t.isspace() or t.startswith("//") or t.startswith("/*"):
            continue
        toks.append((t, text.count("\n", 0, m.start()) + 1))
    return toks


class Parser:
    def __init__(self, path, text):
        self.path = path
        self.toks = tokenize(text, path)
        self.i = 0
        self.package = ""
        self.imports = []
        self.messages = {}  # full name -> {fields: {...}, oneofs: {...}}
        self.enums = {}  # full name -> [value names]
        self.services = {}  # full name -> {rpc: {...}}

    def peek(self, k=0):
        j = self.i + k
        return self.toks[j][0] if j < len(self.toks) else None

    def line(self):
        return self.toks[min(self.i, len(self.toks) - 1)][1] if self.toks else 0

    def next(self):
        if self.i >= len(self.toks):
            raise ParseError(f"{self.path}: unexpected end of file")
        t = self.toks[self.i][0]
        self.i += 1
        return t

    def expect(self, want):
        t = self.next()
        if t != want:
            raise ParseError(f"{self.path}:{self.toks[self.i - 1][1]}: expected {want!r}, got {t!r}")
        return t

    def skip_statement(self):
        depth = 0
        while True:
            t = self.next()
            if t == "{":
                depth += 1
            elif t == "}":
                depth -= 1
                if depth == 0:
                    return
            elif t == ";" and depth == 0:
                return

    def skip_field_options(self):
        if self.peek() == "[":
            depth = 0
            while True:
                t = self.next()
                if t == "[":
                    depth += 1
                elif t == "]":
                    depth -= 1
                    if depth == 0:
                        break

    def parse(self):
        while self.i < len(self.toks):
            t = self.peek()
            if t == "syntax" or t == "edition":
                self.skip_statement()
            elif t == "package":
                self.next()
                self.package = self.next()
                self.expect(";")
            elif t == "import":
                self.next()
                if self.peek() in ("public", "weak"):
                    self.next()
                self.imports.append(self.next().strip("\"'"))
                self.expect(";")
            elif t == "option":
                self.skip_statement()
            elif t == "message":
                self.parse_message(self.package)
            elif t == "enum":
                self.parse_enum(self.package)
            elif t == "service":
                self.parse_service()
            elif t == "extend":
                self.skip_statement()
            elif t == ";":
                self.next()
            else:
                raise ParseError(f"{self.path}:{self.line()}: unexpected {t!r} at top level")
        return self

    def qual(self, scope, name):
        return f"{scope}.{name}" if scope else name

    def parse_enum(self, scope):
        self.expect("enum")
        name = self.qual(scope, self.next())
        self.expect("{")
        values = []
        while self.peek() != "}":
            t = self.peek()
            if t in ("option", "reserved"):
                self.skip_statement()
                continue
            if t == ";":
                self.next()
                continue
            vname = self.next()
            self.expect("=")
            num = self.next()
            self.skip_field_options()
            self.expect(";")
            values.append({"name": vname, "number": int(num, 0)})
        self.expect("}")
        self.enums[name] = values

    def parse_field(self, msg, scope, oneof=None):
        label = None
        if self.peek() in ("repeated", "optional", "required"):
            label = self.next()
        if self.peek() == "map" and self.peek(1) == "<":
            self.next()
            self.expect("<")
            ktype = self.next()
            self.expect(",")
            vtype = self.next()
            self.expect(">")
            fname = self.next()
            self.expect("=")
            num = self.next()
            self.skip_field_options()
            self.expect(";")
            msg["fields"][fname] = {"type": "map", "key": ktype, "value": vtype, "scope": scope, "number": int(num)}
            return
        ftype = self.next()
        fname = self.next()
        self.expect("=")
        num = self.next()
        self.skip_field_options()
        self.expect(";")
        msg["fields"][fname] = {
            "type": ftype, "scope": scope, "number": int(num),
            "repeated": label == "repeated", "oneof": oneof,
        }

    def parse_message(self, scope):
        self.expect("message")
        name = self.qual(scope, self.next())
        msg = {"fields": {}, "oneofs": {}}
        self.messages[name] = msg
        self.expect("{")
        while self.peek() != "}":
            t = self.peek()
            if t == "message":
                self.parse_message(name)
            elif t == "enum":
                self.parse_enum(name)
            elif t in ("option", "reserved", "extensions", "extend"):
                self.skip_statement()
            elif t == ";":
                self.next()
            elif t == "oneof":
                self.next()
                oname = self.next()
                msg["oneofs"][oname] = []
                self.expect("{")
                while self.peek() != "}":
                    if self.peek() == "option":
                        self.skip_statement()
                        continue
                    before = set(msg["fields"])
                    self.parse_field(msg, name, oneof=oname)
                    msg["oneofs"][oname].extend(sorted(set(msg["fields"]) - before))
                self.expect("}")
            else:
                self.parse_field(msg, name)
        self.expect("}")

    def parse_service(self):
        self.expect("service")
        name = self.qual(self.package, self.next())
        rpcs = {}
        self.services[name] = {"rpcs": rpcs, "file": self.path}
        self.expect("{")
        while self.peek() != "}":
            t = self.peek()
            if t == "option":
                self.skip_statement()
                continue
            if t == ";":
                self.next()
                continue
            if t != "rpc":
                raise ParseError(f"{self.path}:{self.line()}: unexpected {t!r} in service {name}")
            self.next()
            rname = self.next()
            self.expect("(")
            cs = False
            if self.peek() == "stream":
                self.next()
                cs = True
            itype = self.next()
            self.expect(")")
            self.expect("returns")
            self.expect("(")
            ss = False
            if self.peek() == "stream":
                self.next()
                ss = True
            otype = self.next()
            self.expect(")")
            if self.peek() == "{":
                self.skip_statement()
            else:
                self.expect(";")
            rpcs[rname] = {
                "input": itype, "output": otype, "scope": self.package,
                "client_streaming": cs, "server_streaming": ss,
            }
        self.expect("}")


def resolve(typename, scope, known):
    """Protobuf scoping: search scope, then its parents, then the root."""
    if typename in SCALARS:
        return typename
    if typename.startswith("."):
        return typename[1:]
    parts = scope.split(".") if scope else []
    while True:
        cand = ".".join(parts + [typename])
        if cand in known:
            return cand
        if not parts:
            break
        parts.pop()
    return typename  # unresolved; well-known types (google.protobuf.*) are fully qualified already


def load_all(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            if n.endswith(".proto"):
                full = os.path.join(dirpath, n)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                with open(full, encoding="utf-8") as f:
                    files[rel] = Parser(rel, f.read()).parse()
    return files


def build_schema(root):
    files = load_all(root)
    messages, enums, services = {}, {}, {}
    for p in files.values():
        messages.update(p.messages)
        enums.update(p.enums)
        services.update(p.services)
    known = set(messages) | set(enums)
    for m in messages.values():
        for f in m["fields"].values():
            scope = f.pop("scope")
            if f["type"] == "map":
                f["key"] = resolve(f["key"], scope, known)
                f["value"] = resolve(f["value"], scope, known)
            else:
                f["type"] = resolve(f["type"], scope, known)
    for s in services.values():
        for r in s["rpcs"].values():
            scope = r.pop("scope")
            r["input"] = resolve(r["input"], scope, known)
            r["output"] = resolve(r["output"], scope, known)
    return {
        "files": {rel: {"package": p.package, "imports": p.imports, "services": sorted(p.services)}
                  for rel, p in files.items()},
        "services": services,
        "messages": messages,
        "enums": enums,
    }


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


def check_methods(root, k6_dir, scripts):
    schema = build_schema(root)
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
    if len(argv) >= 3 and argv[0] == "schema":
        schema = build_schema(argv[1])
        if not schema["services"]:
            print(f"protoschema: no services found under {argv[1]}", file=sys.stderr)
            return 1
        with open(argv[2], "w", encoding="utf-8") as f:
            json.dump(schema, f, indent=1, sort_keys=True)
        return 0
    if len(argv) >= 4 and argv[0] == "methods":
        errors, n = check_methods(argv[1], argv[2], argv[3:])
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        if errors:
            return 1
        print(f"  {n} rpc name literal(s) match proto services")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ParseError as e:
        print(f"protoschema: parse error: {e}", file=sys.stderr)
        sys.exit(1)
