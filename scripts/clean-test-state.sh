#!/usr/bin/env bash
# Deletes what earlier test runs left on the local stack: Kafka topics with a TestEnv prefix
# (`t<12 hex>.`) and MariaDB databases named `dispatch_test_*`. A test that fails before its
# cleanup leaves both behind, and thousands of stale partitions slow the broker for everyone.
# Safe while no tests run; leaves the services' own topics and database alone.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
topics() { java -cp ".local/kafka/libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 "$@" 2>/dev/null; }

stale="$(topics --list | grep -cE '^t[0-9a-f]{12}\.' || true)"
if ((stale > 0)); then
    topics --delete --topic 't[0-9a-f]{12}\..*' >/dev/null || true
fi
dbs="$(mariadb -h 127.0.0.1 -u dispatch -pdispatch -N -e "SHOW DATABASES LIKE 'dispatch\\_test\\_%'" 2>/dev/null || true)"
for db in ${dbs}; do
    mariadb -h 127.0.0.1 -u dispatch -pdispatch -e "DROP DATABASE IF EXISTS \`${db}\`"
done
echo "[clean] deleted ${stale} stale test topics and $(echo -n "${dbs}" | grep -c . || true) stale test databases"
