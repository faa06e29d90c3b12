#!/usr/bin/env bash
# Time from `kubectl apply` of a StatefulSet to all its pods Running, with N
# Stowage volumes (one PVC per replica, class stowage-gp3) against the same
# StatefulSet with emptyDir volumes, in the same run on the same cluster: the
# ratio is the storage overhead. Pods start in parallel
# (podManagementPolicy: Parallel) so the number measures provisioning,
# attaching and mounting, not the StatefulSet controller's ordering.
#
#   bash bench/statefulset.sh [N ...]      (default: 1 10 50)
#
# Uses the cluster of `stowage up` if one runs, else brings one up and takes
# it down again. Prints a markdown table and writes it to bench/.out/.
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1 10 50)
data=/var/lib/stowage
export KUBECONFIG=$data/kubeconfig/admin.kubeconfig
kubectl=_output/bin/kubectl
ns=bench-sts
mkdir -p bench/.out

bash hack/setup.sh >/dev/null
go build -o bin/stowage ./cmd/stowage
started=false
if ! bin/stowage status >/dev/null 2>&1; then
  bash hack/build-components.sh >/dev/null
  bin/stowage up
  started=true
fi
cleanup() {
  $kubectl delete namespace $ns --wait=true --timeout=300s >/dev/null 2>&1 || true
  if $started; then bin/stowage down --wipe; fi
}
trap cleanup EXIT

manifest() { # name replicas storage(emptydir|stowage)
  local vol tmpl=""
  if [ "$3" = emptydir ]; then
    vol="      volumes: [{name: data, emptyDir: {}}]"
  else
    vol=""
    tmpl="  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], storageClassName: stowage-gp3, resources: {requests: {storage: 1Gi}}}"
  fi
  cat <<YAML
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: $1, namespace: $ns}
spec:
  serviceName: $1
  replicas: $2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", "date > /data/started; sleep 36000"]
        volumeMounts: [{name: data, mountPath: /data}]
$vol
$tmpl
YAML
}

# run prints the seconds from apply to all N pods Running, then removes
# the StatefulSet and its claims and waits until their volumes are gone.
run() { # name n kind
  local t0 t1 running
  t0=$(date +%s.%N)
  manifest "$1" "$2" "$3" | $kubectl apply -f - >/dev/null
  while :; do
    running=$($kubectl -n $ns get pods -l app="$1" --field-selector=status.phase=Running --no-headers 2>/dev/null | wc -l)
    [ "$running" -ge "$2" ] && break
    if [ "$(echo "$(date +%s.%N) - $t0 > 900" | bc)" = 1 ]; then echo "timeout: $1 has $running/$2 pods Running" >&2; exit 1; fi
    sleep 0.2
  done
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
  $kubectl -n $ns delete statefulset "$1" --wait=true >/dev/null
  $kubectl -n $ns wait --for=delete pod -l app="$1" --timeout=300s >/dev/null 2>&1 || true
  $kubectl -n $ns delete pvc -l app="$1" --wait=true >/dev/null 2>&1 || true
  $kubectl -n $ns delete pvc --all --wait=true >/dev/null 2>&1 || true
  while [ "$($kubectl get pv --no-headers 2>/dev/null | grep -c " $ns/" || true)" -gt 0 ]; do sleep 1; done
}

$kubectl create namespace $ns >/dev/null 2>&1 || true
until $kubectl -n $ns get serviceaccount default >/dev/null 2>&1; do sleep 0.5; done
out=bench/.out/statefulset-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "| replicas (N) | emptyDir: apply → all Running (s) | Stowage gp3 PVCs: apply → all Running (s) | ratio |"
  echo "|---|---|---|---|"
} | tee "$out"
for n in "${sizes[@]}"; do
  echo "== N=$n: emptyDir" >&2
  e=$(run "empty-$n" "$n" emptydir)
  echo "== N=$n: Stowage volumes" >&2
  s=$(run "vol-$n" "$n" stowage)
  printf "| %d | %.1f | %.1f | %.2f |\n" "$n" "$e" "$s" "$(echo "$s / $e" | bc -l)" | tee -a "$out"
done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u)" | tee -a "$out"
