#!/usr/bin/env python3
"""Writes a CloudTrail JSON-lines file for `benches/peers.sh`: N records made from the real
public CloudTrail examples in ../shared/corpus/aws (TrailDiscover's single events and the
stratus-red-team detonation logs), re-keyed to K access keys of one account, each key calling
from 1-3 home addresses in its own /24 of one cloud range (52.94.0.0/16) with an everyday SDK or CLI
user agent, times increasing over the days given. Background traffic, as most of a real trail
is: 99 % of the records are the samples' successful read-only calls (one sample per API),
1 % any sample (writes, errors, the odd attack step). Deterministic for a seed.

    python3 benches/peers-gen.py OUT N [--keys 10000] [--days 3] [--seed 1] [--corpus DIR]
"""
import argparse
import glob
import json
import os
import random
import sys
from datetime import datetime, timedelta, timezone


def samples(corpus):
    out = []
    paths = sorted(glob.glob(os.path.join(corpus, "aws/traildiscover-examples/*.cloudtrail")))
    paths += sorted(glob.glob(os.path.join(corpus, "aws/stratus-detonation-logs/*.json")))
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
            doc = doc["Records"]
        for event in doc if isinstance(doc, list) else [doc]:
            # API calls made with a key (the records a key detector and a Sigma rule both see).
            if isinstance(event, dict) and isinstance(event.get("userIdentity"), dict) \
                    and event.get("eventName") and event.get("eventSource"):
                out.append(event)
    return out


AGENTS = [
    "aws-cli/2.15.30 Python/3.11.8 Linux/6.1.0-18-amd64 exe/x86_64.debian.12 prompt/off command/s3.ls",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.69",
    "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64 api/s3#1.53.0",
    "aws-sdk-java/2.25.16 Linux/6.1.0 OpenJDK_64-Bit_Server_VM/17.0.10+7 Java/17.0.10 vendor/Eclipse_Adoptium io/sync http/Apache cfg/retry-mode/legacy",
    "Terraform/1.7.5 (+https://www.terraform.io) terraform-provider-aws/5.42.0 (+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.26.0 os/linux lang/go#1.22.1",
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("n", type=int)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--corpus", default=os.path.join(os.path.dirname(__file__), "../../shared/corpus"))
    a = p.parse_args()
    base = samples(a.corpus)
    if not base:
        sys.exit(f"no CloudTrail samples under {a.corpus}/aws")
    # One template per API (the detonation logs repeat a few calls hundreds of times).
    background = {}
    for e in base:
        if e.get("readOnly") is True and not e.get("errorCode"):
            background.setdefault(e["eventName"], e)
    background = list(background.values()) or base
    rng = random.Random(a.seed)
    account = "111122223333"
    keys = []
    for k in range(a.keys):
        key = "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        net = rng.randrange(256)
        home = [f"52.94.{net}.{rng.randrange(1, 255)}" for _ in range(rng.randint(1, 3))]
        keys.append((key, f"user{k:05d}", home))
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    span = a.days * 86400
    with open(a.out, "w") as f:
        for i in range(a.n):
            event = dict(rng.choice(background if rng.random() < 0.99 else base))
            key, user, home = keys[rng.randrange(len(keys))]
            ident = dict(event["userIdentity"])
            ident.update({
                "type": "IAMUser",
                "principalId": "AIDA" + key[4:],
                "arn": f"arn:aws:iam::{account}:user/{user}",
                "accountId": account,
                "accessKeyId": key,
                "userName": user,
            })
            ident.pop("sessionContext", None)
            event["userIdentity"] = ident
            event["sourceIPAddress"] = rng.choice(home)
            event["userAgent"] = rng.choice(AGENTS)
            t = start + timedelta(seconds=i * span // max(a.n, 1))
            event["eventTime"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
            event["eventID"] = f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
            event["recipientAccountId"] = account
            f.write(json.dumps(event, separators=(",", ":")))
            f.write("\n")


if __name__ == "__main__":
    main()
