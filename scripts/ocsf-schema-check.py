#!/usr/bin/env python3
"""Self-test of schemas/ocsf-1.8.0-detection_finding.schema.json.

    python3 scripts/ocsf-schema-check.py [OCSF_SOURCE_DIR]

Needs the `jsonschema` Python package.  Validates hand-written Detection
Finding samples (some valid, some deliberately broken) against the committed
schema and prints PASS/FAIL per sample; exits non-zero when a sample does not
give the expected result.  When the OCSF source tree is present it also checks
that the committed schema is what scripts/ocsf-schema.py generates today.
"""

import copy
import json
import os
import subprocess
import sys

import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCHEMA = os.path.join(REPO, "schemas", "ocsf-1.8.0-detection_finding.schema.json")
GENERATOR = os.path.join(HERE, "ocsf-schema.py")

TIME_MS = 1733200000123  # 2024-12-03T04:26:40.123Z

MINIMAL = {
    "activity_id": 1,
    "category_uid": 2,
    "class_uid": 2004,
    "finding_info": {"uid": "akw-0001", "title": "Leaked access key used"},
    "metadata": {
        "product": {"name": "akwatch", "vendor_name": "akwatch"},
        "version": "1.8.0",
    },
    "severity_id": 4,
    "time": TIME_MS,
    "type_uid": 200401,
}

FULL = {
    "activity_id": 1,
    "activity_name": "Create",
    "category_name": "Findings",
    "category_uid": 2,
    "class_name": "Detection Finding",
    "class_uid": 2004,
    "cloud": {"provider": "AWS", "account": {"uid": "123456789012", "type_id": 10}, "region": "eu-west-1"},
    "confidence_id": 3,
    "count": 3,
    "end_time": TIME_MS,
    "evidences": [
        {
            "src_endpoint": {"ip": "203.0.113.7"},
            "api": {"operation": "CreateAccessKey", "service": {"name": "iam.amazonaws.com"}},
            "user": {"uid": "AIDAEXAMPLE", "name": "alice", "type_id": 1},
        }
    ],
    "finding_info": {
        "uid": "akw-0002",
        "title": "Root key used",
        "desc": "The root account's access key was used.",
        "analytic": {"name": "root_key_use", "type_id": 1},
        "attacks": [
            {
                "tactic": {"uid": "TA0004", "name": "Privilege Escalation"},
                "technique": {"uid": "T1078", "name": "Valid Accounts"},
                "sub_technique": {"uid": "T1078.004", "name": "Cloud Accounts"},
                "version": "15.1",
            }
        ],
        "created_time": TIME_MS,
        "created_time_dt": "2024-12-03T04:26:40.123Z",
        "types": ["root_key_use"],
    },
    "is_alert": True,
    "message": "Root access key used from a new IP",
    "metadata": {
        "product": {"name": "akwatch", "vendor_name": "akwatch", "version": "0.1.0"},
        "version": "1.8.0",
        "profiles": ["cloud", "datetime"],
        "uid": "7f8e2f0c-6c43-4a8e-9d0b-0a4e8a4b9d11",
        "logged_time": TIME_MS,
    },
    "observables": [
        {"name": "evidences[0].src_endpoint.ip", "type_id": 2, "value": "203.0.113.7"},
        {"name": "evidences[0].user.name", "type_id": 4, "value": "alice"},
    ],
    "remediation": {"desc": "Delete the root access key and rotate credentials."},
    "resources": [{"uid": "arn:aws:iam::123456789012:root", "type": "AWS::IAM::User", "cloud_partition": "aws"}],
    "severity": "Critical",
    "severity_id": 5,
    "start_time": TIME_MS - 60000,
    "status_id": 1,
    "time": TIME_MS,
    "time_dt": "2024-12-03T04:26:40.123Z",
    "type_name": "Detection Finding: Create",
    "type_uid": 200401,
    "unmapped": {"anything": {"goes": [1, "two", None]}, "rule_version": 3},
}


def mutate(sample, fn):
    s = copy.deepcopy(sample)
    fn(s)
    return s


def rename(d, old, new):
    d[new] = d.pop(old)


CASES = [
    ("minimal valid", MINIMAL, True),
    ("full valid (profiles, attacks, evidences, resources, observables, unmapped)", FULL, True),
    ("misspelt top-level field (severity_idd)", mutate(MINIMAL, lambda s: rename(s, "severity_id", "severity_idd")), False),
    ("misspelt top-level field beside a valid one (finding_infos)", mutate(MINIMAL, lambda s: s.update(finding_infos={})), False),
    ("misspelt nested field (finding_info.titel)", mutate(MINIMAL, lambda s: rename(s["finding_info"], "title", "titel")), False),
    ("missing required top-level field (time)", mutate(MINIMAL, lambda s: s.pop("time")), False),
    ("missing required top-level field (finding_info)", mutate(MINIMAL, lambda s: s.pop("finding_info")), False),
    ("missing required nested field (metadata.version)", mutate(MINIMAL, lambda s: s["metadata"].pop("version")), False),
    ("missing required nested field (finding_info.uid)", mutate(MINIMAL, lambda s: s["finding_info"].pop("uid")), False),
    ("wrong enum (severity_id 7)", mutate(MINIMAL, lambda s: s.update(severity_id=7)), False),
    ("wrong enum (activity_id 4)", mutate(MINIMAL, lambda s: s.update(activity_id=4, type_uid=200404)), False),
    ("wrong class_uid (2001)", mutate(MINIMAL, lambda s: s.update(class_uid=2001)), False),
    ("type_uid not class_uid*100+activity_id", mutate(MINIMAL, lambda s: s.update(type_uid=200402)), False),
    ("timestamp as string", mutate(MINIMAL, lambda s: s.update(time="2024-12-03T04:26:40Z")), False),
    ("time_dt not RFC 3339", mutate(MINIMAL, lambda s: s.update(time_dt="03/12/2024")), False),
    ("null for an optional field", mutate(MINIMAL, lambda s: s.update(message=None)), False),
    ("product without name or uid (at_least_one)", mutate(MINIMAL, lambda s: s["metadata"].update(product={"vendor_name": "akwatch"})), False),
    ("attack without tactic/technique/sub_technique", mutate(FULL, lambda s: s["finding_info"].update(attacks=[{"version": "15.1"}])), False),
    ("observable with unknown type_id", mutate(FULL, lambda s: s["observables"][0].update(type_id=1234)), False),
    ("remediation without desc", mutate(FULL, lambda s: s.update(remediation={"references": ["x"]})), False),
]


def required_report(schema):
    defs = schema["$defs"]
    print("required top-level: %s" % ", ".join(schema["required"]))
    for name in ("metadata", "product", "finding_info", "analytic", "attack", "tactic", "technique",
                 "sub_technique", "resource_details", "evidences", "remediation", "observable",
                 "fingerprint", "cloud", "osint"):
        d = defs.get(name)
        if d is None:
            continue
        line = "required %s: %s" % (name, ", ".join(d.get("required", [])) or "-")
        for kw, label in (("anyOf", "at least one of"), ("oneOf", "exactly one of")):
            if kw in d:
                line += "; %s %s" % (label, ", ".join(c["required"][0] for c in d[kw]))
        print(line)


def freshness(argv):
    if len(argv) > 1:
        src = argv[1]
    else:
        src = os.path.join(REPO, "..", "shared", "corpus", "ocsf-schema-1.8.0")
    if not os.path.isfile(os.path.join(src, "dictionary.json")):
        print("SKIP freshness: no OCSF source at %s" % src)
        return True
    out = subprocess.run([sys.executable, GENERATOR, src], check=True, capture_output=True).stdout
    with open(SCHEMA, "rb") as f:
        ok = f.read() == out
    print("%s freshness: committed schema %s the generator output" % ("PASS" if ok else "FAIL", "matches" if ok else "differs from"))
    return ok


def main(argv):
    with open(SCHEMA, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    required_report(schema)
    failures = 0
    for label, sample, expect_valid in CASES:
        errors = sorted(validator.iter_errors(sample), key=lambda e: list(e.absolute_path))
        valid = not errors
        ok = valid == expect_valid
        failures += not ok
        detail = ""
        if errors:
            e = errors[0]
            path = "/".join(str(p) for p in e.absolute_path) or "(top)"
            detail = " -- %s: %s" % (path, e.message[:160])
        print("%s %s (expected %s, got %s)%s" % (
            "PASS" if ok else "FAIL", label, "valid" if expect_valid else "invalid",
            "valid" if valid else "invalid", detail))
    if not freshness(argv):
        failures += 1
    print("%d failure(s)" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
