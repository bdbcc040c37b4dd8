#!/usr/bin/env bash
# Test certificates for a secured local stack: a CA, a server certificate for 127.0.0.1/localhost
# and a client certificate (mutual TLS), all PEM, private keys PKCS#8 without a passphrase.
#
#   deploy/local/certs.sh DIR        writes DIR/ca.pem, server.pem, server.key, client.pem, client.key
#
# For tests and trials on one machine only: production certificates come from your own CA.
# Idempotent: keeps files that exist.
set -euo pipefail
dir=${1:?usage: certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -f ca.pem ] && [ -f server.pem ] && [ -f client.pem ] && exit 0
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -days 30 -subj "/CN=emostream test CA" -out ca.pem
for who in server client; do
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$who.key" 2>/dev/null
  openssl req -new -key "$who.key" -subj "/CN=emostream-$who" -out "$who.csr"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' \
    "$([ "$who" = server ] && echo serverAuth || echo clientAuth)" > "$who.ext"
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$who.ext" -out "$who.pem" 2>/dev/null
  rm -f "$who.csr" "$who.ext"
done
cat server.key server.pem > server-keystore.pem  # Kafka's PEM keystore: key, then certificate
chmod 600 ./*.key server-keystore.pem
echo "certs.sh: CA, server and client certificates in $dir" >&2
