#!/usr/bin/env bash
# The run command: on a fresh machine, install what is missing, start the local stack (Kafka,
# MariaDB, Redis, Prometheus) and the dispatch services on 127.0.0.1. Idempotent.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A missing tool stops here with one line saying how to install it, not half way through a build.
# shellcheck source=scripts/preflight.sh
source "${REPO}/scripts/preflight.sh"
preflight up
"${REPO}/deploy/local/stack.sh" up
"${REPO}/deploy/local/services.sh" start
cat <<'TXT'

dispatch is running.
  submit:   target/release/dispatchctl submit --type simulate --key order-1 --payload '{"latency_ms":5}'
  get:      target/release/dispatchctl get <task id>
  metrics:  http://127.0.0.1:9601/metrics (gateway) 9602 (reader) 9603 (processor); Prometheus http://127.0.0.1:9090
  stop:     deploy/local/services.sh stop && deploy/local/stack.sh stop
TXT
