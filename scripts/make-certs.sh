#!/usr/bin/env bash
# Makes a throwaway CA and one certificate signed by it, for the demo and tests:
#
#   scripts/make-certs.sh DIR [extra SAN entries, e.g. DNS:myhost IP:10.0.0.5]
#
# DIR/ca.pem      the CA certificate (security.ssl.ca)
# DIR/node.pem    a certificate for localhost, 127.0.0.1 and ::1 (plus the extra names),
#                 usable by servers and clients alike (security.ssl.cert)
# DIR/node.key    its private key, mode 0600 (security.ssl.key)
# The CA's key is deleted: nothing else can ever be signed by this CA. Valid for 30 days.
# Needs openssl (Debian's openssl package).
set -euo pipefail
dir=${1:?usage: scripts/make-certs.sh DIR [SAN …]}
shift
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in "$@"; do san="$san,$extra"; done
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/ca.key" -out "$dir/ca.pem" -days 30 -subj "/CN=Weir throwaway CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/node.key" -out "$work/node.csr" -subj "/CN=weir node" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n' \
  "$san" > "$work/ext.cnf"
openssl x509 -req -in "$work/node.csr" -CA "$dir/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -out "$dir/node.pem" -days 30 \
  -extfile "$work/ext.cnf" 2>/dev/null
chmod 644 "$dir/ca.pem" "$dir/node.pem"
echo "$dir: ca.pem, node.pem, node.key ($san)"
