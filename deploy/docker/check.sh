#!/usr/bin/env bash
# Checks deploy/docker/Dockerfile without a Docker engine.
#
#   deploy/docker/check.sh            static checks (fast, no build)
#   deploy/docker/check.sh --build    static checks, then the Dockerfile's own `cargo build --release
#                                     --locked ...` command natively, and the binaries it must produce
#
# Static checks:
#   - every COPY/ADD source without --from exists in the repository (the build context is the repo root)
#   - every --from= (COPY, RUN --mount) and every `FROM <stage>` names an earlier stage
#   - every `-p/--package <crate>` and `--bin <name>` on a cargo command names a workspace package /
#     binary (read from the Cargo.toml files)
#   - every workspace member is copied into the stages that run cargo (cargo refuses a partial workspace)
#   - the release build produces the four contract binaries and each of them is picked up from
#     target/release/ afterwards
#   - the final stage runs as a non-root USER
# Exit status: 0 when every check passes, 1 otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
dockerfile="${here}/Dockerfile"
build=0
for arg in "$@"; do
    case "${arg}" in
        --build) build=1 ;;
        --dockerfile=*) dockerfile="${arg#--dockerfile=}" ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: ${arg}" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-python3}"
if ! "${python}" -c 'import sys, tomllib; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "FAIL: deploy/docker/check.sh needs Python >= 3.11 (tomllib); set PYTHON=..." >&2
    exit 1
fi

exec "${python}" - "${repo}" "${dockerfile}" "${build}" <<'PY'
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

repo, dockerfile, build = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
# The binaries the k8s manifests and docs rely on.
CONTRACT_BINS = {"dispatch-gateway", "dispatch-processor", "dispatch-reader", "dispatchctl"}
# Shared objects gcr.io/distroless/cc-debian12 provides (glibc, libgcc, libstdc++).
DISTROLESS_CC = re.compile(r"^(linux-vdso|ld-linux.*|libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|libresolv|libutil)\.so")

failures: list[str] = []
oks: list[str] = []


def ok(msg: str) -> None:
    oks.append(msg)
    print(f"  ok    {msg}")


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL  {msg}")


# ---- workspace -------------------------------------------------------------------------------
def workspace() -> tuple[dict[str, str], dict[str, str]]:
    """(package name -> member dir, binary name -> package name)."""
    with open(os.path.join(repo, "Cargo.toml"), "rb") as f:
        root = tomllib.load(f)
    members: list[str] = []
    for pattern in root.get("workspace", {}).get("members", []):
        members += [os.path.relpath(p, repo) for p in sorted(glob.glob(os.path.join(repo, pattern)))]
    packages: dict[str, str] = {}
    bins: dict[str, str] = {}
    for member in members:
        manifest = os.path.join(repo, member, "Cargo.toml")
        if not os.path.exists(manifest):
            fail(f"workspace member {member} has no Cargo.toml")
            continue
        with open(manifest, "rb") as f:
            cargo = tomllib.load(f)
        name = cargo["package"]["name"]
        packages[name] = member
        autobins = cargo["package"].get("autobins", True)
        for b in cargo.get("bin", []):
            bins[b["name"]] = name
        if autobins and os.path.exists(os.path.join(repo, member, "src", "main.rs")):
            bins.setdefault(name, name)
        if autobins:
            for p in glob.glob(os.path.join(repo, member, "src", "bin", "*.rs")):
                bins.setdefault(os.path.basename(p)[:-3], name)
            for p in glob.glob(os.path.join(repo, member, "src", "bin", "*", "main.rs")):
                bins.setdefault(os.path.basename(os.path.dirname(p)), name)
    return packages, bins


# ---- Dockerfile parsing ----------------------------------------------------------------------
def logical_lines(text: str) -> list[str]:
    lines, buf = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def substitute(value: str, args: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return args.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def split_flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags, rest = {}, []
    for w in words:
        if w.startswith("--") and not rest:
            k, _, v = w[2:].partition("=")
            flags.setdefault(k, v)
            if k == "mount":
                flags.setdefault("mounts", "")
                flags["mounts"] += v + ";"
        else:
            rest.append(w)
    return flags, rest


class Stage:
    def __init__(self, index: int, base: str, name: str | None):
        self.index, self.base, self.name = index, base, name
        self.instructions: list[tuple[str, str]] = []

    def label(self) -> str:
        return self.name or str(self.index)


def parse(text: str) -> tuple[list[Stage], dict[str, str]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "ARG" and not stages:
            k, _, v = rest.partition("=")
            global_args[k.strip()] = v.strip().strip('"')
            continue
        if instr == "FROM":
            words = shlex.split(substitute(rest, global_args))
            flags, words = split_flags(words)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(len(stages), words[0], name))
            continue
        if not stages:
            fail(f"instruction before the first FROM: {line}")
            continue
        stages[-1].instructions.append((instr, rest))
    return stages, global_args


def stage_ref_ok(ref: str, stages: list[Stage], upto: int) -> bool:
    earlier = stages[:upto]
    return any(ref == s.name or ref == str(s.index) for s in earlier)


def cargo_segments(run: str) -> list[list[str]]:
    """Each `cargo ...` command of a RUN line, as words."""
    out = []
    for seg in re.split(r"&&|\|\||;", run):
        try:
            words = shlex.split(seg)
        except ValueError:
            words = seg.split()
        if "cargo" in words:
            out.append(words[words.index("cargo"):])
    return out


def option_values(words: list[str], *names: str) -> list[str]:
    values = []
    for i, w in enumerate(words):
        for n in names:
            if w == n and i + 1 < len(words):
                values.append(words[i + 1])
            elif n.startswith("--") and w.startswith(n + "="):
                values.append(w.split("=", 1)[1])
    return values


def main() -> int:
    rel = os.path.relpath(dockerfile, repo)
    print(f"Dockerfile checks: {rel}")
    if not os.path.exists(dockerfile):
        fail(f"{rel} does not exist")
        return 1
    packages, bins = workspace()
    ok(f"workspace: {len(packages)} packages, binaries {sorted(bins)}")
    with open(dockerfile) as f:
        stages, args = parse(f.read())
    if not stages:
        fail("no FROM")
        return 1
    ok(f"stages: {' -> '.join(s.label() for s in stages)}")

    release_build: list[str] | None = None
    release_build_text = ""
    copied_into: dict[int, list[str]] = {}
    for stage in stages:
        if stage_ref_ok(stage.base, stages, stage.index):
            ok(f"FROM {stage.base} (stage {stage.label()}) names an earlier stage")
        elif stage.base in (s.name for s in stages):
            fail(f"FROM {stage.base} in stage {stage.label()} names a later stage")
        stage_args = dict(args)
        for instr, rest in stage.instructions:
            if instr == "ARG":
                k, _, v = rest.partition("=")
                stage_args[k.strip()] = v.strip().strip('"')
                continue
            if instr in ("COPY", "ADD"):
                words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
                flags, words = split_flags(words)
                sources = words[:-1]
                if "from" in flags:
                    src_stage = substitute(flags["from"], stage_args)
                    if stage_ref_ok(src_stage, stages, stage.index):
                        ok(f"{instr} --from={src_stage} in stage {stage.label()} names an earlier stage")
                    else:
                        fail(f"{instr} --from={src_stage} in stage {stage.label()} is not an earlier stage")
                    continue
                for src in sources:
                    src = substitute(src, stage_args)
                    matches = glob.glob(os.path.join(repo, src))
                    if matches:
                        ok(f"COPY source {src} exists")
                        copied_into.setdefault(stage.index, []).append(os.path.normpath(src))
                    else:
                        fail(f"COPY source {src} (stage {stage.label()}) does not exist in the repository")
                continue
            if instr == "RUN":
                for m in re.findall(r"--mount=\S*from=([\w.-]+)", rest):
                    if stage_ref_ok(m, stages, stage.index):
                        ok(f"RUN --mount from={m} names an earlier stage")
                    else:
                        fail(f"RUN --mount from={m} in stage {stage.label()} is not an earlier stage")
                for words in cargo_segments(substitute(rest, stage_args)):
                    if len(words) > 1 and words[1] == "install":
                        continue  # installs a tool from crates.io, not a workspace crate
                    for p in option_values(words, "-p", "--package"):
                        if p in packages:
                            ok(f"`{' '.join(words[:3])} ...`: -p {p} is a workspace package")
                        else:
                            fail(f"-p {p} in stage {stage.label()} is not a workspace package ({sorted(packages)})")
                    for b in option_values(words, "--bin"):
                        if b in bins:
                            ok(f"--bin {b} is a workspace binary")
                        else:
                            fail(f"--bin {b} in stage {stage.label()} is not a workspace binary ({sorted(bins)})")
                    if words[1:2] == ["build"] and "--release" in words:
                        release_build = words
                        release_build_text = " ".join(words)
                        # every member must be in the context of a stage that runs cargo
                        have = set()
                        s: Stage | None = stage
                        chain = []
                        while s is not None:
                            chain.append(s.index)
                            s = next((x for x in stages if x.name == s.base or str(x.index) == s.base), None)
                        for idx in chain:
                            have.update(copied_into.get(idx, []))
                        def covered(member: str) -> bool:
                            return any(c == "." or member == c or member.startswith(c + "/") for c in have)
                        uncovered = [m for m in packages.values() if not covered(m)]
                        for member in uncovered:
                            fail(f"workspace member {member} is not copied before `{release_build_text}`")
                        if not uncovered:
                            ok("every workspace member is copied before the release build")

    if release_build is None:
        fail("no `cargo build --release ...` in the Dockerfile")
    else:
        if "--locked" in release_build:
            ok("release build uses --locked")
        else:
            fail(f"release build lacks --locked: {release_build_text}")
        built = set()
        for p in option_values(release_build, "-p", "--package"):
            built.update(b for b, pkg in bins.items() if pkg == p)
        built.update(option_values(release_build, "--bin"))
        missing = CONTRACT_BINS - built
        if missing:
            fail(f"release build does not build {sorted(missing)}")
        else:
            ok(f"release build builds {sorted(CONTRACT_BINS)}")
        with open(dockerfile) as f:
            text = f.read()
        after = text[text.find(release_build[-1]):]
        for b in sorted(CONTRACT_BINS):
            if f"target/release/{b}" in after:
                ok(f"target/release/{b} is picked up after the build")
            else:
                fail(f"target/release/{b} is never copied out of the build stage")

    final = stages[-1]
    users = [rest for instr, rest in final.instructions if instr == "USER"]
    base_nonroot = final.base.endswith(":nonroot") or final.base.endswith("-nonroot")
    if users:
        user = users[-1].split(":")[0].strip()
        if user in ("root", "0"):
            fail(f"final stage {final.label()} runs as USER {users[-1]}")
        else:
            ok(f"final stage {final.label()} runs as non-root USER {users[-1]}")
    else:
        fail(f"final stage {final.label()} has no USER instruction (base {final.base}{' is nonroot, but say it' if base_nonroot else ''})")

    if build and release_build is not None and not failures:
        print(f"native build: {release_build_text}")
        rc = subprocess.run(release_build_text, shell=True, cwd=repo).returncode
        if rc != 0:
            fail(f"`{release_build_text}` exited {rc}")
        else:
            ok("native release build succeeded")
            for b in sorted(CONTRACT_BINS):
                path = os.path.join(repo, "target", "release", b)
                if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                    fail(f"target/release/{b} missing after the build")
                    continue
                ok(f"target/release/{b} built")
                try:
                    ldd = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
                except FileNotFoundError:
                    continue
                libs = sorted({l.split()[0] for l in ldd.splitlines() if l.strip()})
                extra = [l for l in libs if not DISTROLESS_CC.match(os.path.basename(l)) and not l.startswith("/")]
                copied = [l for l in extra if l.startswith("libz.so")]
                unknown = [l for l in extra if l not in copied]
                if unknown:
                    fail(f"{b} links {unknown}, which distroless/cc does not ship and the Dockerfile does not copy")
                else:
                    ok(f"{b} shared libraries are covered: {libs}")

    print(f"Dockerfile: {len(oks)} passed, {len(failures)} failed")
    return 1 if failures else 0


sys.exit(main())
PY
