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

// Block volumes on three nodes in three zones, each node the storage host
// of a pool of its own: a WaitForFirstConsumer claim's volume is made in
// the zone of the node its pod was scheduled to; a class's
// allowedTopologies places its pods' volumes (and so the pods) in that
// zone; a pod of another zone that wants a volume is never scheduled.
func TestNodes_BlockVolumes_InThePodsZone_AllowedTopologiesHonoured(t *testing.T) {
	ns := namespace(t)
	class := "mn-only-zone-c"
	kubectl(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: `+class+`}
provisioner: block.csi.stowage.io
parameters: {type: gp3}
volumeBindingMode: WaitForFirstConsumer
allowedTopologies:
- matchLabelExpressions:
  - key: topology.block.csi.stowage.io/zone
    values: [zone-c]
`, "apply", "-f", "-")
	t.Cleanup(func() { kubectlErr("", "delete", "storageclass", class) })
	claim := func(name, class string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: %s
  resources: {requests: {storage: 1Gi}}
`, name, class)
	}
	pod := func(name, claim, nodeSelector string) string {
		sel := ""
		if nodeSelector != "" {
			sel = "  nodeSelector: {topology.kubernetes.io/zone: " + nodeSelector + "}\n"
		}
		return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
%s  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo %s > /data/f; sync; sleep 3600"]
    volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: %s}}]
`, name, sel, name, claim)
	}
	zoneOfPV := func(claim string) string {
		pv := kubectl(t, "", "-n", ns, "get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}")
		return kubectl(t, "", "get", "pv", pv, "-o", "jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[?(@.key==\"topology.block.csi.stowage.io/zone\")].values[*]}")
	}

	// WaitForFirstConsumer: the pod goes to zone-b, so does its volume.
	kubectl(t, claim("in-b", "stowage-gp3")+"---\n"+pod("writer-b", "in-b", "zone-b"), "-n", ns, "apply", "-f", "-")
	waitRunning(t, ns, "writer-b")
	if z := zoneOfPV("in-b"); z != "zone-b" {
		t.Errorf("claim in-b, consumed by a pod in zone-b, got a volume in %q", z)
	}
	if got := kubectl(t, "", "-n", ns, "exec", "writer-b", "--", "cat", "/data/f"); got != "writer-b" {
		t.Errorf("writer-b reads %q from its volume", got)
	}

	// allowedTopologies: a pod with no zone of its own lands in zone-c.
	kubectl(t, claim("in-c", class)+"---\n"+pod("anywhere", "in-c", ""), "-n", ns, "apply", "-f", "-")
	waitRunning(t, ns, "anywhere")
	if z := zoneOfPV("in-c"); z != "zone-c" {
		t.Errorf("a claim of a class allowed only zone-c got a volume in %q", z)
	}
	if node := kubectl(t, "", "-n", ns, "get", "pod", "anywhere", "-o", "jsonpath={.spec.nodeName}"); node != nodeOf(t, "zone-c") {
		t.Errorf("the pod of the zone-c class's claim runs on %s, not in zone-c (%s)", node, nodeOf(t, "zone-c"))
	}

	// The zone-b volume, wanted by a pod of zone-a: never scheduled.
	kubectl(t, "", "-n", ns, "delete", "pod", "writer-b", "--wait=true")
	kubectl(t, pod("elsewhere", "in-b", "zone-a"), "-n", ns, "apply", "-f", "-")
	waitFor(t, "the scheduler to refuse pod elsewhere (zone-a) for a zone-b volume", time.Minute, func() (bool, error) {
		out, err := kubectlErr("", "-n", ns, "get", "events", "--field-selector", "involvedObject.name=elsewhere,reason=FailedScheduling", "-o", "jsonpath={.items[*].message}")
		// "didn't match PersistentVolume's node affinity" (1.33), or
		// "volume node affinity conflict" (older schedulers).
		return strings.Contains(out, "PersistentVolume's node affinity") || strings.Contains(out, "volume node affinity conflict"), err
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
