#!/usr/bin/env bash
# Creates the topics, the SCRAM-SHA-512 principals and the ACLs of Delivery Backbone on a
# SASL_SSL Kafka cluster, from the access plan that deploy/kafka/acls.py derives from
# schemas/registry.yaml. Safe to run again: topics use --if-not-exists, SCRAM credentials are
# re-set to the same secret, ACL bindings are added idempotently.
#
# Usage: create-principals-and-acls.sh [PLAN_FILE]
#   PLAN_FILE   output of `python deploy/kafka/acls.py --format plan` (the compose stack writes it
#               in the kafka-plan service); without it the plan is generated with python3.
#
# Environment:
#   KAFKA_ADMIN_PASSWORD   password of the broker's super user `admin` (required)
#   BOOTSTRAP              SASL_SSL bootstrap address (default kafka:9092)
#   KAFKA_CA_FILE          PEM CA certificate that signed the brokers (default /etc/kafka/certs/ca.crt)
#   KAFKA_BIN              Kafka's bin/ folder (default /opt/kafka/bin)
#   AGENCY_SECRETS_DIR     where agency passwords live, one <principal>.password file each; a missing
#                          one is generated (32 random alphanumerics, mode 0600) for you to hand over
#                          to that agency (default /var/lib/backbone/agency-secrets)
#   TOPIC_PARTITIONS, TOPIC_REPLICATION_FACTOR   for topics created here (default 6 and 1)
#   KAFKA_<SERVICE>_PASSWORD                     service principals' passwords, named in the plan
# No password is ever printed.
set -euo pipefail

KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
KAFKA_CA_FILE="${KAFKA_CA_FILE:-/etc/kafka/certs/ca.crt}"
AGENCY_SECRETS_DIR="${AGENCY_SECRETS_DIR:-/var/lib/backbone/agency-secrets}"
TOPIC_PARTITIONS="${TOPIC_PARTITIONS:-6}"
TOPIC_REPLICATION_FACTOR="${TOPIC_REPLICATION_FACTOR:-1}"
: "${KAFKA_ADMIN_PASSWORD:?KAFKA_ADMIN_PASSWORD must be set (the broker super user password)}"

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"

if [ $# -ge 1 ]; then
  plan="$1"
  [ -r "$plan" ] || { echo "error: plan file $plan not readable" >&2; exit 1; }
else
  plan="$work/plan.tsv"
  python3 "$here/acls.py" --format plan >"$plan"
fi

admin_config="$work/admin.properties"
umask 077
cat >"$admin_config" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=${KAFKA_CA_FILE}
EOF

kafka() { "$KAFKA_BIN/$1" --bootstrap-server "$BOOTSTRAP" --command-config "$admin_config" "${@:2}"; }

# Passwords go into SCRAM's bracketed list syntax: refuse characters that would break it.
check_password() {
  case "$2" in
    *[,\[\]=\ ]* | "") echo "error: password for $1 is empty or contains one of , [ ] = space" >&2; exit 1 ;;
  esac
}

password_for() {  # principal source -> prints the password
  local name="$1" source="$2" var file
  case "$source" in
    env:*)
      var="${source#env:}"
      if [ -z "${!var:-}" ]; then echo "error: $var must be set (password of Kafka principal $name)" >&2; exit 1; fi
      printf '%s' "${!var}"
      ;;
    file)
      mkdir -p "$AGENCY_SECRETS_DIR"
      file="$AGENCY_SECRETS_DIR/$name.password"
      if [ ! -s "$file" ]; then
        (set +o pipefail; tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32) >"$file"
        chmod 600 "$file"
        echo "generated a password for $name in $file: hand it to the agency over a secure channel" >&2
      fi
      tr -d '\n' <"$file"
      ;;
    *) echo "error: unknown password source '$source' for $name in the plan" >&2; exit 1 ;;
  esac
}

topics=0 users=0 acls=0
skipped=" "   # principals whose optional password is unset: neither the user nor its ACLs exist
while IFS=$'\t' read -r kind a b c d e; do
  case "$kind" in
    topic)
      kafka kafka-topics.sh --create --if-not-exists --topic "$a" --partitions "$TOPIC_PARTITIONS" \
        --replication-factor "$TOPIC_REPLICATION_FACTOR" \
        --config retention.ms=604800000 --config retention.bytes=-1 --config cleanup.policy=delete >/dev/null
      topics=$((topics + 1))
      ;;
    user)
      if [ "${b%%:*}" = optional-env ]; then
        var="${b#optional-env:}"
        if [ -z "${!var:-}" ]; then
          echo "skipping optional principal $a ($var is not set)" >&2
          skipped="$skipped$a "
          continue
        fi
        b="env:$var"
      fi
      password="$(password_for "$a" "$b")"
      check_password "$a" "$password"
      kafka kafka-configs.sh --alter --entity-type users --entity-name "$a" \
        --add-config "SCRAM-SHA-512=[iterations=8192,password=${password}]" >/dev/null
      unset password
      users=$((users + 1))
      ;;
    acl)
      case "$skipped" in *" ${a#User:} "*) continue ;; esac
      case "$c" in
        topic) resource=(--topic "$d") ;;
        group) resource=(--group "$d") ;;
        cluster) resource=(--cluster) ;;
        *) echo "error: unknown resource type '$c' in the plan" >&2; exit 1 ;;
      esac
      kafka kafka-acls.sh --add --force --allow-principal "$a" --operation "$b" "${resource[@]}" \
        --resource-pattern-type "$e" >/dev/null
      acls=$((acls + 1))
      ;;
    "" | "#"*) ;;
    *) echo "error: unknown plan line kind '$kind'" >&2; exit 1 ;;
  esac
done <"$plan"

echo "kafka access plan applied: $topics topics, $users SCRAM principals, $acls ACL bindings"
