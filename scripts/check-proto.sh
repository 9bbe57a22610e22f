#!/usr/bin/env bash
# The protos under proto/ against buf.yaml: `buf lint`, then `buf breaking` against the previous
# commit (HEAD~1), so a commit that breaks the public API (a removed field, a renumbered enum
# value, a renamed message) fails the test command. Uncommitted changes are compared too: the
# work tree is the input.
#
# HEAD~1 is skipped, with a note, when it does not exist (first commit, or a clone of depth 1).
# Installs the pinned buf first when it is missing (scripts/tools.sh).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
"${REPO}/scripts/tools.sh" buf >/dev/null
BUF="${REPO}/.local/bin/buf"

echo "check-proto: buf lint"
"${BUF}" lint

if ! git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null; then
    echo "check-proto: buf breaking skipped: no previous commit (HEAD~1) in this clone"
    exit 0
fi
against='.git#ref=HEAD~1'
# A previous commit without buf.yaml is one module rooted at the repository: point buf at proto/.
if ! git cat-file -e 'HEAD~1:buf.yaml' 2>/dev/null; then
    against="${against},subdir=proto"
fi
echo "check-proto: buf breaking --against '${against}'"
"${BUF}" breaking --against "${against}"
echo "check-proto: OK"
