#!/bin/bash
# The TLS fixtures of the tests (crates/lqsm-testkit/tls): a CA, and a certificate it
# signed for localhost and 127.0.0.1, both valid for 100 years. The CA's key is thrown
# away. Run again only to replace them.
set -euo pipefail
cd "$(dirname "$0")/../crates/lqsm-testkit/tls"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$work/ca.key" -out ca.pem -days 36500 -subj "/CN=LQSM test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout server.key -out "$work/server.csr" -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA ca.pem -CAkey "$work/ca.key" -CAcreateserial \
    -CAserial "$work/ca.srl" -out server.pem -days 36500 -extfile "$work/ext"
echo "wrote ca.pem, server.pem and server.key in $(pwd)"
