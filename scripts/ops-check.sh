#!/usr/bin/env bash
# Checks the operations kit under deploy/:
#   - Prometheus: `promtool check config` (prometheus.yml and the rule files it loads),
#     `promtool check rules` (alerts.yml), `promtool test rules` (alerts.test.yml);
#   - Grafana: the dashboard (deploy/grafana/akwatch.json) and its provisioning files parse and
#     fit together and with docker-compose.yml, and every dashboard query is valid PromQL;
#   - with a metrics exposition (--metrics FILE, or --url URL to scrape, e.g. a running
#     `akwatch run`'s http://127.0.0.1:9464/metrics): `promtool check metrics` on it, and every
#     metric the dashboard and the alert rules use is in it (its `# HELP` / `# TYPE` lines).
# Without --metrics / --url only the static checks run (no akwatch, no broker needed).
#
#   bash scripts/ops-check.sh
#   bash scripts/ops-check.sh --metrics metrics.txt
#   bash scripts/ops-check.sh --url http://127.0.0.1:9464/metrics
#   bash scripts/ops-check.sh --metrics metrics.txt --allow-missing akwatch_notifications_sent_total
#
# Installs what is missing with apt-get (sudo when not root): promtool (Debian's `prometheus`
# package), python3 and PyYAML. Exits 0 when every check passed, 1 when one failed, 2 on a usage
# error.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

metrics_file=""
metrics_url=""
allow_missing=()
while [ $# -gt 0 ]; do
    case "$1" in
        --metrics)
            [ $# -ge 2 ] || { echo "ops-check: --metrics needs a FILE" >&2; exit 2; }
            metrics_file="$2"; shift 2 ;;
        --url)
            [ $# -ge 2 ] || { echo "ops-check: --url needs a URL" >&2; exit 2; }
            metrics_url="$2"; shift 2 ;;
        --allow-missing)
            [ $# -ge 2 ] || { echo "ops-check: --allow-missing needs a metric name" >&2; exit 2; }
            allow_missing+=("$2"); shift 2 ;;
        -h|--help)
            usage; exit 0 ;;
        *)
            echo "ops-check: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$metrics_file" ] && [ -n "$metrics_url" ]; then
    echo "ops-check: give --metrics or --url, not both" >&2
    exit 2
fi

sources=(deploy/grafana/akwatch.json deploy/prometheus/alerts.yml)
for f in deploy/prometheus/prometheus.yml deploy/prometheus/alerts.test.yml "${sources[@]}" \
    deploy/grafana/provisioning/datasources/akwatch.yml \
    deploy/grafana/provisioning/dashboards/akwatch.yml docker-compose.yml; do
    [ -r "$f" ] || { echo "ops-check: $f is missing" >&2; exit 1; }
done

failures=0
step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    failures=$((failures + 1))
}
die() {
    printf 'ops-check: %s\n' "$*" >&2
    exit 1
}

# --- tools -----------------------------------------------------------------------------------

python=""
find_python() {
    for p in python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' >/dev/null 2>&1; then
            python="$p"
            return 0
        fi
    done
    return 1
}

step "tools"
packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
if ! find_python; then
    command -v /usr/bin/python3 >/dev/null 2>&1 || packages+=(python3)
    packages+=(python3-yaml)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing with apt-get: ${packages[*]}"
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install ${packages[*]} (promtool comes with Prometheus) yourself"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and sudo not found: install ${packages[*]} as root"
        sudo=(sudo)
    fi
    ${sudo[@]+"${sudo[@]}"} apt-get update
    ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${packages[@]}"
fi
command -v promtool >/dev/null 2>&1 || die "promtool is still missing after installing prometheus"
find_python || die "python3 with PyYAML is still missing after installing python3-yaml"
promtool --version 2>&1 | head -n 1
"$python" --version

# --- Prometheus ------------------------------------------------------------------------------

step "Prometheus configuration (promtool check config: the config and the rule files it loads)"
if promtool check config deploy/prometheus/prometheus.yml; then
    ok "deploy/prometheus/prometheus.yml"
else
    fail "promtool check config deploy/prometheus/prometheus.yml"
fi

step "alert rules (promtool check rules)"
if promtool check rules deploy/prometheus/alerts.yml; then
    ok "deploy/prometheus/alerts.yml"
else
    fail "promtool check rules deploy/prometheus/alerts.yml"
fi

step "alert rule unit tests (promtool test rules)"
if promtool test rules deploy/prometheus/alerts.test.yml; then
    ok "deploy/prometheus/alerts.test.yml"
else
    fail "promtool test rules deploy/prometheus/alerts.test.yml"
fi

# --- Grafana ---------------------------------------------------------------------------------

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "Grafana dashboard and provisioning"
# Checks the files and writes every dashboard query, Grafana's variables replaced, as a
# recording rule into $work/dashboard-queries.yml for promtool to parse.
if "$python" - "$work/dashboard-queries.yml" <<'PY'
import json, re, sys
import yaml

out = sys.argv[1]
problems = []
def problem(msg):
    problems.append(msg)

def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)

dash_path = "deploy/grafana/akwatch.json"
ds_path = "deploy/grafana/provisioning/datasources/akwatch.yml"
prov_path = "deploy/grafana/provisioning/dashboards/akwatch.yml"
try:
    with open(dash_path) as f:
        dash = json.load(f)
except Exception as e:
    print(f"FAILED: {dash_path}: {e}", file=sys.stderr)
    sys.exit(1)
try:
    ds = load_yaml(ds_path)
    prov = load_yaml(prov_path)
    compose = load_yaml("docker-compose.yml")
except Exception as e:
    print(f"FAILED: {e}", file=sys.stderr)
    sys.exit(1)

# The datasource: Prometheus, at the compose service's address, with a fixed uid.
datasources = (ds or {}).get("datasources") or []
if (ds or {}).get("apiVersion") != 1 or len(datasources) != 1:
    problem(f"{ds_path}: want apiVersion: 1 and one datasource")
prom = datasources[0] if datasources else {}
if prom.get("type") != "prometheus":
    problem(f"{ds_path}: the datasource's type is {prom.get('type')!r}, not 'prometheus'")
services = (compose or {}).get("services") or {}
if "prometheus" not in services or "grafana" not in services:
    problem("docker-compose.yml: no prometheus or no grafana service")
if prom.get("url") != "http://prometheus:9090":
    problem(f"{ds_path}: url {prom.get('url')!r}, want 'http://prometheus:9090' (the compose service)")
if not prom.get("uid"):
    problem(f"{ds_path}: the datasource has no uid (the dashboard's default refers to it)")

# The dashboard provider: a file provider whose path holds the dashboard where compose mounts it.
providers = (prov or {}).get("providers") or []
if (prov or {}).get("apiVersion") != 1 or len(providers) != 1:
    problem(f"{prov_path}: want apiVersion: 1 and one provider")
provider = providers[0] if providers else {}
if provider.get("type") != "file":
    problem(f"{prov_path}: the provider's type is {provider.get('type')!r}, not 'file'")
prov_dir = ((provider.get("options") or {}).get("path") or "").rstrip("/")
mounts = {}
for v in (services.get("grafana") or {}).get("volumes") or []:
    parts = str(v).split(":")
    if len(parts) >= 2 and parts[0].startswith("./"):
        mounts[parts[0][2:]] = parts[1]
for local, inside in [(dash_path, None), (ds_path, "/etc/grafana/provisioning/datasources/"),
                      (prov_path, "/etc/grafana/provisioning/dashboards/")]:
    if local not in mounts:
        problem(f"docker-compose.yml: grafana does not mount ./{local}")
    elif inside and not mounts[local].startswith(inside):
        problem(f"docker-compose.yml: grafana mounts ./{local} at {mounts[local]}, not under {inside}")
if dash_path in mounts and not mounts[dash_path].startswith(prov_dir + "/"):
    problem(f"{prov_path}: options.path {prov_dir!r} does not hold the dashboard, mounted at {mounts[dash_path]}")

# The dashboard itself.
for key in ("title", "uid", "panels", "schemaVersion"):
    if key not in dash:
        problem(f"{dash_path}: no {key!r}")
variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
ds_var = variables.get("datasource")
if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
    problem(f"{dash_path}: no 'datasource' variable of type datasource (query: prometheus)")
elif (ds_var.get("current") or {}).get("value") not in (None, prom.get("uid")):
    problem(f"{dash_path}: the datasource variable's default is not the provisioned uid {prom.get('uid')!r}")
builtin = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
           "__interval_ms": "60000"}
def substitute(expr, where):
    def var(m):
        name = m.group(1) or m.group(2)
        if name in builtin:
            return builtin[name]
        if name in variables:
            return ".+"
        problem(f"{where}: unknown variable ${name}")
        return ".+"
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", var, expr)

ids = set()
queries = []
cells = {}
for panel in dash.get("panels") or []:
    pid, title, ptype = panel.get("id"), panel.get("title"), panel.get("type")
    where = f"{dash_path}: panel {pid} {title!r}"
    if pid in ids or pid is None:
        problem(f"{where}: missing or duplicate id")
    ids.add(pid)
    if not ptype or not title:
        problem(f"{where}: no type or no title")
    g = panel.get("gridPos") or {}
    if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
        problem(f"{where}: bad gridPos {g}")
    else:
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problem(f"{where}: overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = pid
            else:
                continue
            break
    if ptype in ("row", "text"):
        continue
    targets = panel.get("targets") or []
    if not targets:
        problem(f"{where}: no query")
    ds_ref = (panel.get("datasource") or {}).get("uid")
    if ds_ref != "${datasource}":
        problem(f"{where}: datasource {ds_ref!r}, want '${{datasource}}'")
    refs = set()
    for t in targets:
        expr = t.get("expr")
        if not expr or not t.get("refId") or t["refId"] in refs:
            problem(f"{where}: a query without expr, or without a unique refId")
            continue
        refs.add(t["refId"])
        queries.append((f"panel_{pid}_{t['refId']}", title, substitute(expr, where)))
for name, v in variables.items():
    if v.get("type") == "query":
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if not m:
            problem(f"{dash_path}: variable {name}: want a label_values(selector, label) query")
        else:
            queries.append((f"variable_{name}", name, substitute(m.group(1), f"variable {name}")))

rules = [{"record": f"dashboard:{w}", "expr": q} for w, _, q in queries]
with open(out, "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)

for p in problems:
    print(f"FAILED: {p}", file=sys.stderr)
print(f"{dash_path}: {len(dash.get('panels') or [])} panels, {len(queries)} queries; "
      f"{ds_path}, {prov_path}: consistent with docker-compose.yml" if not problems else "")
sys.exit(1 if problems else 0)
PY
then
    ok "dashboard and provisioning files"
else
    fail "dashboard or provisioning files (above)"
fi

step "dashboard queries are valid PromQL (promtool check rules on them)"
if [ -s "$work/dashboard-queries.yml" ] && promtool check rules "$work/dashboard-queries.yml" >"$work/queries.log" 2>&1; then
    ok "every dashboard query parses"
else
    cat "$work/queries.log" >&2 2>/dev/null || true
    fail "a dashboard query does not parse (dashboard:panel_<id>_<refId> above names it)"
fi

# --- metric names ----------------------------------------------------------------------------

# The metric names the dashboard and the alert rules use, a histogram's _bucket / _sum / _count
# mapped to its base name.
referenced() {
    { grep -ohE '\b(akwatch|process)_[a-z0-9_]+' "${sources[@]}" || true; } \
        | sed -E 's/_(bucket|sum|count)$//' \
        | sort -u
}
# Referenced through _bucket: must be histograms.
referenced_histograms() {
    { grep -ohE '\b(akwatch|process)_[a-z0-9_]+_bucket\b' "${sources[@]}" || true; } \
        | sed -E 's/_bucket$//' \
        | sort -u
}

step "metric names used by the dashboard and the rules"
referenced | tr '\n' ' '
echo
# Without an exposition: a name that no source file registers is reported (not a failure: a
# metric may still be on its way, and process_* come from the prometheus crate).
unregistered=()
while read -r name; do
    case "$name" in process_*) continue ;; esac
    grep -rqF "\"$name\"" src/ || unregistered+=("$name")
done < <(referenced)
if [ ${#unregistered[@]} -gt 0 ]; then
    echo "notice: not registered under src/ (yet?): ${unregistered[*]}"
fi

if [ -n "$metrics_file" ] || [ -n "$metrics_url" ]; then
    exposition="$work/metrics.txt"
    if [ -n "$metrics_url" ]; then
        step "scraping $metrics_url"
        if command -v curl >/dev/null 2>&1; then
            curl -fsS --max-time 10 "$metrics_url" -o "$exposition" || die "could not scrape $metrics_url"
        else
            "$python" - "$metrics_url" "$exposition" <<'PY' || die "could not scrape $metrics_url"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
PY
        fi
    else
        [ -r "$metrics_file" ] || die "cannot read the metrics file $metrics_file"
        cp "$metrics_file" "$exposition"
    fi

    step "promtool check metrics"
    if promtool check metrics <"$exposition"; then
        ok "the exposition lints clean"
    else
        fail "promtool check metrics (problems above)"
    fi

    step "every metric used is in the exposition"
    declare -A present=()
    declare -A types=()
    while read -r _ kind name type _; do
        present[$name]=1
        [ "$kind" = TYPE ] && types[$name]="$type"
    done < <(grep -E '^# (HELP|TYPE) ' "$exposition")
    declare -A allowed=()
    for a in ${allow_missing[@]+"${allow_missing[@]}"}; do allowed[$a]=1; done
    missing=()
    excused=()
    total=0
    while read -r name; do
        total=$((total + 1))
        if [ -z "${present[$name]:-}" ]; then
            if [ -n "${allowed[$name]:-}" ]; then excused+=("$name"); else missing+=("$name"); fi
        fi
    done < <(referenced)
    not_histograms=()
    while read -r name; do
        [ -n "$name" ] || continue
        if [ -n "${present[$name]:-}" ] && [ "${types[$name]:-}" != histogram ]; then
            not_histograms+=("$name (${types[$name]:-untyped})")
        fi
    done < <(referenced_histograms)
    [ ${#excused[@]} -eq 0 ] || echo "allowed to be missing (--allow-missing): ${excused[*]}"
    if [ ${#missing[@]} -gt 0 ]; then
        fail "used by the dashboard or the alert rules but not in the exposition: ${missing[*]}"
    else
        ok "all $total metric names used are exposed"
    fi
    if [ ${#not_histograms[@]} -gt 0 ]; then
        fail "read through _bucket but not histograms: ${not_histograms[*]}"
    fi
fi

echo
if [ "$failures" -gt 0 ]; then
    echo "ops-check: $failures check(s) FAILED" >&2
    exit 1
fi
echo "ops-check: all checks passed"
