# shellcheck shell=bash
# The TLS stack of deploy/local/stack.sh (sourced by it; `stack.sh tls-up|tls-stop|tls-status|
# tls-reset`): a CA and certificates made with openssl under .local/tls/, and a second Kafka,
# MariaDB and Redis that speak only TLS, on their own ports and data directories, so the plain
# stack and this one run side by side:
#
#   kafka     127.0.0.1:19093  SSL (client certificates requested: verified when presented)
#             127.0.0.1:19094  SASL_SSL, SCRAM-SHA-512 and SCRAM-SHA-256, user dispatch
#             127.0.0.1:19095  its KRaft controller (loopback, plaintext)
#   mariadb   127.0.0.1:13306  require_secure_transport=ON
#   redis     127.0.0.1:16379  tls-port only (no plaintext port)
#
# Files in .local/tls/: ca.pem (the CA), server.pem/server.key (localhost, 127.0.0.1),
# client.pem/client.key (a client certificate of the CA), other-ca.pem (an unrelated CA, for
# "wrong CA" tests). deploy/local/env.sh exports DISPATCH_TEST_TLS_* pointing at them.

TLS_DIR="${LOCAL}/tls"
TLS_SASL_USER=dispatch
TLS_SASL_PASSWORD=dispatch-scram-secret

KAFKA_TLS_DIR="${LOCAL}/kafka-tls"
KAFKA_TLS_DATA="${KAFKA_TLS_DIR}/data"
KAFKA_TLS_CONF="${KAFKA_TLS_DIR}/server.properties"
KAFKA_TLS_LOG="${KAFKA_TLS_DIR}/kafka.log"
KAFKA_TLS_PID="${KAFKA_TLS_DIR}/kafka.pid"
KAFKA_TLS_SSL_PORT=19093
KAFKA_TLS_SASL_PORT=19094
KAFKA_TLS_CONTROLLER_PORT=19095

MARIADB_TLS_DIR="${LOCAL}/mariadb-tls"
MARIADB_TLS_DATA="${MARIADB_TLS_DIR}/data"
MARIADB_TLS_SOCK="${MARIADB_TLS_DIR}/mysqld.sock"
MARIADB_TLS_PID="${MARIADB_TLS_DIR}/mysqld.pid"
MARIADB_TLS_LOG="${MARIADB_TLS_DIR}/error.log"
MARIADB_TLS_PORT=13306

REDIS_TLS_DIR="${LOCAL}/redis-tls"
REDIS_TLS_PID="${REDIS_TLS_DIR}/redis.pid"
REDIS_TLS_LOG="${REDIS_TLS_DIR}/redis.log"
REDIS_TLS_PORT=16379

# ------------------------------------------------------------ certificates ---

# tls_leaf NAME CN EXTENSIONS: a key and a certificate signed by the CA.
tls_leaf() {
    local name=$1 cn=$2 ext=$3
    openssl req -newkey rsa:2048 -nodes -keyout "${TLS_DIR}/${name}.key" \
        -out "${TLS_DIR}/${name}.csr" -subj "/CN=${cn}" 2>/dev/null
    printf '%b' "${ext}" >"${TLS_DIR}/${name}.ext"
    openssl x509 -req -in "${TLS_DIR}/${name}.csr" -CA "${TLS_DIR}/ca.pem" -CAkey "${TLS_DIR}/ca.key" \
        -CAcreateserial -days 825 -sha256 -extfile "${TLS_DIR}/${name}.ext" \
        -out "${TLS_DIR}/${name}.pem" 2>/dev/null
    rm -f "${TLS_DIR}/${name}.csr" "${TLS_DIR}/${name}.ext"
}

# tls_certs: the CA and certificates, made once (kept until tls-reset or until one expires
# within a day).
tls_certs() {
    if [[ -s ${TLS_DIR}/client.pem ]] &&
        openssl x509 -checkend 86400 -noout -in "${TLS_DIR}/server.pem" >/dev/null 2>&1; then
        return 0
    fi
    command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
    log "tls: making a CA and certificates in ${TLS_DIR#"${REPO}"/}"
    rm -rf "${TLS_DIR}"
    mkdir -p "${TLS_DIR}"
    chmod 700 "${TLS_DIR}"
    local ca_ext='-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign'
    # shellcheck disable=SC2086 # ca_ext is two flag pairs
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=dispatch local test CA" \
        ${ca_ext} -keyout "${TLS_DIR}/ca.key" -out "${TLS_DIR}/ca.pem" 2>/dev/null
    # shellcheck disable=SC2086
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=unrelated CA" \
        ${ca_ext} -keyout "${TLS_DIR}/other-ca.key" -out "${TLS_DIR}/other-ca.pem" 2>/dev/null
    tls_leaf server localhost \
        'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
    tls_leaf client dispatch-client \
        'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key, then the certificate.
    cat "${TLS_DIR}/server.key" "${TLS_DIR}/server.pem" >"${TLS_DIR}/kafka-keystore.pem"
    chmod 600 "${TLS_DIR}"/*.key "${TLS_DIR}/kafka-keystore.pem"
}

# ------------------------------------------------------------------ kafka ---

kafka_tls_running() { pid_alive "${KAFKA_TLS_PID}" "${KAFKA_TLS_CONF}"; }

start_kafka_tls() {
    if kafka_tls_running && port_open "${KAFKA_TLS_SASL_PORT}"; then
        log "kafka-tls: already up (pid $(read_pid "${KAFKA_TLS_PID}"))"
        return 0
    fi
    local offset=0
    if ! kafka_tls_running; then
        local p
        for p in "${KAFKA_TLS_SSL_PORT}" "${KAFKA_TLS_SASL_PORT}" "${KAFKA_TLS_CONTROLLER_PORT}"; do
            check_port_free kafka-tls "${p}"
        done
        install_kafka quiet
        mkdir -p "${KAFKA_TLS_DATA}"
        cat >"${KAFKA_TLS_CONF}" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${KAFKA_TLS_CONTROLLER_PORT}
listeners=SSL://127.0.0.1:${KAFKA_TLS_SSL_PORT},SASL_SSL://127.0.0.1:${KAFKA_TLS_SASL_PORT},CONTROLLER://127.0.0.1:${KAFKA_TLS_CONTROLLER_PORT}
advertised.listeners=SSL://127.0.0.1:${KAFKA_TLS_SSL_PORT},SASL_SSL://127.0.0.1:${KAFKA_TLS_SASL_PORT}
listener.security.protocol.map=SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SSL
controller.listener.names=CONTROLLER
ssl.keystore.type=PEM
ssl.keystore.location=${TLS_DIR}/kafka-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=${TLS_DIR}/ca.pem
ssl.client.auth=requested
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=${KAFKA_TLS_DATA}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.retention.hours=24
EOF
        if [[ ! -f ${KAFKA_TLS_DATA}/meta.properties ]]; then
            log "kafka-tls: formatting storage with SCRAM user ${TLS_SASL_USER}"
            kafka_java kafka.tools.StorageTool format --ignore-formatted \
                -t "$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 | tr -d '[:space:]')" \
                -c "${KAFKA_TLS_CONF}" \
                --add-scram "SCRAM-SHA-512=[name=${TLS_SASL_USER},password=\"${TLS_SASL_PASSWORD}\"]" \
                --add-scram "SCRAM-SHA-256=[name=${TLS_SASL_USER},password=\"${TLS_SASL_PASSWORD}\"]" \
                >>"${KAFKA_TLS_LOG}" 2>&1 || fail_with_log kafka-tls "${KAFKA_TLS_LOG}" "storage format failed"
        fi
        [[ -f ${KAFKA_TLS_LOG} ]] && offset=$(stat -c %s "${KAFKA_TLS_LOG}")
        log "kafka-tls: starting on 127.0.0.1:${KAFKA_TLS_SSL_PORT} (SSL), :${KAFKA_TLS_SASL_PORT} (SASL_SSL)"
        (
            cd "${KAFKA_TLS_DIR}"
            start_bg "${KAFKA_TLS_PID}" "${KAFKA_TLS_LOG}" \
                java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
                -Dkafka.logs.dir="${KAFKA_TLS_DIR}" \
                -Dlog4j2.configurationFile="${KAFKA_SRC}/log4j2.xml" \
                -cp "${KAFKA_LIBS}/*" kafka.Kafka "${KAFKA_TLS_CONF}"
        )
    fi
    await_ready kafka-tls "${KAFKA_TLS_LOG}" "${KAFKA_TLS_PID}" 90 kafka_tls_running \
        kafka_started "${KAFKA_TLS_LOG}" "${offset}" "${KAFKA_TLS_SASL_PORT}"
}

# ---------------------------------------------------------------- mariadb ---

mariadb_tls_running() { pid_alive "${MARIADB_TLS_PID}" "${MARIADB_TLS_DATA}"; }

start_mariadb_tls() {
    if ! mariadb_tls_running; then
        check_port_free mariadb-tls "${MARIADB_TLS_PORT}"
        mariadb_start mariadb-tls "${MARIADB_TLS_DIR}" "${MARIADB_TLS_PORT}" " (TLS required)" \
            --innodb_buffer_pool_size=64M \
            --max_connections=300 \
            --character-set-server=utf8mb4 \
            --collation-server=utf8mb4_bin \
            --ssl-ca="${TLS_DIR}/ca.pem" \
            --ssl-cert="${TLS_DIR}/server.pem" \
            --ssl-key="${TLS_DIR}/server.key" \
            --require-secure-transport=ON
    fi
    await_ready mariadb-tls "${MARIADB_TLS_LOG}" "${MARIADB_TLS_PID}" 60 mariadb_tls_running \
        mariadb_answers "${MARIADB_TLS_SOCK}" "${MARIADB_TLS_PORT}"
    mariadb_grant_dispatch "${MARIADB_TLS_SOCK}"
}

# ------------------------------------------------------------------ redis ---

redis_tls_running() { pid_alive "${REDIS_TLS_PID}" "redis-server"; }

start_redis_tls() {
    if ! redis_tls_running; then
        check_port_free redis-tls "${REDIS_TLS_PORT}"
        mkdir -p "${REDIS_TLS_DIR}"
        log "redis-tls: starting on 127.0.0.1:${REDIS_TLS_PORT} (TLS only)"
        redis-server --bind 127.0.0.1 --port 0 --tls-port "${REDIS_TLS_PORT}" \
            --tls-cert-file "${TLS_DIR}/server.pem" --tls-key-file "${TLS_DIR}/server.key" \
            --tls-ca-cert-file "${TLS_DIR}/ca.pem" --tls-auth-clients optional \
            --dir "${REDIS_TLS_DIR}" --daemonize yes --pidfile "${REDIS_TLS_PID}" \
            --logfile "${REDIS_TLS_LOG}" --save '' --appendonly no </dev/null >/dev/null 2>&1 ||
            fail_with_log redis-tls "${REDIS_TLS_LOG}" "redis-server failed to start (built without TLS?)"
    fi
    await_ready redis-tls "${REDIS_TLS_LOG}" "${REDIS_TLS_PID}" 10 true \
        redis_pong "${REDIS_TLS_PORT}" --tls --cacert "${TLS_DIR}/ca.pem"
}

# --------------------------------------------------------------- commands ---

cmd_tls_up() {
    local start_ms
    start_ms=$(now_ms)
    cmd_install
    mkdir -p "${LOCAL}"
    tls_certs
    # MariaDB and Redis start while the broker's JVM boots.
    start_mariadb_tls
    start_redis_tls
    start_kafka_tls
    local ms=$(($(now_ms) - start_ms))
    printf '[stack] tls-up: done in %d.%03ds\n' $((ms / 1000)) $((ms % 1000))
}

cmd_tls_stop() {
    stop_pid kafka-tls "${KAFKA_TLS_PID}" "${KAFKA_TLS_CONF}" 60
    stop_pid redis-tls "${REDIS_TLS_PID}" redis-server 20
    stop_pid mariadb-tls "${MARIADB_TLS_PID}" "${MARIADB_TLS_DATA}" 60
}

cmd_tls_status() {
    status_line kafka-tls "${KAFKA_TLS_PID}" "${KAFKA_TLS_CONF}" "${KAFKA_TLS_SASL_PORT}" \
        "ssl=:${KAFKA_TLS_SSL_PORT} sasl_ssl=:${KAFKA_TLS_SASL_PORT} controller=:${KAFKA_TLS_CONTROLLER_PORT}"
    status_line mariadb-tls "${MARIADB_TLS_PID}" "${MARIADB_TLS_DATA}" "${MARIADB_TLS_PORT}" "require_secure_transport"
    status_line redis-tls "${REDIS_TLS_PID}" redis-server "${REDIS_TLS_PORT}" "tls-port"
}

cmd_tls_reset() {
    cmd_tls_stop
    log "tls-reset: deleting the TLS stack's data and certificates"
    rm -rf "${KAFKA_TLS_DIR}" "${MARIADB_TLS_DIR}" "${REDIS_TLS_DIR}" "${TLS_DIR}"
}
