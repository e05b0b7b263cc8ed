#!/usr/bin/env bash
# First-run setup of the compose stack on a new machine:
#   1. .env from .env.example, every empty secret filled with 32 random letters and digits and
#      a fresh KRaft cluster id (an existing .env is never overwritten; its empty secrets are filled);
#   2. the development CA and the broker's TLS material (deploy/kafka/make-dev-certs.sh).
# Needs: openssl, keytool (Debian: openssl default-jre-headless). Prints no secret.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077
[ -f .env ] || cp .env.example .env
chmod 600 .env

random_secret() { openssl rand -base64 48 | tr -dc 'A-Za-z0-9' | head -c 32; }
cluster_id() { openssl rand 16 | openssl base64 | tr '+/' '-_' | tr -d '=\n'; }

secret_keys=(KAFKA_ADMIN_PASSWORD KAFKA_SSL_PASSWORD KAFKA_PROCESSOR_PASSWORD KAFKA_SINK_PASSWORD
  KAFKA_ALERT_FORWARDER_PASSWORD KAFKA_SCHEMA_REGISTRY_PASSWORD KAFKA_SIMULATOR_PASSWORD
  CLICKHOUSE_MIGRATOR_PASSWORD CLICKHOUSE_WRITER_PASSWORD CLICKHOUSE_READER_PASSWORD
  GRAFANA_ADMIN_PASSWORD GRAFANA_VIEWER_PASSWORD)
filled=0
fill() {  # key value: set KEY=value in .env where it is empty
  if grep -q "^$1=$" .env; then
    sed -i "s|^$1=$|$1=$2|" .env
    filled=$((filled + 1))
  elif ! grep -q "^$1=" .env; then
    echo "$1=$2" >>.env
    filled=$((filled + 1))
  fi
}
for key in "${secret_keys[@]}"; do fill "$key" "$(random_secret)"; done
fill KAFKA_CLUSTER_ID "$(cluster_id)"
echo "bootstrap: .env ready ($filled values generated; file mode 0600)"

KAFKA_SSL_PASSWORD="$(grep '^KAFKA_SSL_PASSWORD=' .env | cut -d= -f2-)" \
KAFKA_EXTERNAL_HOST="$(grep '^KAFKA_EXTERNAL_HOST=' .env | cut -d= -f2- || true)" \
  deploy/kafka/make-dev-certs.sh
echo "bootstrap: done; next: docker compose up -d --build (docs/DEPLOYMENT.md)"
