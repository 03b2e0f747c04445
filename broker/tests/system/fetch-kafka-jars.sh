#!/usr/bin/env bash
# Fetch the Apache Kafka jars (broker + CLI tools) the system tests use into a cache dir.
# Idempotent: does nothing when the lib dir is already populated for the pinned version.
# Usage: fetch-kafka-jars.sh [LIB_DIR]   (default: <repo>/target/kafka-jars/lib)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
lib="${1:-${SPATE_KAFKA_LIB:-$repo/target/kafka-jars/lib}}"
pom="$here/java/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -1)"
stamp="$lib/.complete-$version"
if [[ -f "$stamp" ]]; then
  echo "kafka jars $version already in $lib"
  exit 0
fi
rm -rf "$lib"
mkdir -p "$lib"
echo "fetching kafka jars $version into $lib"
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$lib" -DincludeScope=runtime
ls "$lib"/kafka_2.13-"$version".jar "$lib"/kafka-tools-"$version".jar >/dev/null
touch "$stamp"
