#!/usr/bin/env python3
"""Writes an alarm-storm stress file: N CloudTrail records (JSON lines) whose keys each touch
many places — every call from a fresh public IP, in a random region, with a random user agent
(some of them attack tools) and a random API (some of them sensitive), failures mixed in.

Nearly every record opens new alarms (new source IP, new country / ASN with GeoIP, region
sweep, hacker tool, sensitive API, ...), so `replay` on it measures the cost of an alarm storm:
peak RSS with the open-alarm caps, and that every alarm is still delivered.

    python3 benches/storm.py --events 1000000 --keys 10000 > target/storm.jsonl
    /usr/bin/time -v target/release/akwatch replay target/storm.jsonl \
        --geoip target/geoip/GeoLite2-City.mmdb --geoip target/geoip/GeoLite2-ASN.mmdb > /dev/null

Deterministic for a given --seed.
"""

import argparse
import json
import random
import sys
from datetime import datetime, timedelta, timezone

REGIONS = [
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-west-3",
    "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2",
    "ap-southeast-1", "ap-southeast-2", "sa-east-1", "ca-central-1", "me-south-1", "af-south-1",
]
APIS = [
    ("s3.amazonaws.com", "GetObject", True),
    ("s3.amazonaws.com", "ListBuckets", True),
    ("ec2.amazonaws.com", "DescribeInstances", True),
    ("ec2.amazonaws.com", "DescribeRegions", True),
    ("sts.amazonaws.com", "GetCallerIdentity", True),
    ("iam.amazonaws.com", "ListUsers", True),
    ("iam.amazonaws.com", "GetAccountAuthorizationDetails", True),
    ("iam.amazonaws.com", "CreateAccessKey", False),
    ("iam.amazonaws.com", "CreateUser", False),
    ("iam.amazonaws.com", "AttachUserPolicy", False),
    ("secretsmanager.amazonaws.com", "GetSecretValue", True),
    ("ssm.amazonaws.com", "GetParameter", True),
    ("kms.amazonaws.com", "Decrypt", True),
    ("lambda.amazonaws.com", "ListFunctions20150331", True),
    ("cloudtrail.amazonaws.com", "DescribeTrails", True),
]
AGENTS = [
    "aws-cli/2.15.30 md/awscrt#0.19.19 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#5.15.0 md/arch#x86_64 lang/python#3.10.12",
    "aws-sdk-go-v2/1.26.0 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64",
    "pacu/1.5.2 Boto3/1.34.0 Python/3.11.4",
    "python-requests/2.31.0",
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "aws-sdk-java/2.25.10 Linux/5.10 OpenJDK_64-Bit_Server_VM/17.0.10",
]


def public_ip(rng):
    while True:
        a = rng.randint(1, 223)
        if a in (10, 127, 100, 169, 172, 192, 198, 203):
            continue
        return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start", default="2025-06-02T00:00:00")
    ap.add_argument("--seconds", type=int, default=3 * 86400, help="time span of the file")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    start = datetime.fromisoformat(args.start).replace(tzinfo=timezone.utc)
    step = args.seconds / max(args.events, 1)
    out = sys.stdout
    for i in range(args.events):
        k = rng.randrange(args.keys)
        source, name, read_only = rng.choice(APIS)
        t = start + timedelta(seconds=i * step)
        failed = rng.random() < 0.1
        rec = {
            "eventVersion": "1.09",
            "userIdentity": {
                "type": "IAMUser",
                "principalId": f"AIDASTORM{k:011d}",
                "arn": f"arn:aws:iam::123456789012:user/storm-{k:05d}",
                "accountId": "123456789012",
                "accessKeyId": f"AKIASTORM{k:011d}",
                "userName": f"storm-{k:05d}",
            },
            "eventTime": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": source,
            "eventName": name,
            "awsRegion": rng.choice(REGIONS),
            "sourceIPAddress": public_ip(rng),
            "userAgent": rng.choice(AGENTS) + f" exec-env/{rng.getrandbits(32):08x}",
            "requestParameters": {"userName": f"storm-{rng.randrange(args.keys):05d}"}
            if source == "iam.amazonaws.com"
            else None,
            "responseElements": None,
            "requestID": f"{i:08x}-0000-4000-8000-{k:012d}",
            "eventID": f"{i:08x}-5707-4000-8000-{k:012d}",
            "readOnly": read_only,
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "recipientAccountId": "123456789012",
            "eventCategory": "Management",
        }
        if failed:
            rec["errorCode"] = "AccessDenied"
            rec["errorMessage"] = f"User: storm-{k:05d} is not authorized to perform: {name}"
        out.write(json.dumps(rec, separators=(",", ":")))
        out.write("\n")


if __name__ == "__main__":
    main()
