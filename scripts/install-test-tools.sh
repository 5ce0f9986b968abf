#!/usr/bin/env bash
# Installs what the observability tests drive, from Debian's packages (nothing is downloaded
# from anywhere else):
# - chromium and chromium-driver: the web UI test runs a headless Chromium over WebDriver;
# - prometheus, for promtool: the metrics test checks both endpoints' exposition format;
# - openssl, for scripts/make-certs.sh (the TLS test's throwaway CAs).
# The prometheus package also ships the server; nothing here starts it.
set -euo pipefail

need=()
for pkg in chromium chromium-driver prometheus openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "install-test-tools: installing ${need[*]} (about 2 minutes the first time)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for tool in /usr/bin/chromium /usr/bin/chromedriver /usr/bin/promtool /usr/bin/openssl; do
  [ -x "$tool" ] || { echo "install-test-tools: $tool is missing after the install" >&2; exit 1; }
done
