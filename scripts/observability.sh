#!/usr/bin/env bash
# `make observability`: Prometheus (and Grafana when GRAFANA_IMAGE is given) in
# namespace flatnet-observability of kind cluster $CLUSTER, from images built here:
# Prometheus from Debian's package (scripts/prometheus-image.sh). Waits until
# Prometheus is ready and has scraped every flatnet agent, shows a query of an agent
# metric, and prints how to look.
#   PROMETHEUS_IMAGE=ref  use an image the nodes already have instead of building one
#   GRAFANA_IMAGE=ref     also run Grafana (an image in the local Docker engine, loaded
#                         into kind; no Grafana image is built here: see README)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
KUBECTL="$BIN_DIR/kubectl"
export KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
NS=flatnet-observability
DIR="$REPO_ROOT/dataplane/manifests/observability"
TIMEOUT=${OBSERVABILITY_TIMEOUT:-180s}

require_cluster "create it with 'make cluster deploy'"

# kube ARGS...: kubectl, retried: other suites may restart nodes or the API server.
kube() {
	local i
	for i in 1 2 3 4 5; do
		"$KUBECTL" "$@" && return 0
		[ $i -lt 5 ] && warn "kubectl $1 failed; retrying in $((i * 3))s" && sleep $((i * 3))
	done
	return 1
}

on_failure() {
	warn "observability did not come up; state of namespace $NS:"
	"$KUBECTL" -n "$NS" get pods -o wide >&2 || true
	"$KUBECTL" -n "$NS" describe pods >&2 2>&1 | tail -n 30 >&2 || true
	"$KUBECTL" -n "$NS" logs deploy/prometheus --tail=20 >&2 || true
}

PROM_IMAGE=${PROMETHEUS_IMAGE:-}
if [ -z "$PROM_IMAGE" ]; then
	PROM_IMAGE=$(bash "$REPO_ROOT/scripts/prometheus-image.sh" | tail -n 1)
	[ -n "$PROM_IMAGE" ] || die "prometheus-image.sh printed no image ref"
fi

step "observability: Prometheus $PROM_IMAGE in namespace $NS"
# Static pod discovery: Debian's prometheus has no Kubernetes SD, so the agents'
# pods are listed here into a file_sd file (hostNetwork: pod IP = node IP, port 9969).
targets() {
	"$KUBECTL" -n flatnet-system get pods -l app.kubernetes.io/name=flatnet-agent -o json | python3 -c '
import json, sys
out = []
for p in json.load(sys.stdin)["items"]:
    ip = p.get("status", {}).get("podIP")
    port = next((c["containerPort"] for c in p["spec"]["containers"][0].get("ports", []) if c.get("name") == "metrics"), 9969)
    if ip:
        out.append({"targets": [f"{ip}:{port}"], "labels": {"node": p["spec"]["nodeName"]}})
out.sort(key=lambda t: t["labels"]["node"])
print(json.dumps(out, indent=1))'
}
for i in 1 2 3 4 5; do
	agents_json=$(targets) && break
	sleep $((i * 3))
done
[ -n "${agents_json:-}" ] && [ "$agents_json" != "[]" ] || die "no flatnet agent pods in flatnet-system" "deploy flatnet first: make deploy"
agents=$(grep -c '"targets"' <<<"$agents_json")
info "$agents agents: $(python3 -c 'import json,sys; print(", ".join(t["labels"]["node"] + "=" + t["targets"][0] for t in json.load(sys.stdin)))' <<<"$agents_json")"
hash=$(sha256sum "$DIR/prometheus.yaml" | cut -c1-16)
# One apply, in order: the namespace, the targets the pod mounts, then the rest.
{
	sed -e "s|@PROMETHEUS_IMAGE@|$PROM_IMAGE|g" -e "s|@CONFIG_HASH@|$hash|g" "$DIR/prometheus.yaml" | sed -n '1,/^---$/p'
	"$KUBECTL" -n "$NS" create configmap prometheus-targets --from-literal=flatnet-agents.json="$agents_json" --dry-run=client -o yaml
	echo ---
	sed -e "s|@PROMETHEUS_IMAGE@|$PROM_IMAGE|g" -e "s|@CONFIG_HASH@|$hash|g" "$DIR/prometheus.yaml" | sed '1,/^---$/d'
} >"$OUT_DIR/observability.yaml"
kube apply -f "$OUT_DIR/observability.yaml" >&2 || die "applying $DIR/prometheus.yaml failed"

if [ -n "${GRAFANA_IMAGE:-}" ]; then
	step "observability: Grafana $GRAFANA_IMAGE with the flatnet dashboard"
	if docker image inspect "$GRAFANA_IMAGE" >/dev/null 2>&1; then
		run_logged "$OUT_DIR/grafana-load.log" "$BIN_DIR/kind" load docker-image --name "$CLUSTER" "$GRAFANA_IMAGE"
	else
		warn "$GRAFANA_IMAGE is not in the local Docker engine: the nodes must already have it (they cannot pull)"
	fi
	kube -n "$NS" create configmap grafana-dashboards --from-file="$DIR/flatnet-dashboard.json" \
		--dry-run=client -o yaml | kube apply -f - >&2
	hash=$(cat "$DIR/grafana.yaml" "$DIR/flatnet-dashboard.json" | sha256sum | cut -c1-16)
	sed -e "s|@GRAFANA_IMAGE@|$GRAFANA_IMAGE|g" -e "s|@CONFIG_HASH@|$hash|g" "$DIR/grafana.yaml" |
		kube apply -f - >&2 || die "applying $DIR/grafana.yaml failed"
fi

step "observability: waiting for Prometheus"
if ! "$KUBECTL" -n "$NS" rollout status deploy/prometheus --timeout="$TIMEOUT" >&2; then
	on_failure
	die "Prometheus did not become ready within $TIMEOUT"
fi

# query PROMQL: the API's JSON answer, through the API server's service proxy (no
# port-forward, nothing listens on this machine).
query() {
	"$KUBECTL" get --raw "/api/v1/namespaces/$NS/services/prometheus:http/proxy/api/v1/query?query=$(
		python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")"
}
# values JSON: "label=value value" per series.
values() {
	python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    m = r["metric"]
    print(" ".join(f"{k}={v}" for k, v in sorted(m.items())) or "{}", r["value"][1])'
}

step "observability: waiting until Prometheus scraped the $agents flatnet agents"
deadline=$(($(date +%s) + 180))
up=0
while :; do
	up=$(query 'count(up{job="flatnet-agent"} == 1)' 2>/dev/null | values 2>/dev/null | awk '{print $NF}' || true)
	[ -n "$up" ] && [ "$up" -ge "$agents" ] && break
	if [ "$(date +%s)" -ge "$deadline" ]; then
		query 'up{job="flatnet-agent"}' | values >&2 || true
		on_failure
		die "Prometheus scraped ${up:-0} of $agents agents within 180s"
	fi
	sleep 5
done
info "every agent scraped ($up up)"

q='sum by (node) (flatnet_endpoints)'
printf '\n  %s\n' "$q" >&2
query "$q" | values | sed 's/^/    /' >&2
q='sum by (node, verdict) (flatnet_datapath_packets_total)'
printf '  %s\n' "$q" >&2
query "$q" | values | sed 's/^/    /' >&2

cat >&2 <<EOF

  Look:
    export KUBECONFIG=$KUBECONFIG
    $KUBECTL -n $NS port-forward svc/prometheus 9090    # http://127.0.0.1:9090
EOF
if [ -n "${GRAFANA_IMAGE:-}" ]; then
	if "$KUBECTL" -n "$NS" rollout status deploy/grafana --timeout="$TIMEOUT" >&2; then
		echo "    $KUBECTL -n $NS port-forward svc/grafana 3000       # http://127.0.0.1:3000 (dashboard \"flatnet\")" >&2
	else
		warn "Grafana did not become ready within $TIMEOUT: $KUBECTL -n $NS logs deploy/grafana"
	fi
else
	echo "    Grafana: GRAFANA_IMAGE=<an image you have> make observability, or import dataplane/manifests/observability/flatnet-dashboard.json" >&2
fi
echo >&2
