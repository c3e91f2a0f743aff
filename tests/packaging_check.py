"""Checks the deployment files: the compose file, the Kubernetes manifests and the Prometheus
config parse as YAML and hold what running them needs; the Grafana dashboard parses as JSON and
queries only metrics PgWeir exports (names given on the command line, one per argument after
the repository root).

Usage: packaging_check.py REPO METRIC...
"""
import json
import re
import sys

import yaml

repo, metrics = sys.argv[1], set(sys.argv[2:])


def load_all(path):
    with open(f"{repo}/{path}") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


compose = load_all("docker/compose.yml")[0]
services = compose["services"]
for name in ["primary", "replica", "redis", "pgweir-a", "pgweir-b", "prometheus"]:
    assert name in services, f"compose lacks service {name}"
for name in ["pgweir-a", "pgweir-b"]:
    s = services[name]
    assert s["build"]["dockerfile"] == "docker/Dockerfile", name
    assert "/etc/pgweir/pgweir.toml" in " ".join(s["volumes"]), name
    assert s.get("ports"), f"{name} publishes no port"
prom = load_all("docker/prometheus.yml")[0]
targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
assert {"pgweir-a:9187", "pgweir-b:9187"} <= set(targets), targets

for manifest in ["deploy/k8s/fleet.yaml", "deploy/k8s/sidecar.yaml"]:
    docs = load_all(manifest)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Deployment"} <= kinds, (manifest, kinds)
    for d in docs:
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), (manifest, d.get("kind"))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), manifest
    pod = spec["template"]["spec"]
    pgweir = next(c for c in pod["containers"] if c["name"] == "pgweir")
    assert pgweir["readinessProbe"]["httpGet"]["path"] == "/readyz", manifest
    assert pgweir["livenessProbe"]["httpGet"]["path"] == "/healthz", manifest
    assert pgweir["lifecycle"]["preStop"], manifest
    assert pgweir["securityContext"]["runAsNonRoot"] if "securityContext" in pgweir else pod["securityContext"]["runAsNonRoot"]
    assert pod["terminationGracePeriodSeconds"] > 30, manifest
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["pgweir.toml"]
    assert "[metrics]" in config and "9187" in config, manifest
    if "fleet" in manifest:
        service = next(d for d in docs if d["kind"] == "Service")
        assert {p["port"] for p in service["spec"]["ports"]} == {6432, 9187}

with open(f"{repo}/deploy/grafana/pgweir.json") as f:
    dash = json.load(f)
assert dash["panels"], "empty dashboard"
used = set()
for p in dash["panels"]:
    for t in p["targets"]:
        used |= set(re.findall(r"\bpgweir_[a-z0-9_]+", t["expr"]))
base = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
unknown = sorted(m for m in base if m not in metrics)
assert not unknown, f"the dashboard queries metrics PgWeir does not export: {unknown}"
print(f"ok packaging ({len(used)} metrics in the dashboard)")
