#!/usr/bin/env python3
"""Checks the alerts of a rendered chart's PrometheusRule.

Every alert must have an expression that parses as PromQL, a `for`, a `severity` label, and a
summary, a description and a runbook_url whose anchor names a section of the runbook.

Usage: check-alerts.py RENDERED.yaml RUNBOOK.md (the output of `helm template`, and
docs/operations.md).
"""

import re
import sys

import promql_parser
import yaml

SEVERITIES = {"critical", "warning", "info"}


def anchor(heading):
    """The anchor a Markdown renderer (GitHub, GitLab) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def problems_of(rule, anchors):
    name = rule.get("alert")
    if not name:
        name = f"the rule {rule.get('expr', '')!r}"
        yield f"{name}: neither alert nor record"
    try:
        promql_parser.parse(rule.get("expr") or "")
    except ValueError as error:
        yield f"{name}: expr does not parse: {error}"
    if not rule.get("for"):
        yield f"{name}: no for"
    if rule.get("labels", {}).get("severity") not in SEVERITIES:
        yield f"{name}: labels.severity is none of {sorted(SEVERITIES)}"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        if not annotations.get(key):
            yield f"{name}: no annotations.{key}"
    section = annotations.get("runbook_url", "").rpartition("#")[2]
    if section not in anchors:
        yield f"{name}: the runbook has no section #{section}"


def main(rendered_path, runbook_path):
    with open(rendered_path) as rendered:
        docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    with open(runbook_path) as runbook:
        anchors = {anchor(line.lstrip("#")) for line in runbook if line.startswith("#")}
    rules = [
        rule
        for doc in docs
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    # A rule that records nothing is an alert, even one whose `alert` key is misspelled.
    alerts = [rule for rule in rules if "record" not in rule]
    problems = [problem for rule in alerts for problem in problems_of(rule, anchors)]
    if not alerts:
        problems.append("no PrometheusRule with alerts in " + rendered_path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{len(alerts)} alerts: " + ", ".join(rule["alert"] for rule in alerts))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
