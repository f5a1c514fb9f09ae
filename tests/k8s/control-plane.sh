#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the executor tests: etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler, no kubelet.
#
#   control-plane.sh build   # once: Debian's kubernetes source (v1.20) built with golang-1.19, cached
#   control-plane.sh start   # starts it under $PARQUANT_K8S_RUN, writes a kubeconfig, registers a node
#   control-plane.sh stop
#
# The build is cached outside the repo ($PARQUANT_K8S_CACHE, default /var/cache/parquant-k8s), so CI
# pays the ~10 minutes once per machine. Needs root (apt-get) the first time.
set -euo pipefail

CACHE=${PARQUANT_K8S_CACHE:-/var/cache/parquant-k8s}
RUN=${PARQUANT_K8S_RUN:-/tmp/parquant-k8s}
PORT=${PARQUANT_K8S_PORT:-16443}
ETCD_PORT=${PARQUANT_K8S_ETCD_PORT:-12379}
BIN=$CACHE/bin
GO=/usr/lib/go-1.19/bin

# shellcheck source=../../deploy/apt.sh
source "$(cd "$(dirname "$0")/../.." && pwd)/deploy/apt.sh"

build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kube-scheduler" ]; then
    echo "control plane: cached in $BIN"; return 0
  fi
  apt_install etcd-server golang-1.19-go dpkg-dev golang-github-modern-go-reflect2-dev openssl rsync
  if [ ! -f /etc/apt/sources.list.d/parquant-debian-src.sources ] && ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      > /etc/apt/sources.list.d/parquant-debian-src.sources
    apt-get update -qq
  fi
  mkdir -p "$CACHE" && cd "$CACHE"
  ls kubernetes_*.dsc >/dev/null 2>&1 || apt-get source --download-only kubernetes
  if [ ! -f src/.parquant-prepared ]; then
    rm -rf src && dpkg-source -x kubernetes_*.dsc src >/dev/null
    # reflect2 1.0.1 (vendored) crashes at run time when built with Go >= 1.18; Debian's 1.0.2 does not.
    rm -f src/vendor/github.com/modern-go/reflect2/*
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
       src/vendor/github.com/modern-go/reflect2/
    touch src/.parquant-prepared
  fi
  cd src
  # hack/lib/golang.sh builds in GOPATH mode itself; GOFLAGS=-mod=vendor would make it fail silently.
  export PATH=$GO:$PATH GOCACHE=$CACHE/gocache
  export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian
  make generated_files
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
  mkdir -p "$BIN"
  cp _output/bin/kube-apiserver _output/bin/kube-controller-manager _output/bin/kube-scheduler "$BIN/"
  echo "control plane: built into $BIN"
}

start() {
  build >/dev/null
  command -v etcd >/dev/null || apt_install etcd-server
  if [ -f "$RUN/admin.kubeconfig" ] && curl -sfk "https://127.0.0.1:$PORT/readyz" -H "Authorization: Bearer $(cat "$RUN/token")" >/dev/null 2>&1; then
    echo "control plane: already running ($RUN/admin.kubeconfig)"; return 0
  fi
  stop >/dev/null 2>&1 || true
  rm -rf "$RUN" && mkdir -p "$RUN/pki" "$RUN/logs"
  local pki=$RUN/pki
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=parquant-test-ca -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' > "$pki/san.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/token"
  echo "$(cat "$RUN/token"),admin,admin,system:masters" > "$RUN/tokens.csv"
  cat > "$RUN/admin.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$pki/ca.crt"}}]
users: [{name: admin, user: {token: "$(cat "$RUN/token")"}}]
contexts: [{name: local, context: {cluster: local, user: admin, namespace: default}}]
current-context: local
KUBECONFIG

  etcd --name parquant-test --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "parquant-test=http://127.0.0.1:$((ETCD_PORT + 1))" \
    > "$RUN/logs/etcd.log" 2>&1 & echo $! > "$RUN/etcd.pid"

  "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$PORT" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
    --token-auth-file "$RUN/tokens.csv" --authorization-mode RBAC \
    --service-cluster-ip-range 10.96.0.0/24 --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" --service-account-issuer https://kubernetes.default.svc \
    --feature-gates TTLAfterFinished=true --allow-privileged=false \
    > "$RUN/logs/kube-apiserver.log" 2>&1 & echo $! > "$RUN/kube-apiserver.pid"

  local ready=""
  for _ in $(seq 1 120); do
    if curl -sfk "https://127.0.0.1:$PORT/readyz" -H "Authorization: Bearer $(cat "$RUN/token")" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.5
  done
  [ -n "$ready" ] || { tail -20 "$RUN/logs/kube-apiserver.log"; echo "control plane: kube-apiserver did not become ready"; exit 1; }

  # No kubelet runs, so no node heartbeats: the node lifecycle controller would mark the fake node
  # unreachable and taint it. It is switched off; everything else runs as in a real cluster.
  "$BIN/kube-controller-manager" --kubeconfig "$RUN/admin.kubeconfig" --leader-elect=false \
    --port 0 --secure-port 0 --controllers '*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service,-route' \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --feature-gates TTLAfterFinished=true \
    > "$RUN/logs/kube-controller-manager.log" 2>&1 & echo $! > "$RUN/kube-controller-manager.pid"
  "$BIN/kube-scheduler" --kubeconfig "$RUN/admin.kubeconfig" --leader-elect=false --port 0 --secure-port 0 \
    > "$RUN/logs/kube-scheduler.log" 2>&1 & echo $! > "$RUN/kube-scheduler.pid"
  sleep 2
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || { tail -5 "$RUN/logs/$name.log"; echo "control plane: $name exited"; exit 1; }
  done
  echo "control plane: running on https://127.0.0.1:$PORT, kubeconfig $RUN/admin.kubeconfig"
}

stop() {
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$RUN/$name.pid" ] && kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
  done
  sleep 1
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$RUN/$name.pid" ] && kill -9 "$(cat "$RUN/$name.pid")" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
  done
  echo "control plane: stopped"
}

"${1:-build}"
