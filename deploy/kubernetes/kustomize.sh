#!/usr/bin/env bash
# Runs Kustomize (sigs.k8s.io/kustomize/kustomize/v5, pinned below), building it once into
# .tools/bin from the Go module proxy. Idempotent: `deploy/kubernetes/kustomize.sh build
# deploy/kubernetes/overlays/cpu` renders the CPU deployment; `... fetch` only builds the tool.
# Needs Go >= 1.26; where the machine has none (or an older one), a Go toolchain is taken from the
# Go module proxy too (golang.org/toolchain), so nothing but the proxy has to be reachable.
set -euo pipefail
KUSTOMIZE_VERSION=v5.8.2  # its go.mod asks for Go 1.26 (v5.8.3 for 1.27)
GO_MIN_MINOR=26
GO_TOOLCHAIN=go1.26.8
root=$(cd "$(dirname "$0")/../.." && pwd)
tools="$root/.tools"
bin="$tools/bin/kustomize-$KUSTOMIZE_VERSION"
proxy=${GOPROXY:-https://proxy.golang.org}
proxy=${proxy%%,*}
case "$proxy" in http*) ;; *) proxy=https://proxy.golang.org ;; esac  # GOPROXY=direct/off: the public proxy
os=$(uname -s | tr '[:upper:]' '[:lower:]')
arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac

go_ok() {  # a go command of at least 1.$GO_MIN_MINOR
  command -v "$1" >/dev/null 2>&1 || return 1
  local v; v=$("$1" env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/') || return 1
  set -- $v
  [ "${1:-0}" -gt 1 ] || [ "${2:-0}" -ge "$GO_MIN_MINOR" ]
}

if [ ! -x "$bin" ]; then
  go=go
  if ! go_ok go; then
    go="$tools/go/bin/go"
    if ! go_ok "$go"; then
      echo "kustomize.sh: no Go >= 1.$GO_MIN_MINOR here; taking $GO_TOOLCHAIN from $proxy" >&2
      mkdir -p "$tools" && rm -rf "$tools/go" "$tools/toolchain"
      curl -fsSL "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.$os-$arch.zip" -o "$tools/toolchain.zip"
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$tools/toolchain.zip" "$tools/toolchain"
      mv "$tools/toolchain/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.$os-$arch" "$tools/go"
      chmod -R u+x "$tools/go/bin" "$tools/go/pkg/tool"
      rm -rf "$tools/toolchain" "$tools/toolchain.zip"
    fi
  fi
  echo "kustomize.sh: building kustomize $KUSTOMIZE_VERSION into $tools/bin (once, about a minute)" >&2
  mkdir -p "$tools/bin"
  GOBIN="$tools/bin.tmp" GOTOOLCHAIN=local \
    "$go" install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  mv "$tools/bin.tmp/kustomize" "$bin" && rmdir "$tools/bin.tmp"
fi
[ "${1:-}" = fetch ] && exit 0
exec "$bin" "$@"
