package multinode

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every node runs pods, and a pod reaches every other node's pods and a
// Service whose endpoints are on other nodes: the machine routes between
// the nodes' namespaces.
func TestNodes_PodsOnEveryNode_ReachEachOtherAndAService(t *testing.T) {
	ns := namespace(t)
	ips := map[string]string{}
	var pods []string
	for _, z := range zones {
		node := nodeOf(t, z)
		name := "web-" + z
		pods = append(pods, name)
		kubectl(t, podOn(name, node, "echo hello-from-"+node+" > /tmp/index.html; exec httpd -f -p 8080 -h /tmp", "", ""), "-n", ns, "apply", "-f", "-")
	}
	for _, p := range pods {
		waitRunning(t, ns, p)
		ips[p] = kubectl(t, "", "-n", ns, "get", "pod", p, "-o", "jsonpath={.status.podIP}")
	}
	// The Service selects web-zone-c's pod only: every other pod reaches
	// it through its own node's kube-proxy rules.
	kubectl(t, "", "-n", ns, "expose", "pod", "web-zone-c", "--port", "80", "--target-port", "8080", "--name", "web")
	svc := kubectl(t, "", "-n", ns, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	get := func(from, addr, port string) (string, error) {
		return kubectlErr("", "-n", ns, "exec", from, "--", "sh", "-c",
			fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %s | tail -1`, addr, port))
	}
	for _, from := range pods {
		for _, to := range pods {
			want := "hello-from-" + nodeOf(t, strings.TrimPrefix(to, "web-"))
			if got, err := get(from, ips[to], "8080"); err != nil || got != want {
				t.Errorf("%s → %s (%s): %q, %v; want %q", from, to, ips[to], got, err, want)
			}
		}
		want := "hello-from-" + nodeOf(t, "zone-c")
		waitFor(t, from+" → Service web", 30*time.Second, func() (bool, error) {
			got, err := get(from, svc, "80")
			return got == want, err
		})
	}
}

// Scenario 3 on two nodes of two zones: an RWX claim of the EFS-style
// class, one writer in zone-b and one in zone-c, each reading the other's
// lines; every file is owned by the access point's user.
func TestNodes_SharedFileSystem_TwoNodesTwoZones(t *testing.T) {
	ns := namespace(t)
	kubectl(t, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: stowage-efs
  resources: {requests: {storage: 1Gi}}
`, "-n", ns, "apply", "-f", "-")
	mounts := "    volumeMounts: [{name: d, mountPath: /data}]"
	volumes := "  volumes: [{name: d, persistentVolumeClaim: {claimName: shared}}]"
	writers := map[string]string{}
	for _, z := range []string{"zone-b", "zone-c"} {
		node := nodeOf(t, z)
		writers[z] = node
		kubectl(t, podOn("writer-"+z, node, "while true; do echo from-"+node+" >> /data/"+node+".txt; sleep 1; done", mounts, volumes), "-n", ns, "apply", "-f", "-")
	}
	for z := range writers {
		waitRunning(t, ns, "writer-"+z)
	}
	for _, pair := range [][2]string{{"zone-b", "zone-c"}, {"zone-c", "zone-b"}} {
		reader, other := "writer-"+pair[0], writers[pair[1]]
		waitFor(t, reader+" to read "+other+"'s lines", time.Minute, func() (bool, error) {
			out, err := kubectlErr("", "-n", ns, "exec", reader, "--", "tail", "-1", "/data/"+other+".txt")
			return out == "from-"+other, err
		})
	}
	owners := kubectl(t, "", "-n", ns, "exec", "writer-zone-b", "--", "sh", "-c", "stat -c %u:%g /data/*.txt | sort -u")
	if strings.Contains(owners, "\n") || strings.HasPrefix(owners, "0:") {
		t.Errorf("files owned by %q; want one owner, the access point's user", owners)
	}
}

// A block volume lives in its pool's zone (zone-a, the machine's node): a
// WaitForFirstConsumer claim's pod is placed there, and a pod of another
// zone that wants the same volume is never scheduled.
func TestNodes_BlockVolume_StaysInItsPoolsZone(t *testing.T) {
	ns := namespace(t)
	kubectl(t, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: stowage-gp3
  resources: {requests: {storage: 1Gi}}
`, "-n", ns, "apply", "-f", "-")
	kubectl(t, `apiVersion: v1
kind: Pod
metadata: {name: anywhere}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo data > /data/f; sync; sleep 3600"]
    volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
`, "-n", ns, "apply", "-f", "-")
	waitRunning(t, ns, "anywhere")
	if node := kubectl(t, "", "-n", ns, "get", "pod", "anywhere", "-o", "jsonpath={.spec.nodeName}"); node != nodeOf(t, "zone-a") {
		t.Errorf("the claim's pod runs on %s; the only pool is in zone-a (%s)", node, nodeOf(t, "zone-a"))
	}
	pv := kubectl(t, "", "-n", ns, "get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}")
	if aff := kubectl(t, "", "get", "pv", pv, "-o", "jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[*].values}"); !strings.Contains(aff, "zone-a") {
		t.Errorf("PV %s's node affinity %s does not name zone-a", pv, aff)
	}
	kubectl(t, "", "-n", ns, "delete", "pod", "anywhere", "--wait=true")
	kubectl(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: elsewhere}
spec:
  nodeSelector: {topology.kubernetes.io/zone: zone-b}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "sleep 3600"]
    volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: %s}}]
`, "data"), "-n", ns, "apply", "-f", "-")
	waitFor(t, "the scheduler to refuse pod elsewhere (zone-b) for a zone-a volume", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "get", "events", "--field-selector", "involvedObject.name=elsewhere,reason=FailedScheduling", "-o", "jsonpath={.items[*].message}")
		return strings.Contains(out, "volume node affinity conflict") || strings.Contains(out, "node affinity"), err
	})
	if phase := kubectl(t, "", "-n", ns, "get", "pod", "elsewhere", "-o", "jsonpath={.status.phase}"); phase != "Pending" {
		t.Errorf("pod elsewhere is %s, want Pending", phase)
	}
}

// The Secrets Store CSI driver of a worker node mounts a secret for a pod
// there, fetched as the pod's own service account.
func TestNodes_SecretsMount_OnAWorker(t *testing.T) {
	ns := namespace(t)
	name := "mn/" + ns + "/token"
	stowage(t, "", "secret", "delete", name, "--force-delete-without-recovery")
	stowage(t, "mn-value-6d1f", "secret", "create", name, "--secret-string-file", "-")
	policy := "mn-" + ns
	stowage(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"`+name+`"}]}`,
		"policy", "create", "--name", policy, "--document-file", "-")
	principal := "system:serviceaccount:" + ns + ":default"
	stowage(t, "", "policy", "attach", policy, "--principal", principal)
	t.Cleanup(func() {
		stowage(t, "", "policy", "detach", policy, "--principal", principal)
		stowage(t, "", "policy", "delete", policy)
		stowage(t, "", "secret", "delete", name, "--force-delete-without-recovery")
	})
	kubectl(t, `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: token}
spec:
  provider: stowage
  parameters:
    objects: |
      - objectName: "`+name+`"
        objectType: secretsmanager
        objectAlias: token
`, "-n", ns, "apply", "-f", "-")
	node := nodeOf(t, "zone-c")
	kubectl(t, podOn("reader", node, "sleep 3600", "    volumeMounts: [{name: s, mountPath: /mnt/secrets-store, readOnly: true}]",
		"  volumes: [{name: s, csi: {driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: {secretProviderClass: token}}}]"), "-n", ns, "apply", "-f", "-")
	waitRunning(t, ns, "reader")
	if got := kubectl(t, "", "-n", ns, "exec", "reader", "--", "cat", "/mnt/secrets-store/token"); got != "mn-value-6d1f" {
		t.Errorf("the secret mounted on %s reads %q", node, got)
	}
}
