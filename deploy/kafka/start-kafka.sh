#!/usr/bin/env bash
# Starts the compose stack's Kafka node: copies deploy/kafka/server.properties, adds the secrets
# from the environment (never written to the repo), formats the KRaft storage once with the
# `admin` SCRAM credential (KRaft has no other way to create the first SCRAM user), then runs
# the broker in the foreground.
#
# Environment: KAFKA_ADMIN_PASSWORD, KAFKA_SSL_PASSWORD (keystore/truststore password, the one
# given to deploy/kafka/make-dev-certs.sh), KAFKA_CLUSTER_ID (22-character base64 id, see
# .env.example), KAFKA_EXTERNAL_HOST (name agencies use to reach the EXTERNAL listener).
set -euo pipefail
: "${KAFKA_ADMIN_PASSWORD:?KAFKA_ADMIN_PASSWORD must be set}"
: "${KAFKA_SSL_PASSWORD:?KAFKA_SSL_PASSWORD must be set (keystore password)}"
: "${KAFKA_CLUSTER_ID:?KAFKA_CLUSTER_ID must be set (kafka-storage.sh random-uuid)}"
KAFKA_EXTERNAL_HOST="${KAFKA_EXTERNAL_HOST:-localhost}"
KAFKA_EXTERNAL_PORT="${KAFKA_EXTERNAL_PORT:-9094}"
template="${KAFKA_SERVER_TEMPLATE:-/etc/backbone/kafka/server.properties}"

for f in /etc/kafka/certs/kafka.keystore.p12 /etc/kafka/certs/kafka.truststore.p12; do
  [ -r "$f" ] || { echo "error: $f missing: run deploy/kafka/make-dev-certs.sh first (see docs/DEPLOYMENT.md)" >&2; exit 1; }
done
case "$KAFKA_ADMIN_PASSWORD" in *[\"\\,\[\]=\ ]*) echo "error: KAFKA_ADMIN_PASSWORD contains one of \" \\ , [ ] = space" >&2; exit 1 ;; esac

# Container-private tmp (not a volume): the runtime config and the health check's client config.
config_dir=/tmp/backbone-kafka
umask 077
mkdir -p "$config_dir"
chmod 700 "$config_dir"
config="$config_dir/server.properties"
{
  cat "$template"
  echo
  echo "advertised.listeners=INTERNAL://kafka:9092,EXTERNAL://${KAFKA_EXTERNAL_HOST}:${KAFKA_EXTERNAL_PORT}"
  echo "ssl.keystore.password=${KAFKA_SSL_PASSWORD}"
  echo "ssl.key.password=${KAFKA_SSL_PASSWORD}"
  echo "ssl.truststore.password=${KAFKA_SSL_PASSWORD}"
  echo "listener.name.internal.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${KAFKA_ADMIN_PASSWORD}\";"
} >"$config"

cat >"$config_dir/healthcheck.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/certs/ca.crt
PROPS

/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$KAFKA_CLUSTER_ID" --config "$config" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]" >/dev/null
exec /opt/kafka/bin/kafka-server-start.sh "$config"
