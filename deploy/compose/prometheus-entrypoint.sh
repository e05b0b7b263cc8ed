#!/bin/sh
# Runs Prometheus in the compose stack on the repo's own alerting/prometheus.yml (the one source
# of truth, written for the embedded stack's loopback addresses): the loopback targets become the
# compose services' names, and the processors' static target becomes DNS service discovery so
# that every replica of `processor` is scraped (Docker's DNS answers one A record per replica).
# POSIX sh + awk: runs in the prom/prometheus (busybox) image and is tested with promtool.
#
# Usage: prometheus-entrypoint.sh [extra prometheus flags...]
# Environment: PROMETHEUS_SOURCE_DIR (folder holding prometheus.yml and rules/, default
#   /etc/backbone/prometheus), PROMETHEUS_OUT_DIR (default /tmp/backbone-prometheus),
#   PROMETHEUS_RENDER_ONLY=1 (write the config and exit: tests).
set -eu
src_dir="${PROMETHEUS_SOURCE_DIR:-/etc/backbone/prometheus}"
out_dir="${PROMETHEUS_OUT_DIR:-/tmp/backbone-prometheus}"
mkdir -p "$out_dir"
# rule_files are relative to the config file: give the rendered config the same neighbours.
for entry in "$src_dir"/*; do
  name="$(basename "$entry")"
  [ "$name" = prometheus.yml ] && continue
  ln -sfn "$entry" "$out_dir/$name"
done

awk '
  BEGIN {
    map["127.0.0.1:9093"] = "alertmanager:9093"
    map["127.0.0.1:9465"] = "sink:9465"
    map["127.0.0.1:9466"] = "alert-forwarder:9466"
    map["127.0.0.1:9090"] = "localhost:9090"
  }
  # The processors: `static_configs:` + `- targets: ["127.0.0.1:9464"]` -> DNS discovery of replicas.
  pending != "" {
    if ($0 ~ /- targets: \["127\.0\.0\.1:9464"\]/) {
      indent = pending; sub(/static_configs:.*/, "", indent)
      item = $0; sub(/- targets:.*/, "", item)
      print indent "dns_sd_configs:"
      print item "- names: [\"processor\"]"
      print item "  type: A"
      print item "  port: 9464"
      pending = ""; next
    }
    print pending; pending = ""
  }
  /^[ \t]*static_configs:[ \t]*$/ { pending = $0; next }
  {
    for (from in map) { gsub(from, map[from]) }
    print
  }
  END { if (pending != "") print pending }
' "$src_dir/prometheus.yml" >"$out_dir/prometheus.yml"

if grep -n '127\.0\.0\.1' "$out_dir/prometheus.yml" >&2; then
  echo "error: loopback address left in the rendered Prometheus config (a new target in alerting/prometheus.yml?)" >&2
  exit 1
fi
[ "${PROMETHEUS_RENDER_ONLY:-0}" = 1 ] && exit 0
exec /bin/prometheus --config.file="$out_dir/prometheus.yml" --storage.tsdb.path=/prometheus \
  --storage.tsdb.retention.time="${PROMETHEUS_RETENTION:-30d}" --web.listen-address=:9090 "$@"
