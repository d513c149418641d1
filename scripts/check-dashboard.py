#!/usr/bin/env python3
"""Checks the Grafana dashboard: valid JSON, a unit on every panel (one per panel, so no axis
mixes seconds with counts), and every query selecting the namespace, release and pod chosen in
its template variables.

Usage: check-dashboard.py DASHBOARD.json
"""

import json
import sys

SELECTORS = ('namespace="$namespace"', 'release="$release"', 'pod=~"$pod"')


def problems_of(dashboard):
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for name in ("namespace", "release", "pod"):
        if name not in variables:
            yield f"no template variable {name}"
    for panel in dashboard["panels"]:
        title = panel.get("title", panel.get("id"))
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            yield f"{title}: no unit"
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            if any(p.get("id") == "unit" for p in override.get("properties", [])):
                yield f"{title}: an override changes the unit (split the panel instead)"
        for target in panel.get("targets", []):
            missing = [s for s in SELECTORS if s not in target.get("expr", "")]
            if missing:
                yield f"{title}, query {target.get('refId')}: does not select {missing}"


def main(path):
    with open(path) as file:
        dashboard = json.load(file)
    problems = list(problems_of(dashboard))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
