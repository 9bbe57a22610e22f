#!/usr/bin/env bash
# Defaults for the local stack started by deploy/local/stack.sh.
# Usage: source deploy/local/env.sh   (values already set in the environment win)
_dispatch_env_src="${BASH_SOURCE[0]:-$0}"
_dispatch_repo="$(cd "$(dirname "${_dispatch_env_src}")/../.." && pwd)"

export DISPATCH_TEST_KAFKA="${DISPATCH_TEST_KAFKA:-127.0.0.1:9092}"
export DISPATCH_TEST_MYSQL="${DISPATCH_TEST_MYSQL:-mysql://dispatch:dispatch@127.0.0.1:3306}"
export DISPATCH_TEST_REDIS="${DISPATCH_TEST_REDIS:-redis://127.0.0.1:6379}"
# The TLS stack (deploy/local/stack.sh tls-up): Kafka SASL_SSL (SCRAM) and SSL, MariaDB with TLS
# required, Redis over TLS, and the directory of its CA and certificates.
export DISPATCH_TEST_TLS_DIR="${DISPATCH_TEST_TLS_DIR:-${_dispatch_repo}/.local/tls}"
export DISPATCH_TEST_TLS_KAFKA="${DISPATCH_TEST_TLS_KAFKA:-127.0.0.1:19094}"
export DISPATCH_TEST_TLS_KAFKA_SSL="${DISPATCH_TEST_TLS_KAFKA_SSL:-127.0.0.1:19093}"
export DISPATCH_TEST_TLS_SASL_USERNAME="${DISPATCH_TEST_TLS_SASL_USERNAME:-dispatch}"
export DISPATCH_TEST_TLS_SASL_PASSWORD="${DISPATCH_TEST_TLS_SASL_PASSWORD:-dispatch-scram-secret}"
export DISPATCH_TEST_TLS_MYSQL="${DISPATCH_TEST_TLS_MYSQL:-mysql://dispatch:dispatch@127.0.0.1:13306}"
export DISPATCH_TEST_TLS_REDIS="${DISPATCH_TEST_TLS_REDIS:-rediss://127.0.0.1:16379}"
export KAFKA_LIBS="${KAFKA_LIBS:-${_dispatch_repo}/.local/kafka/libs}"

unset _dispatch_env_src _dispatch_repo
