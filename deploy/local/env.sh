#!/usr/bin/env bash
# Defaults for the local stack started by deploy/local/stack.sh.
# Usage: source deploy/local/env.sh   (values already set in the environment win)
_dispatch_env_src="${BASH_SOURCE[0]:-$0}"
_dispatch_repo="$(cd "$(dirname "${_dispatch_env_src}")/../.." && pwd)"

export DISPATCH_TEST_KAFKA="${DISPATCH_TEST_KAFKA:-127.0.0.1:9092}"
export DISPATCH_TEST_MYSQL="${DISPATCH_TEST_MYSQL:-mysql://dispatch:dispatch@127.0.0.1:3306}"
export DISPATCH_TEST_REDIS="${DISPATCH_TEST_REDIS:-redis://127.0.0.1:6379}"
export KAFKA_LIBS="${KAFKA_LIBS:-${_dispatch_repo}/.local/kafka/libs}"

unset _dispatch_env_src _dispatch_repo
