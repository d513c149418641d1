#!/usr/bin/env python3
"""Checks that every pre-install hook of a rendered chart refers only to what exists before it.

Helm creates pre-install hooks, in weight order, before any of the release's own resources: a
hook that names the release's ServiceAccount, Secret or ConfigMap waits for something that is
only created after it, and the install hangs until the hook times out. A hook may refer to an
earlier hook of the same event (a lower weight) or to what the release does not create (the
namespace's default ServiceAccount, a Secret made beforehand).

Usage: check-hooks.py RENDERED.yaml (the output of `helm template`).
"""

import sys

import yaml


def weight(doc):
    return int(doc["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0"))


def hooks_of(doc):
    hooks = doc["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return {hook.strip() for hook in hooks.split(",") if hook.strip()}


def pod_spec(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {}) if doc["kind"] != "Pod" else spec


def references(doc):
    """(kind, name) of every ServiceAccount, Secret and ConfigMap the pod of `doc` needs."""
    spec = pod_spec(doc)
    found = []
    if spec.get("serviceAccountName"):
        found.append(("ServiceAccount", spec["serviceAccountName"]))
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                found.append(("Secret", source["secretKeyRef"]["name"]))
            if "configMapKeyRef" in source:
                found.append(("ConfigMap", source["configMapKeyRef"]["name"]))
        for env_from in container.get("envFrom", []):
            if "secretRef" in env_from:
                found.append(("Secret", env_from["secretRef"]["name"]))
            if "configMapRef" in env_from:
                found.append(("ConfigMap", env_from["configMapRef"]["name"]))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            found.append(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            found.append(("ConfigMap", volume["configMap"]["name"]))
    return found


def main(path):
    with open(path) as rendered:
        docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    owned = {(doc["kind"], doc["metadata"]["name"]) for doc in docs if not hooks_of(doc)}
    problems = []
    for doc in docs:
        if "pre-install" not in hooks_of(doc):
            continue
        earlier = {
            (other["kind"], other["metadata"]["name"])
            for other in docs
            if "pre-install" in hooks_of(other) and weight(other) < weight(doc)
        }
        for reference in references(doc):
            if reference in owned and reference not in earlier:
                problems.append(
                    f"{doc['kind']} {doc['metadata']['name']} (pre-install hook) needs "
                    f"{reference[0]} {reference[1]}, which the release creates only after it"
                )
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
