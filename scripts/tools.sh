#!/usr/bin/env bash
# Checkers the test command runs that no Debian package provides, pinned and installed on demand
# (idempotent: nothing happens when the pinned version is already there):
#
#   buf         protobuf lint and breaking-change check (buf.yaml), built from the Go module
#               proxy into <repo>/.local/bin (needs Go >= BUF_MIN_GO; the module and build caches
#               make a reinstall in a fresh clone take seconds)
#   cargo-deny  licenses, bans and sources of the dependency tree (deny.toml), built from
#               crates.io into cargo's bin dir (~/.cargo/bin), so every clone on the machine
#               shares one build (about 5 minutes on 2 cores)
#
# Usage: scripts/tools.sh [buf|cargo-deny]...   (default: both). Prints where each tool is.
# Sourced (scripts/preflight.sh), it only defines the pins and functions below.

BUF_VERSION=v1.75.0
# The `go` directive of github.com/bufbuild/buf@${BUF_VERSION}'s go.mod.
BUF_MIN_GO=1.26.7
CARGO_DENY_VERSION=0.20.2

TOOLS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="${TOOLS_REPO}/.local/bin"
BUF="${TOOLS_BIN}/buf"

buf_current() { [[ -x ${BUF} && "$("${BUF}" --version 2>/dev/null)" == "${BUF_VERSION#v}" ]]; }

cargo_deny_current() {
    [[ "$(cargo deny --version 2>/dev/null)" == "cargo-deny ${CARGO_DENY_VERSION}" ]]
}

install_buf() {
    if buf_current; then
        echo "tools: buf ${BUF_VERSION#v} at ${BUF#"${TOOLS_REPO}"/}"
        return 0
    fi
    echo "tools: installing buf ${BUF_VERSION} into ${TOOLS_BIN#"${TOOLS_REPO}"/} (go install)"
    mkdir -p "${TOOLS_BIN}"
    # GOTOOLCHAIN=local: build with this Go, never download another toolchain.
    GOBIN="${TOOLS_BIN}" GOTOOLCHAIN=local go install "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}"
    buf_current || { echo "tools: buf ${BUF_VERSION} did not install" >&2; return 1; }
}

install_cargo_deny() {
    if cargo_deny_current; then
        echo "tools: cargo-deny ${CARGO_DENY_VERSION} at $(command -v cargo-deny || echo '~/.cargo/bin/cargo-deny')"
        return 0
    fi
    echo "tools: installing cargo-deny ${CARGO_DENY_VERSION} (cargo install --locked)"
    CARGO_INCREMENTAL=0 cargo install --locked --quiet cargo-deny --version "${CARGO_DENY_VERSION}"
    cargo_deny_current || { echo "tools: cargo-deny ${CARGO_DENY_VERSION} did not install" >&2; return 1; }
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    [[ $# -gt 0 ]] || set -- buf cargo-deny
    for t in "$@"; do
        case ${t} in
        buf) install_buf ;;
        cargo-deny) install_cargo_deny ;;
        *)
            echo "usage: $0 [buf|cargo-deny]..." >&2
            exit 2
            ;;
        esac
    done
fi
