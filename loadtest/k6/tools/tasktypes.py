#!/usr/bin/env python3
"""Task types the processor's default registry has a handler for, for scripts/check-k6.sh.

Usage:
  tasktypes.py <repo>
      Prints the types comma-separated: the built-ins registered by `Registry::build` in
      services/processor/src/handler/mod.rs (the `kinds` map it starts from), plus the types the
      local processor config (deploy/local/config/processor.toml) maps to a built-in kind under
      [handlers.types.<type>]. Exits 1 when the built-ins cannot be found, so a rewrite of the
      registry fails the check instead of letting any task type through.
"""
import os
import re
import sys
import tomllib

BUILTIN_KINDS = {"noop", "simulate", "http"}


def builtins(repo):
    path = os.path.join(repo, "services/processor/src/handler/mod.rs")
    with open(path, encoding="utf-8") as f:
        src = f.read()
    # let mut kinds: HashMap<String, String> = HashMap::from([
    #     ("noop".to_string(), "noop".to_string()), ...
    # ]);
    m = re.search(r"let\s+mut\s+kinds\b[^=]*=\s*HashMap::from\(\[(.*?)\]\);", src, re.S)
    if not m:
        raise SystemExit(f"tasktypes: no `let mut kinds ... = HashMap::from([...]);` in {path}")
    types = re.findall(r'\(\s*"([a-z0-9._-]+)"\.to_string\(\)', m.group(1))
    if not types:
        raise SystemExit(f"tasktypes: no built-in task types in the `kinds` map of {path}")
    return types


def configured(repo):
    path = os.path.join(repo, "deploy/local/config/processor.toml")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    types = cfg.get("handlers", {}).get("types", {})
    # `custom` handlers come from code an embedder registers; the stock binary has none.
    return [t for t, s in types.items() if isinstance(s, dict) and s.get("kind") in BUILTIN_KINDS]


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: tasktypes.py <repo>")
    repo = sys.argv[1]
    types = []
    for t in builtins(repo) + configured(repo):
        if t not in types:
            types.append(t)
    print(",".join(types))


if __name__ == "__main__":
    main()
