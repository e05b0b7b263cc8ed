#!/usr/bin/env bash
# Creates a development certificate authority and the Kafka broker's TLS material for the
# compose stack, with openssl and keytool. Production uses the organisation's CA instead: put
# its ca.crt and a broker keystore/truststore with the same names in the broker and clients folders.
#
# Usage: KAFKA_SSL_PASSWORD=... deploy/kafka/make-dev-certs.sh [BROKER_DIR] [CLIENTS_DIR] [CA_DIR]
#   BROKER_DIR   mounted into the Kafka container only (default deploy/kafka/broker):
#                kafka.keystore.p12, kafka.truststore.p12, ca.crt
#   CLIENTS_DIR  mounted into every client (default deploy/kafka/clients): ca.crt, the file
#                BACKBONE_KAFKA_SSL_CA_LOCATION names
#   CA_DIR       the CA's private key, never mounted anywhere (default deploy/kafka/ca)
# Environment: KAFKA_SSL_PASSWORD (required; protects the keystore and truststore),
#   KAFKA_EXTERNAL_HOST (extra DNS name for the EXTERNAL listener's certificate),
#   KAFKA_UID (owner of the keystore when run as root; default 1000, the apache/kafka image's user),
#   CERT_DAYS (validity, default 825), CERT_RSA_BITS (key size, default 3072).
# Existing files are kept (delete the folders to rotate).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/broker}"
clients="${2:-$here/clients}"
ca_dir="${3:-$here/ca}"
: "${KAFKA_SSL_PASSWORD:?KAFKA_SSL_PASSWORD must be set (protects the keystore)}"
days="${CERT_DAYS:-825}"
bits="${CERT_RSA_BITS:-3072}"
for tool in openssl keytool; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (Debian: openssl, default-jre-headless)" >&2; exit 1; }
done
mkdir -p "$out" "$clients" "$ca_dir"
chmod 700 "$ca_dir"
chmod 755 "$out" "$clients"   # the containers' users (kafka: uid 1000, backbone: 10001) traverse them
umask 077

if [ ! -s "$ca_dir/ca.key" ]; then
  openssl req -x509 -newkey "rsa:$bits" -sha256 -nodes -days "$days" -subj "/CN=Delivery Backbone dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$ca_dir/ca.key" -out "$ca_dir/ca.crt" 2>/dev/null
  echo "created dev CA in $ca_dir"
fi
for d in "$out" "$clients"; do
  cp "$ca_dir/ca.crt" "$d/ca.crt"
  chmod 644 "$d/ca.crt"
done

if [ ! -s "$out/kafka.keystore.p12" ]; then
  sans="DNS:kafka,DNS:localhost,IP:127.0.0.1"
  case "${KAFKA_EXTERNAL_HOST:-localhost}" in
    kafka | localhost | 127.0.0.1) ;;
    *) sans="$sans,DNS:${KAFKA_EXTERNAL_HOST}" ;;
  esac
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  openssl req -newkey "rsa:$bits" -sha256 -nodes -subj "/CN=kafka" -keyout "$work/kafka.key" -out "$work/kafka.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
    "$sans" >"$work/ext.cnf"
  openssl x509 -req -sha256 -days "$days" -in "$work/kafka.csr" -CA "$ca_dir/ca.crt" -CAkey "$ca_dir/ca.key" \
    -CAcreateserial -extfile "$work/ext.cnf" -out "$work/kafka.crt" 2>/dev/null
  openssl pkcs12 -export -name kafka -in "$work/kafka.crt" -inkey "$work/kafka.key" -certfile "$ca_dir/ca.crt" \
    -out "$out/kafka.keystore.p12" -passout env:KAFKA_SSL_PASSWORD
  rm -f "$out/kafka.truststore.p12"
  keytool -importcert -noprompt -alias backbone-dev-ca -file "$ca_dir/ca.crt" -storetype PKCS12 \
    -keystore "$out/kafka.truststore.p12" -storepass:env KAFKA_SSL_PASSWORD >/dev/null 2>&1
  if [ "$(id -u)" -eq 0 ]; then
    chown "${KAFKA_UID:-1000}" "$out/kafka.keystore.p12" "$out/kafka.truststore.p12"
  fi
  echo "created broker keystore and truststore in $out (SANs: $sans)"
fi
