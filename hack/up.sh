#!/usr/bin/env bash
# The main job: set this machine up, build stowage and the pinned Kubernetes
# components, start a local single-node Kubernetes with Stowage installed
# (`stowage up`), and run the EBS-style example (spec scenario 1) on it.
#
#   bash hack/up.sh              # then: export KUBECONFIG=/var/lib/stowage/kubeconfig/admin.kubeconfig
#   bin/stowage down [--wipe]    # stop everything (and delete the data)
set -euo pipefail
source "$(dirname "$0")/../hack/lib/root.sh"
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

bash hack/setup.sh
echo "== building Kubernetes, etcd and the CSI sidecars (cold: 20-25 min on 2 cores; warm: seconds)"
bash hack/build-components.sh
echo "== building bin/stowage"
go build -o bin/stowage ./cmd/stowage
bin/stowage up

export KUBECONFIG=/var/lib/stowage/kubeconfig/admin.kubeconfig
kubectl=_output/bin/kubectl
echo "== example: an encrypted gp3 claim and a Deployment writing to it (examples/1-ebs-class-and-claim)"
$kubectl apply -f examples/1-ebs-class-and-claim/storageclass.yaml -f examples/1-ebs-class-and-claim/app.yaml
$kubectl -n prod rollout status deploy/date-writer --timeout=180s
$kubectl -n prod get pvc,pods
sleep 6
echo "\$ kubectl -n prod exec deploy/date-writer -- cat /data/out.txt"
$kubectl -n prod exec deploy/date-writer -- cat /data/out.txt
cat <<MSG

The cluster runs. Use it with:
  export KUBECONFIG=$KUBECONFIG
  export PATH=\$PATH:$PWD/_output/bin
  kubectl get pvc -A; bin/stowage volume list    # the CLI finds the local cluster's API by itself
Remove the example: kubectl delete -f examples/1-ebs-class-and-claim/
Stop everything:    bin/stowage down    (--wipe also deletes the data)
MSG
