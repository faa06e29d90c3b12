// Package chart tests the Helm chart in deploy/helm/stowage without a
// cluster: helm lint and helm template with several value sets, every
// rendered document decoded strictly into its client-go type, the
// invariants a CSI driver install needs, the values schema, and that
// deploy/manifests/stowage.yaml is a fresh render.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func helmBin(t *testing.T) string {
	t.Helper()
	h := filepath.Join(repoRoot(t), "_output", "bin", "helm")
	if _, err := os.Stat(h); err != nil {
		t.Skipf("no helm at %s (build it: hack/build-components.sh helm): %v", h, err)
	}
	return h
}

func chartDir(t *testing.T) string { return filepath.Join(repoRoot(t), "deploy", "helm", "stowage") }

// helm runs helm with args; it returns stdout, and stderr in the error.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), nil
}

func render(t *testing.T, set ...string) string {
	t.Helper()
	// With the CRDs of crds/, as the plain manifests have them.
	args := []string{"template", "stowage", chartDir(t), "--namespace", "stowage", "--include-crds"}
	out, err := helm(t, append(args, setFlags(set)...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setFlags makes --set flags; a StorageClass parameter (.parameters.) is
// a string in the StorageClass, so it goes as --set-string.
func setFlags(set []string) []string {
	var args []string
	for _, s := range set {
		if strings.Contains(s, ".parameters.") {
			args = append(args, "--set-string", s)
		} else {
			args = append(args, "--set", s)
		}
	}
	return args
}

var valueSets = map[string][]string{
	"defaults":                 nil,
	"external server":          {"server.external.address=stowage.example.com:7420"},
	"snapshot controller off":  {"snapshotController.enabled=false"},
	"secrets store and agents": {"secretsStoreDriver.enabled=true", "agents.enabled=true"},
	"node runner off":          {"node.runner.enabled=false"},
	"zone from node labels":    {"nodeZoneLabel=topology.kubernetes.io/zone", "agents.enabled=true"},
	"api TLS":                  {"apiTLS.enabled=true", "apiTLS.serverSecret=stowage-api-tls", "agents.enabled=true"},
	"agents with file trees":   {"agents.enabled=true", "agents.fileTree.enabled=true", "agents.fileTree.nfsPort=12059"},
	"hostPath server, file class": {"server.inCluster.storage.type=hostPath", `server.inCluster.filePools[0]=name=files-a\,zone=zone-a\,size=10G`,
		"fileStorageClasses[0].name=stowage-efs", "fileStorageClasses[0].parameters.provisioningMode=efs-ap",
		"fileStorageClasses[0].parameters.fileSystemId=fs-1234", "fileStorageClasses[0].parameters.directoryPerms=700"},
}

func TestLint(t *testing.T) {
	if out, err := helm(t, "lint", "--strict", chartDir(t)); err != nil {
		t.Fatalf("helm lint failed: %v\n%s", err, out)
	}
}

// objects is a render decoded strictly: unknown or duplicate fields fail.
type objects struct {
	all []k8sruntime.Object
}

func decodeStrict(t *testing.T, manifest string) objects {
	t.Helper()
	sch := k8sruntime.NewScheme()
	for _, add := range []func(*k8sruntime.Scheme) error{scheme.AddToScheme, apiextv1.AddToScheme, snapv1.AddToScheme} {
		if err := add(sch); err != nil {
			t.Fatal(err)
		}
	}
	dec := serializer.NewCodecFactory(sch, serializer.EnableStrict).UniversalDeserializer()
	r := utilyaml.NewYAMLReader(bufioReader(manifest))
	var o objects
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, ioEOF) {
			break
		}
		if err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		// helm writes a separator before a file of crds/ that starts
		// with one: a document of only "---" and a comment.
		if len(bytes.TrimSpace(bytes.TrimPrefix(bytes.TrimSpace(stripComments(doc)), []byte("---")))) == 0 {
			continue
		}
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("document %d does not decode strictly (fix the template that made it): %v\n%s", i, err, doc)
		}
		if gvk.Kind == "" {
			t.Fatalf("document %d has no kind", i)
		}
		o.all = append(o.all, obj)
	}
	if len(o.all) == 0 {
		t.Fatal("the render has no documents")
	}
	return o
}

func TestTemplate_DecodesStrictlyAndKeepsInvariants(t *testing.T) {
	for name, set := range valueSets {
		t.Run(name, func(t *testing.T) {
			o := decodeStrict(t, render(t, set...))
			checkInvariants(t, o, set)
		})
	}
}

func checkInvariants(t *testing.T, o objects, set []string) {
	t.Helper()
	sas := map[string]bool{}
	clusterRoles := map[string]bool{}
	roles := map[string]bool{}
	drivers := map[string]bool{}
	kinds := map[string]int{}
	type podSpec struct {
		name string
		spec corev1.PodSpec
	}
	var podSpecs []podSpec
	var nodePlugin, nodeRunner, agents *appsv1.DaemonSet
	var server *appsv1.StatefulSet
	for _, obj := range o.all {
		switch v := obj.(type) {
		case *corev1.ServiceAccount:
			sas[v.Namespace+"/"+v.Name] = true
		case *rbacv1.ClusterRole:
			clusterRoles[v.Name] = true
			checkRules(t, "ClusterRole "+v.Name, v.Rules)
			if v.Name == "stowage-node-reader" {
				if len(v.Rules) != 1 || strings.Join(v.Rules[0].Resources, ",") != "nodes" || strings.Join(v.Rules[0].Verbs, ",") != "get" {
					t.Errorf("ClusterRole stowage-node-reader: rules %v, want get on nodes and nothing else", v.Rules)
				}
			}
		case *rbacv1.Role:
			roles[v.Namespace+"/"+v.Name] = true
			checkRules(t, "Role "+v.Name, v.Rules)
		case *storagev1.CSIDriver:
			drivers[v.Name] = true
		case *appsv1.Deployment:
			kinds["Deployment"]++
			podSpecs = append(podSpecs, podSpec{"Deployment " + v.Name, v.Spec.Template.Spec})
		case *appsv1.DaemonSet:
			kinds["DaemonSet"]++
			podSpecs = append(podSpecs, podSpec{"DaemonSet " + v.Name, v.Spec.Template.Spec})
			switch v.Name {
			case "stowage-csi-node":
				checkNodePlugin(t, v)
				checkNodeZone(t, v, setValue(set, "nodeZoneLabel="))
				nodePlugin = v
			case "stowage-node-runner":
				nodeRunner = v
			case "stowage-agent":
				agents = v
			}
		case *appsv1.StatefulSet:
			kinds["StatefulSet"]++
			server = v
			checkServerNFS(t, v, hasSet(set, "server.inCluster.filePools"))
			podSpecs = append(podSpecs, podSpec{"StatefulSet " + v.Name, v.Spec.Template.Spec})
		case *storagev1.StorageClass:
			if v.Provisioner != "block.csi.stowage.io" && v.Provisioner != "file.csi.stowage.io" {
				t.Errorf("StorageClass %s: provisioner %q is not one of Stowage's drivers", v.Name, v.Provisioner)
			}
		case *snapv1.VolumeSnapshotClass:
			if v.Driver != "block.csi.stowage.io" {
				t.Errorf("VolumeSnapshotClass %s: driver %q, want block.csi.stowage.io", v.Name, v.Driver)
			}
		}
	}
	for _, want := range []string{"block.csi.stowage.io", "file.csi.stowage.io"} {
		if !drivers[want] {
			t.Errorf("no CSIDriver %s (have %v)", want, drivers)
		}
	}
	for d := range drivers {
		if d != "block.csi.stowage.io" && d != "file.csi.stowage.io" && d != "secrets-store.csi.k8s.io" {
			t.Errorf("CSIDriver %s is not a driver the chart runs", d)
		}
	}
	for _, p := range podSpecs {
		checkAPITLS(t, p.name, p.spec, hasSet(set, "apiTLS.enabled=true"))
		checkReadiness(t, p.name, p.spec)
		checkMetricsPorts(t, p.name, p.spec)
		sa := "stowage/" + p.spec.ServiceAccountName
		if p.spec.ServiceAccountName == "" || !sas[sa] {
			t.Errorf("%s runs as service account %q, which the render does not create", p.name, p.spec.ServiceAccountName)
		}
	}
	for _, obj := range o.all {
		switch v := obj.(type) {
		case *rbacv1.ClusterRoleBinding:
			if v.RoleRef.Kind != "ClusterRole" || (!clusterRoles[v.RoleRef.Name] && !strings.HasPrefix(v.RoleRef.Name, "system:")) {
				t.Errorf("ClusterRoleBinding %s names %s %s, which the render does not create", v.Name, v.RoleRef.Kind, v.RoleRef.Name)
			}
			checkSubjects(t, "ClusterRoleBinding "+v.Name, v.Subjects, sas)
		case *rbacv1.RoleBinding:
			if v.RoleRef.Kind != "Role" || !roles[v.Namespace+"/"+v.RoleRef.Name] {
				t.Errorf("RoleBinding %s names %s %s, which the render does not create", v.Name, v.RoleRef.Kind, v.RoleRef.Name)
			}
			checkSubjects(t, "RoleBinding "+v.Name, v.Subjects, sas)
		}
	}
	if want := setValue(set, "nodeZoneLabel=") != ""; clusterRoles["stowage-node-reader"] != want {
		t.Errorf("ClusterRole stowage-node-reader rendered: %v, want %v (only to read the node's zone label)", clusterRoles["stowage-node-reader"], want)
	}
	checkNodeRunner(t, nodePlugin, nodeRunner, !hasSet(set, "node.runner.enabled=false"))
	checkAgents(t, agents, server, hasSet(set, "agents.enabled=true"), setValue(set, "nodeZoneLabel="), setValue(set, "agents.fileTree.nfsPort="))
	external := hasSet(set, "server.external.address=")
	if got := kinds["StatefulSet"]; external && got != 0 || !external && got != 1 {
		t.Errorf("%d StatefulSets (the in-cluster server) with external server %v", got, external)
	}
	snapOff := hasSet(set, "snapshotController.enabled=false")
	wantDeploy := 2
	if snapOff {
		wantDeploy = 1
	}
	if kinds["Deployment"] != wantDeploy {
		t.Errorf("%d Deployments, want %d (controller, and the snapshot controller unless it is off)", kinds["Deployment"], wantDeploy)
	}
}

// checkServerNFS: the in-cluster server serves its file pools' access
// points over NFS (nfs-ganesha from the stowage image) exactly when it has
// file pools, on the port it declares.
func checkServerNFS(t *testing.T, ss *appsv1.StatefulSet, filePools bool) {
	t.Helper()
	for _, c := range ss.Spec.Template.Spec.Containers {
		if len(c.Args) == 0 || c.Args[0] != "server" {
			continue
		}
		listen := ""
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--nfs-listen="); ok {
				listen = v
			}
		}
		declared := false
		for _, p := range c.Ports {
			declared = declared || (p.Name == "nfs" && strings.HasSuffix(listen, fmt.Sprintf(":%d", p.ContainerPort)))
		}
		switch {
		case filePools && (listen == "" || !declared):
			t.Errorf("server with file pools: --nfs-listen %q, declared nfs port %v; want both", listen, declared)
		case !filePools && listen != "":
			t.Errorf("server without file pools serves NFS at %s", listen)
		}
		return
	}
	t.Errorf("StatefulSet %s has no server container", ss.Name)
}

// checkReadiness: every Stowage container that calls the Stowage API (a
// CSI driver or the secrets provider) serves --health-address and is
// probed there by `stowage readyz` (an exec probe, whose output names the
// endpoint in the pod's event), so a driver that cannot reach its server
// stays not-Ready.
func checkReadiness(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	for _, c := range spec.Containers {
		if len(c.Args) == 0 || (c.Args[0] != "csi" && c.Args[0] != "secrets-provider") {
			continue
		}
		port := ""
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--health-address="); ok {
				port = v[strings.LastIndex(v, ":")+1:]
			}
		}
		switch {
		case port == "":
			t.Errorf("%s container %s calls the Stowage API but has no --health-address", what, c.Name)
		case c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil ||
			!slices.Equal(c.ReadinessProbe.Exec.Command, []string{"/usr/bin/stowage", "readyz", "--address=127.0.0.1:" + port}):
			t.Errorf("%s container %s: readinessProbe %+v, want exec stowage readyz on port %s (its --health-address)", what, c.Name, c.ReadinessProbe, port)
		}
	}
}

// checkMetricsPorts: a container serving --metrics-address declares that
// port, named "metrics", for a scraper to find.
func checkMetricsPorts(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	for _, c := range spec.Containers {
		for _, a := range c.Args {
			v, ok := strings.CutPrefix(a, "--metrics-address=")
			if !ok {
				continue
			}
			port := v[strings.LastIndex(v, ":")+1:]
			found := false
			for _, p := range c.Ports {
				found = found || (p.Name == "metrics" && fmt.Sprint(p.ContainerPort) == port)
			}
			if !found {
				t.Errorf("%s container %s serves metrics on %s but declares no port named metrics with it", what, c.Name, v)
			}
		}
	}
}

func hasSet(set []string, prefix string) bool {
	for _, s := range set {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// checkAPITLS: with apiTLS every client of the Stowage API (--api, or
// an agent's --server) trusts the CA in the tokens Secret it mounts, and
// the in-cluster server serves its certificate; without it none does.
func checkAPITLS(t *testing.T, what string, spec corev1.PodSpec, enabled bool) {
	t.Helper()
	for _, c := range spec.Containers {
		args := strings.Join(c.Args, " ")
		client := strings.Contains(args, "--api=") || strings.Contains(args, "--server=")
		ca := slices.Contains(c.Args, "--ca-file=/etc/stowage/tokens/ca.crt")
		tokens := false
		for _, m := range c.VolumeMounts {
			tokens = tokens || m.MountPath == "/etc/stowage/tokens"
		}
		if client && ca != enabled || !client && ca {
			t.Errorf("%s container %s: --ca-file %v with apiTLS.enabled=%v (a Stowage API client: %v)", what, c.Name, ca, enabled, client)
		}
		if ca && !tokens {
			t.Errorf("%s container %s: --ca-file in the tokens Secret, which it does not mount", what, c.Name)
		}
		if len(c.Args) > 0 && c.Args[0] == "server" && strings.Contains(args, "--tls-cert-file=") != enabled {
			t.Errorf("%s: the in-cluster server's --tls-cert-file with apiTLS.enabled=%v: args %s", what, enabled, args)
		}
	}
}

// setValue is the value of the first of set with prefix ("key="), "" when
// there is none.
func setValue(set []string, prefix string) string {
	for _, s := range set {
		if v, ok := strings.CutPrefix(s, prefix); ok {
			return v
		}
	}
	return ""
}

// checkNodeZone: with nodeZoneLabel the node plugins read their zone from
// the node's label, with a projected token of mode 0400; without it they
// are given the release's zone and have no token.
func checkNodeZone(t *testing.T, ds *appsv1.DaemonSet, label string) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	var projected *corev1.ProjectedVolumeSource
	for _, v := range spec.Volumes {
		if v.Name == "kube-api-access" {
			projected = v.Projected
		}
	}
	if label == "" {
		if projected != nil {
			t.Error("node DaemonSet mounts a service-account token without nodeZoneLabel")
		}
	} else if projected == nil || projected.DefaultMode == nil || *projected.DefaultMode != 0o400 {
		t.Errorf("node DaemonSet with nodeZoneLabel: token volume %+v, want a projected one of mode 0400", projected)
	}
	for _, c := range spec.Containers {
		args := strings.Join(c.Args, " ")
		if label == "" {
			if !strings.Contains(args, "--zone=zone-a") || strings.Contains(args, "--zone-label") {
				t.Errorf("node container %s without nodeZoneLabel: args %s, want --zone=zone-a", c.Name, args)
			}
			continue
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || m.Name == "kube-api-access" && strings.Contains(args, "--kube-token-dir="+m.MountPath)
		}
		if !strings.Contains(args, "--zone-label="+label) || strings.Contains(args, "--zone=") || !mounted {
			t.Errorf("node container %s with nodeZoneLabel %s: args %s (token mounted at --kube-token-dir: %v), want --zone-label and no --zone", c.Name, label, args, mounted)
		}
	}
}

func checkRules(t *testing.T, what string, rules []rbacv1.PolicyRule) {
	t.Helper()
	for _, r := range rules {
		for _, l := range [][]string{r.Verbs, r.Resources, r.APIGroups} {
			for _, x := range l {
				if x == "*" {
					t.Errorf("%s: rule %v has a wildcard; name the verbs and resources the component needs", what, r)
				}
			}
		}
	}
}

func checkSubjects(t *testing.T, what string, subjects []rbacv1.Subject, sas map[string]bool) {
	t.Helper()
	for _, s := range subjects {
		if s.Kind == "ServiceAccount" && !sas[s.Namespace+"/"+s.Name] {
			t.Errorf("%s binds service account %s/%s, which the render does not create", what, s.Namespace, s.Name)
		}
	}
}

func checkNodePlugin(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	kubeletDir := ""
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "kubelet-dir" && v.HostPath != nil {
			kubeletDir = v.HostPath.Path
		}
	}
	if kubeletDir != "/var/lib/kubelet" {
		t.Errorf("node DaemonSet: kubelet-dir hostPath %q, want /var/lib/kubelet", kubeletDir)
	}
	if len(ds.Spec.Template.Spec.Containers) == 0 {
		t.Fatal("node DaemonSet has no containers")
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
			t.Errorf("node DaemonSet container %s is not privileged; it attaches devices and mounts", c.Name)
		}
		bidi := false
		for _, m := range c.VolumeMounts {
			if m.Name == "kubelet-dir" && m.MountPath == kubeletDir && m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
				bidi = true
			}
		}
		if !bidi {
			t.Errorf("node DaemonSet container %s does not mount %s with Bidirectional propagation; its mounts would not reach the kubelet", c.Name, kubeletDir)
		}
		reg := false
		for _, a := range c.Args {
			if a == "--kubelet-registration-dir="+kubeletDir+"/plugins_registry" {
				reg = true
			}
		}
		if !reg {
			t.Errorf("node DaemonSet container %s does not register with the kubelet (--kubelet-registration-dir=%s/plugins_registry); args %v", c.Name, kubeletDir, c.Args)
		}
	}
}

// checkAgents: the chart's agents register their pools with the server
// (--server, with the token of their own principal from the tokens
// Secret), and the in-cluster server takes registrations with the agents'
// token (--agent-token-file from the Secret the agents read theirs from).
func checkAgents(t *testing.T, agents *appsv1.DaemonSet, server *appsv1.StatefulSet, enabled bool, zoneLabel, nfsPort string) {
	t.Helper()
	if !enabled {
		if agents != nil {
			t.Error("agents.enabled=false renders the agents")
		}
		return
	}
	if agents == nil {
		t.Fatal("agents.enabled=true renders no DaemonSet stowage-agent")
	}
	args := strings.Join(agents.Spec.Template.Spec.Containers[0].Args, " ")
	for _, w := range []string{"--server=", "--server-token-file=/etc/stowage/tokens/storage-host-$(NODE_NAME)", "--token-file=/etc/stowage/agent/token", "--pool=name=pool-$(NODE_NAME),"} {
		if !strings.Contains(args, w) {
			t.Errorf("agent args %q lack %q", args, w)
		}
	}
	mounts := map[string]string{}
	for _, m := range agents.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	if mounts["/etc/stowage/tokens"] == "" || mounts["/etc/stowage/agent"] == "" {
		t.Errorf("agent mounts %v: want the tokens Secret at /etc/stowage/tokens and the agent token at /etc/stowage/agent", mounts)
	}
	// With nodeZoneLabel (and no agents.zone) the pool's zone is the
	// node's, read with a token of its own; else the pool names it.
	if zoneLabel != "" {
		if !strings.Contains(args, "--zone-label="+zoneLabel) || strings.Contains(args, ",zone=") || mounts["/var/run/secrets/stowage/kube"] != "kube-api-access" {
			t.Errorf("agents with nodeZoneLabel: args %q, mounts %v: want --zone-label, no zone in --pool, the token at /var/run/secrets/stowage/kube", args, mounts)
		}
	} else if !strings.Contains(args, ",zone=") || strings.Contains(args, "--zone-label") {
		t.Errorf("agents without nodeZoneLabel: args %q, want a zone in --pool", args)
	}
	// With agents.fileTree each agent owns a file tree served by its own
	// nfs-ganesha on the node's address; without, neither.
	if nfsPort != "" {
		if !strings.Contains(args, "--file-pool=size=500G") || !strings.Contains(args, "--nfs-listen=$(HOST_IP):"+nfsPort) {
			t.Errorf("agents with fileTree: args %q, want --file-pool=size=500G and --nfs-listen=$(HOST_IP):%s", args, nfsPort)
		}
	} else if strings.Contains(args, "--file-pool") || strings.Contains(args, "--nfs-listen") {
		t.Errorf("agents without fileTree: args %q, want no file tree", args)
	}
	if server == nil {
		return
	}
	for _, c := range server.Spec.Template.Spec.Containers {
		if len(c.Args) > 0 && c.Args[0] == "server" && !slices.Contains(c.Args, "--agent-token-file=/etc/stowage/agent/token") {
			t.Errorf("in-cluster server with agents: args %v lack --agent-token-file=/etc/stowage/agent/token", c.Args)
		}
	}
}

// checkNodeRunner: with the node runner on, both node plugins start their
// FUSE clients through it (--node-runner names the socket it listens on,
// in the state directory all three mount from one host path), share its
// pid namespace (the host's: they check and stop the clients by pid), and
// the runner is updated only on delete (its clients stop with it) and
// mounts the kubelet directory with Bidirectional propagation (the
// clients' mounts must reach the kubelet). Off: no runner, no flag.
func checkNodeRunner(t *testing.T, plugin, r *appsv1.DaemonSet, enabled bool) {
	t.Helper()
	if plugin == nil {
		t.Fatal("no node plugin DaemonSet stowage-csi-node")
	}
	flagOf := func(c corev1.Container, name string) string {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v
			}
		}
		return ""
	}
	if !enabled {
		if r != nil {
			t.Error("node.runner.enabled=false renders the node runner")
		}
		for _, c := range plugin.Spec.Template.Spec.Containers {
			if v := flagOf(c, "node-runner"); v != "" {
				t.Errorf("node.runner.enabled=false: node plugin container %s still has --node-runner=%s", c.Name, v)
			}
		}
		return
	}
	if r == nil {
		t.Fatal("no node runner DaemonSet stowage-node-runner")
	}
	rs := r.Spec.Template.Spec
	if r.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
		t.Errorf("node runner update strategy %q, want OnDelete (an update would stop every FUSE client of the node)", r.Spec.UpdateStrategy.Type)
	}
	if !rs.HostPID || !plugin.Spec.Template.Spec.HostPID {
		t.Errorf("hostPID: node runner %v, node plugins %v; want both (the plugins check and stop the runner's clients by pid)", rs.HostPID, plugin.Spec.Template.Spec.HostPID)
	}
	stateHost := func(spec corev1.PodSpec) string {
		for _, v := range spec.Volumes {
			if v.Name == "state" && v.HostPath != nil {
				return v.HostPath.Path
			}
		}
		return ""
	}
	if a, b := stateHost(rs), stateHost(plugin.Spec.Template.Spec); a == "" || a != b {
		t.Errorf("state host path: node runner %q, node plugins %q; want one directory", a, b)
	}
	if len(rs.Containers) != 1 {
		t.Fatalf("node runner has %d containers, want 1", len(rs.Containers))
	}
	rc := rs.Containers[0]
	socket := flagOf(rc, "socket")
	if !strings.HasPrefix(socket, "/var/lib/stowage/") {
		t.Errorf("node runner --socket=%q is not in the state directory (/var/lib/stowage) the plugins mount", socket)
	}
	bidi := false
	for _, m := range rc.VolumeMounts {
		bidi = bidi || (m.Name == "kubelet-dir" && m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional)
	}
	if !bidi {
		t.Error("node runner does not mount the kubelet directory with Bidirectional propagation; its clients' mounts would not reach the kubelet")
	}
	for _, c := range plugin.Spec.Template.Spec.Containers {
		if v := flagOf(c, "node-runner"); v != socket {
			t.Errorf("node plugin container %s: --node-runner=%q, want the runner's socket %q", c.Name, v, socket)
		}
	}
}

func TestTemplate_KubeletDirValue(t *testing.T) {
	out := render(t, "kubeletDir=/data/kubelet")
	if strings.Contains(out, "/var/lib/kubelet") {
		t.Error("with kubeletDir=/data/kubelet the render still names /var/lib/kubelet")
	}
	if !strings.Contains(out, "--kubelet-registration-dir=/data/kubelet/plugins_registry") {
		t.Error("with kubeletDir=/data/kubelet the node plugins do not register in /data/kubelet/plugins_registry")
	}
}

// Bad values fail helm template with the offending key's name (the
// schema), as they fail helm install.
func TestSchema_BadValuesFailWithKeyName(t *testing.T) {
	cases := []struct {
		name string
		set  []string
		want string
	}{
		{"unknown top-level key", []string{"replicaCount=2"}, "'replicaCount'"},
		{"unknown nested key", []string{"controller.replica=2"}, "'replica'"},
		{"unknown block parameter", []string{"blockStorageClasses[0].name=c", "blockStorageClasses[0].parameters.fstyp=ext4"}, "'fstyp'"},
		{"invalid block type", []string{"blockStorageClasses[0].name=c", "blockStorageClasses[0].parameters.type=gp9"}, "/blockStorageClasses/0/parameters/type"},
		{"invalid fsType", []string{"blockStorageClasses[0].name=c", "blockStorageClasses[0].parameters.csi\\.storage\\.k8s\\.io/fstype=ntfs"}, "fstype"},
		{"iops not a number", []string{"blockStorageClasses[0].name=c", "blockStorageClasses[0].parameters.iops=fast"}, "/parameters/iops"},
		{"invalid provisioningMode", []string{"fileStorageClasses[0].name=f", "fileStorageClasses[0].parameters.provisioningMode=efs-x",
			"fileStorageClasses[0].parameters.fileSystemId=fs-1", "fileStorageClasses[0].parameters.directoryPerms=700"}, "/parameters/provisioningMode"},
		{"directoryPerms not octal", []string{"fileStorageClasses[0].name=f", "fileStorageClasses[0].parameters.provisioningMode=efs-ap",
			"fileStorageClasses[0].parameters.fileSystemId=fs-1", "fileStorageClasses[0].parameters.directoryPerms=800"}, "/parameters/directoryPerms"},
		{"file class without fileSystemId", []string{"fileStorageClasses[0].name=f", "fileStorageClasses[0].parameters.provisioningMode=efs-ap",
			"fileStorageClasses[0].parameters.directoryPerms=700"}, "fileSystemId"},
		{"invalid pull policy", []string{"image.pullPolicy=Sometimes"}, "/image/pullPolicy"},
		{"node state holding the kubelet's directory", []string{"node.stateDir=/var/lib"}, "node.stateDir /var/lib holds kubeletDir /var/lib/kubelet"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"template", "stowage", chartDir(t)}
			_, err := helm(t, append(args, setFlags(c.set)...)...)
			if err == nil {
				t.Fatalf("helm template --set %v succeeded; the schema must refuse it", c.set)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("the error does not name %s: %v", c.want, err)
			}
		})
	}
}

func TestRenderedManifests_AreFresh(t *testing.T) {
	path := filepath.Join(repoRoot(t), "deploy", "manifests", "stowage.yaml")
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run deploy/render.sh)", err)
	}
	want := "# Generated by deploy/render.sh from deploy/helm/stowage with its default values; do not edit.\n" + render(t)
	if string(got) != want {
		t.Fatalf("%s is stale: run deploy/render.sh and commit it", path)
	}
	decodeStrict(t, string(got))
}
