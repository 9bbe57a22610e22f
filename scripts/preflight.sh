#!/usr/bin/env bash
# Preflight of the two README commands: before anything is installed, started or built, check
# that every tool they need is here or can be installed by them, and otherwise stop with ONE line
# that names what is missing and the command that installs it (instead of failing half way
# through a build or a stack start).
#
#   source scripts/preflight.sh && preflight up     # scripts/up.sh
#   source scripts/preflight.sh && preflight test   # scripts/test.sh
#   scripts/preflight.sh up|test                    # the same, by hand
#
# What the scripts install themselves is not required here, only what they install it with:
# Debian packages need apt-get (deploy/local/stack.sh), buf and kustomize need Go (go install),
# cargo-deny needs cargo (scripts/tools.sh).

# shellcheck source=scripts/tools.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools.sh"

preflight_fail() {
    printf 'preflight: %s\n' "$*" >&2
    exit 1
}

# version_ge A B: version A >= version B.
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" == "$2" ]]; }

have_cmd() { command -v "$1" >/dev/null 2>&1; }

preflight_rust() {
    local need have
    # `--version`, not `command -v`: rustup's proxies exist even without a toolchain.
    if ! cargo --version >/dev/null 2>&1 || ! rustc --version >/dev/null 2>&1; then
        if have_cmd rustup; then
            preflight_fail "cargo not found: run 'rustup default stable'"
        fi
        preflight_fail "cargo not found: install Rust with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy"
    fi
    need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "${TOOLS_REPO}/Cargo.toml" | head -n 1)
    have=$(rustc --version 2>/dev/null | awk '{print $2}')
    if [[ -n ${need} ]] && ! version_ge "${have%%-*}" "${need}"; then
        preflight_fail "rustc ${have} is older than the workspace's rust-version ${need}: run 'rustup update stable'"
    fi
}

preflight_packages() {
    local missing
    missing=$("${TOOLS_REPO}/deploy/local/stack.sh" missing-packages) ||
        preflight_fail "deploy/local/stack.sh missing-packages failed"
    [[ -n ${missing} ]] || return 0
    if ! have_cmd apt-get; then
        preflight_fail "missing ${missing}, and this machine has no apt-get: install them by hand (MariaDB server and client, Redis, Prometheus with promtool, kcat, curl, a Java 17 runtime, Maven, cmake, pkg-config, a C/C++ toolchain, OpenSSL and zlib headers)"
    fi
    if [[ ${EUID} -ne 0 ]] && ! have_cmd sudo; then
        preflight_fail "missing ${missing}: run as root, or first: apt-get install ${missing}"
    fi
}

preflight_java() {
    local major
    # When java is missing, stack.sh installs openjdk-17-jre-headless (preflight_packages).
    have_cmd java || return 0
    major=$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n 1)
    if [[ -z ${major} || ${major} -lt 17 ]]; then
        preflight_fail "java ${major:-?} is too old for Kafka 4 (needs 17 or later): apt-get install openjdk-17-jre-headless && update-alternatives --config java"
    fi
}

preflight_test_tools() {
    local v
    have_cmd git || preflight_fail "git not found (buf breaking compares with the previous commit): apt-get install git"
    have_cmd node || preflight_fail "node not found (scripts/check-k6.sh): install Node.js >= 20.6 (Debian 12's nodejs is 18: use NodeSource's nodejs 20 or later)"
    v=$(node -p 'process.versions.node' 2>/dev/null)
    version_ge "${v}" 20.6 ||
        preflight_fail "node ${v} is older than 20.6 (scripts/check-k6.sh uses module.register): install Node.js >= 20.6 (NodeSource's nodejs 20 or later)"
    have_cmd python3 || preflight_fail "python3 not found: apt-get install python3 python3-venv python3-yaml"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        preflight_fail "python3 $(python3 -c 'import sys; print(sys.version.split()[0])') is older than 3.11 (tomllib): apt-get install python3"
    python3 -c 'import venv, ensurepip' 2>/dev/null ||
        preflight_fail "python3 venv not usable (scripts/check-deploy.sh makes .local/venv): apt-get install python3-venv"
    python3 -c 'import yaml' 2>/dev/null || /usr/bin/python3 -c 'import yaml' 2>/dev/null ||
        preflight_fail "PyYAML not found (scripts/check-observability.sh): apt-get install python3-yaml"
    cargo fmt --version >/dev/null 2>&1 || preflight_fail "rustfmt not found: run 'rustup component add rustfmt'"
    cargo clippy --version >/dev/null 2>&1 || preflight_fail "clippy not found: run 'rustup component add clippy'"
    # buf (scripts/tools.sh) and kustomize (scripts/check-deploy.sh) build with `go install`.
    if ! buf_current || [[ ! -x ${TOOLS_BIN}/kustomize ]]; then
        have_cmd go || preflight_fail "go not found (buf ${BUF_VERSION} and kustomize install with 'go install'): install Go >= ${BUF_MIN_GO} from https://go.dev/dl/ into /usr/local/go (Debian 12's golang-go is too old)"
        v=$(go env GOVERSION 2>/dev/null)
        v=${v#go}
        version_ge "${v}" "${BUF_MIN_GO}" ||
            preflight_fail "go ${v} is older than ${BUF_MIN_GO}, which buf ${BUF_VERSION} needs: install Go >= ${BUF_MIN_GO} from https://go.dev/dl/ into /usr/local/go"
    fi
}

# preflight up|test
preflight() {
    case ${1:-} in
    up | test) ;;
    *) preflight_fail "usage: preflight up|test" ;;
    esac
    preflight_rust
    preflight_packages
    preflight_java
    if [[ $1 == test ]]; then
        preflight_test_tools
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    preflight "${1:-}"
    echo "preflight: ok"
fi
