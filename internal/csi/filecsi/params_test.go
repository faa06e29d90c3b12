package filecsi

import (
	"regexp"
	"strings"
	"testing"
)

const testFS = "fs-0123456789abcdef0"

func base(extra map[string]string) map[string]string {
	p := map[string]string{"provisioningMode": "efs-ap", "fileSystemId": testFS, "directoryPerms": "700"}
	for k, v := range extra {
		if v == "<delete>" {
			delete(p, k)
			continue
		}
		p[k] = v
	}
	return p
}

func TestParseCreateParams_Refusals_NameParameterValueAndWhatIsAllowed(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		want   string
	}{
		{base(map[string]string{"provisioningMode": "<delete>"}), `parameter provisioningMode is required: "efs-ap" or "access-point"`},
		{base(map[string]string{"provisioningMode": "efs-fs"}), `parameter provisioningMode: "efs-fs" is not supported; use "efs-ap" or "access-point"`},
		{base(map[string]string{"fileSystemId": "<delete>"}), "parameter fileSystemId is required"},
		{base(map[string]string{"fileSystemId": "fs-xyz"}), `parameter fileSystemId: "fs-xyz" is not a file system id (fs- and 8 to 40 lower-case hex digits`},
		{base(map[string]string{"directoryPerms": "<delete>"}), "parameter directoryPerms is required: the octal mode (000 to 777)"},
		{base(map[string]string{"directoryPerms": "800"}), `parameter directoryPerms: "800" is not an octal mode from 000 to 777`},
		{base(map[string]string{"directoryPerms": "1777"}), `parameter directoryPerms: "1777" is not an octal mode from 000 to 777`},
		{base(map[string]string{"directoryPerms": "rwx"}), `parameter directoryPerms: "rwx" is not an octal mode`},
		{base(map[string]string{"directoryPerms": ""}), `parameter directoryPerms: "" is not an octal mode`},
		{base(map[string]string{"uid": "-1"}), `parameter uid: "-1" is not a user id (a whole number from 0 to 4294967294)`},
		{base(map[string]string{"uid": "4294967295"}), `parameter uid: "4294967295" is not a user id`},
		{base(map[string]string{"gid": "x"}), `parameter gid: "x" is not a group id`},
		{base(map[string]string{"gidRangeStart": "100"}), "parameter gidRangeStart=100 is given without gidRangeEnd"},
		{base(map[string]string{"gidRangeEnd": "200"}), "parameter gidRangeEnd=200 is given without gidRangeStart"},
		{base(map[string]string{"gidRangeStart": "0", "gidRangeEnd": "10"}), "parameter gidRangeStart: 0 is root's group"},
		{base(map[string]string{"gidRangeStart": "200", "gidRangeEnd": "100"}), "parameter gidRangeEnd: 100 is below gidRangeStart 200"},
		{base(map[string]string{"gidRangeStart": "a", "gidRangeEnd": "100"}), `parameter gidRangeStart: "a" is not a group id`},
		{base(map[string]string{"basePath": "/dyn/../../etc"}), `parameter basePath: "/dyn/../../etc" has a ".." component`},
		{base(map[string]string{"basePath": "./x"}), `parameter basePath: "./x" has a "." component`},
		{base(map[string]string{"subPathPattern": "/${.PVC.name}"}), `parameter subPathPattern: "/${.PVC.name}" is absolute; it is a path under basePath`},
		{base(map[string]string{"subPathPattern": "../${.PVC.name}"}), `parameter subPathPattern: "../${.PVC.name}" has a ".." component`},
		{base(map[string]string{"subPathPattern": "${.PVC.uid}"}), `uses ${.PVC.uid}, which is not a known variable; known variables: ${.PV.name}, ${.PVC.namespace}, ${.PVC.name}`},
		{base(map[string]string{"subPathPattern": "${PVC.name}"}), `uses ${PVC.name}, which is not a known variable`},
		{base(map[string]string{"subPathPattern": "x-${.PVC.name"}), "has a ${ without its closing }"},
		{base(map[string]string{"subPathPattern": " "}), "parameter subPathPattern is empty"},
		{base(map[string]string{"ensureUniqueDirectory": "yes"}), `parameter ensureUniqueDirectory: "yes" is not true or false`},
		{base(map[string]string{"reuseAccessPoint": "1x"}), `parameter reuseAccessPoint: "1x" is not true or false`},
		{base(map[string]string{"reuseAccessPoint": "true"}), "parameter reuseAccessPoint=true names the access point after the claim, but the provisioner passed no csi.storage.k8s.io/pvc/name"},
		{base(map[string]string{"deleteAccessPointRootDir": "maybe"}), `parameter deleteAccessPointRootDir: "maybe" is not true or false`},
		{base(map[string]string{"quota": "5Gi"}), `parameter quota: "5Gi" is not true or false`},
		{base(map[string]string{"volumeType": "gp3"}), `unknown StorageClass parameter "volumeType"; known parameters: provisioningMode, fileSystemId, directoryPerms`},
		{base(map[string]string{"fileSystemIdConfigRef": "ns/cm/key"}), "parameter fileSystemIdConfigRef of the EFS CSI driver is not supported by file.csi.stowage.io: give the file system id as fileSystemId"},
		{base(map[string]string{"enforceZoneAffinity": "true"}), "parameter enforceZoneAffinity of the EFS CSI driver is not supported"},
	} {
		_, err := parseCreateParams(tc.params)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseCreateParams(%v) = %v; want an error containing %q", tc.params, err, tc.want)
		}
	}
}

func TestParseCreateParams_EveryParameterAccepted(t *testing.T) {
	p, err := parseCreateParams(map[string]string{
		"provisioningMode": "access-point", "FILESYSTEMID": testFS, "directoryPerms": "0750",
		"uid": "1000", "gid": "2000", "gidRangeStart": "100", "gidRangeEnd": "100",
		"basePath": "dynamic//provisioning/", "subPathPattern": "${.PVC.namespace}/${.PVC.name}",
		"ensureUniqueDirectory": "false", "reuseAccessPoint": "true", "deleteAccessPointRootDir": "true",
		"az": "zone-a", "quota": "true",
		"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team",
		"csi.storage.k8s.io/pv/name": "pvc-1", "csi.storage.k8s.io/provisioner-secret-name": "ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := createParams{fileSystemID: testFS, permissions: "0750", uid: 1000, gid: 2000, gidStart: 100, gidEnd: 100, rangeGiven: true,
		basePath: "/dynamic/provisioning", pattern: "${.PVC.namespace}/${.PVC.name}", hasPattern: true, ensureUnique: false,
		reuse: true, deleteRoot: true, az: "zone-a", quota: true, pvcName: "data", pvcNamespace: "team", pvName: "pvc-1"}
	if *p != want {
		t.Fatalf("parsed\n %+v\nwant\n %+v", *p, want)
	}
}

func TestParseCreateParams_Defaults_AsTheEFSDriver(t *testing.T) {
	p, err := parseCreateParams(base(nil))
	if err != nil {
		t.Fatal(err)
	}
	if p.uid != -1 || p.gid != -1 || p.gidStart != 50000 || p.gidEnd != 7000000 || !p.ensureUnique || p.reuse || p.deleteRoot || p.quota || p.basePath != "/" {
		t.Fatalf("defaults: %+v", *p)
	}
}

var uuidSuffix = regexp.MustCompile(`-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestRootDirectory_BasePathSubPathPatternEnsureUnique(t *testing.T) {
	meta := map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team", "csi.storage.k8s.io/pv/name": "pvc-9"}
	with := func(m map[string]string) map[string]string {
		out := base(m)
		for k, v := range meta {
			out[k] = v
		}
		return out
	}
	for _, tc := range []struct {
		params map[string]string
		want   string // exact, or the prefix before the unique suffix when unique
		unique bool
	}{
		{params: with(nil), want: "/pvc-9-name"},
		{params: with(map[string]string{"basePath": "/dynamic_provisioning"}), want: "/dynamic_provisioning/pvc-9-name"},
		{params: with(map[string]string{"basePath": "/b", "subPathPattern": "${.PVC.namespace}/${.PVC.name}"}), want: "/b/team/data", unique: true},
		{params: with(map[string]string{"basePath": "/b", "subPathPattern": "${.PVC.namespace}/${.PVC.name}", "ensureUniqueDirectory": "false"}), want: "/b/team/data"},
		{params: with(map[string]string{"subPathPattern": "fixed/${.PV.name}", "ensureUniqueDirectory": "false"}), want: "/fixed/pvc-9"},
		{params: with(map[string]string{"subPathPattern": "only-text", "ensureUniqueDirectory": "false"}), want: "/only-text"},
	} {
		p, err := parseCreateParams(tc.params)
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.rootDirectory("pvc-9-name")
		if err != nil {
			t.Fatalf("%v: %v", tc.params, err)
		}
		if tc.unique {
			if !uuidSuffix.MatchString(got) || uuidSuffix.ReplaceAllString(got, "") != tc.want {
				t.Errorf("%v: root %q; want %q plus a -uuid suffix", tc.params, got, tc.want)
			}
			again, _ := p.rootDirectory("pvc-9-name")
			other, _ := p.rootDirectory("pvc-10-name")
			if again != got || other == got {
				t.Errorf("unique suffix must be the same for one volume name and differ between names: %q %q %q", got, again, other)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("%v: root %q; want %q", tc.params, got, tc.want)
		}
	}
}

func TestRootDirectory_MissingMetadataOrBadValues_Refused(t *testing.T) {
	p, err := parseCreateParams(base(map[string]string{"subPathPattern": "${.PVC.namespace}"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.rootDirectory("pvc-1"); err == nil || !strings.Contains(err.Error(), "uses ${.PVC.namespace}, but the provisioner passed no csi.storage.k8s.io/pvc/namespace; run csi-provisioner with --extra-create-metadata") {
		t.Errorf("missing metadata: %v", err)
	}
	p, _ = parseCreateParams(base(map[string]string{"subPathPattern": "${.PVC.name}", "csi.storage.k8s.io/pvc/name": ".."}))
	if _, err := p.rootDirectory("pvc-1"); err == nil || !strings.Contains(err.Error(), `parameter subPathPattern: ${.PVC.name} ".." cannot be a directory name`) {
		t.Errorf(".. as a value: %v", err)
	}
	p, _ = parseCreateParams(base(map[string]string{"subPathPattern": "${.PVC.name}", "csi.storage.k8s.io/pvc/name": "a/b"}))
	if _, err := p.rootDirectory("pvc-1"); err == nil || !strings.Contains(err.Error(), "cannot be a directory name") {
		t.Errorf("slash in a value: %v", err)
	}
	// ${.PV.name} falls back to the CSI name, which is the PV's name.
	p, _ = parseCreateParams(base(map[string]string{"subPathPattern": "${.PV.name}", "ensureUniqueDirectory": "false"}))
	if got, err := p.rootDirectory("pvc-7"); err != nil || got != "/pvc-7" {
		t.Errorf("PV name fallback: %q, %v", got, err)
	}
}

func TestReuseToken_SameClaimSameToken(t *testing.T) {
	a, b, c := reuseToken("ns", "data"), reuseToken("ns", "data"), reuseToken("other", "data")
	if a != b || a == c || len(a) > 128 {
		t.Fatalf("tokens %q %q %q", a, b, c)
	}
}
