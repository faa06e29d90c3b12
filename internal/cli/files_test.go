package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/stowage-io/stowage/internal/cli"
)

type fsObject struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	State            string `json:"state"`
	StorageClass     string `json:"storageClass"`
	AvailabilityZone string `json:"availabilityZone"`
	ThroughputMode   string `json:"throughputMode"`
	AccessPointCount int    `json:"accessPointCount"`
	FileSystemID     string `json:"fileSystemId"`
	PosixUser        struct {
		UID           int   `json:"uid"`
		GID           int   `json:"gid"`
		SecondaryGids []int `json:"secondaryGids"`
	} `json:"posixUser"`
	RootDirectory struct {
		Path         string `json:"path"`
		CreationInfo struct {
			OwnerUID    int    `json:"ownerUid"`
			Permissions string `json:"permissions"`
		} `json:"creationInfo"`
	} `json:"rootDirectory"`
}

func parseFS(t *testing.T, s string) fsObject {
	t.Helper()
	var o fsObject
	if err := json.Unmarshal([]byte(s), &o); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
	return o
}

func TestFileSystemAndAccessPointCommands_Lifecycle(t *testing.T) {
	s := startStack(t)
	ep := s.APIEndpoint

	f := parseFS(t, mustRun(t, ep, "fs", "create", "--name", "shared", "--zone", s.Zone, "--throughput-mode", "elastic", "-o", "json"))
	if !strings.HasPrefix(f.ID, "fs-") || f.State != "available" || f.StorageClass != "one-zone" || f.ThroughputMode != "elastic" {
		t.Fatalf("created %+v", f)
	}
	if again := parseFS(t, mustRun(t, ep, "fs", "create", "--name", "shared", "--zone", s.Zone, "--throughput-mode", "elastic", "-o", "json")); again.ID != f.ID {
		t.Errorf("second create gave %s, want %s", again.ID, f.ID)
	}
	if r := run(t, ep, "fs", "create", "--name", "shared"); r.code != cli.ExitConflict || !strings.Contains(r.stderr, f.ID) {
		t.Errorf("create with other parameters: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, ep, "fs", "create", "--performance-mode", "turbo"); r.code != cli.ExitInvalidInput || !strings.Contains(r.stderr, `"turbo"`) {
		t.Errorf("bad performance mode: exit %d, %s", r.code, r.stderr)
	}
	if h := tableHeader(mustRun(t, ep, "fs", "list")); h != "ID NAME STATE CLASS ZONE PERFORMANCE THROUGHPUT USED ACCESS-POINTS NODE TAGS" {
		t.Errorf("fs list header = %q", h)
	}

	a := parseFS(t, mustRun(t, ep, "ap", "create", "--fs", f.ID, "--name", "app", "--path", "/dynamic/app",
		"--uid", "1000", "--gid", "1001", "--secondary-gids", "5,6", "--permissions", "750", "-o", "json"))
	if !strings.HasPrefix(a.ID, "fsap-") || a.State != "available" || a.FileSystemID != f.ID ||
		a.PosixUser.UID != 1000 || a.PosixUser.GID != 1001 || len(a.PosixUser.SecondaryGids) != 2 ||
		a.RootDirectory.Path != "/dynamic/app" || a.RootDirectory.CreationInfo.OwnerUID != 1000 || a.RootDirectory.CreationInfo.Permissions != "0750" {
		t.Fatalf("created %+v", a)
	}
	fi, err := os.Stat(filepath.Join(s.FilePoolDir, "filesystems", f.ID, "dynamic", "app"))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("root directory: %v, %v", fi, err)
	}
	var y fsObject
	if err := yaml.Unmarshal([]byte(mustRun(t, ep, "ap", "describe", a.ID)), &y); err != nil || y.ID != a.ID {
		t.Errorf("ap describe (YAML) = %+v, %v", y, err)
	}
	if h := tableHeader(mustRun(t, ep, "ap", "list", "--fs", f.ID)); h != "ID NAME FILE-SYSTEM STATE PATH POSIX-USER CREATION QUOTA TAGS" {
		t.Errorf("ap list header = %q", h)
	}
	if r := run(t, ep, "ap", "create", "--fs", f.ID, "--path", "/a/../../etc", "--uid", "1", "--gid", "1", "--permissions", "700"); r.code != cli.ExitInvalidInput || !strings.Contains(r.stderr, "/a/../../etc") {
		t.Errorf("escaping path: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, ep, "ap", "create", "--fs", f.ID, "--path", "/x", "--permissions", "0999"); r.code != cli.ExitInvalidInput || !strings.Contains(r.stderr, "0999") {
		t.Errorf("bad permissions: exit %d, %s", r.code, r.stderr)
	}

	var described fsObject
	if err := yaml.Unmarshal([]byte(mustRun(t, ep, "fs", "describe", f.ID)), &described); err != nil || described.AccessPointCount != 1 {
		t.Errorf("fs describe = %+v, %v; want 1 access point", described, err)
	}
	if r := run(t, ep, "fs", "delete", f.ID); r.code != cli.ExitConflict || !strings.Contains(r.stderr, a.ID) {
		t.Errorf("delete of a file system with an access point: exit %d, %s", r.code, r.stderr)
	}
	if out := mustRun(t, ep, "ap", "delete", a.ID); !strings.Contains(out, "deleted "+a.ID) {
		t.Errorf("ap delete: %s", out)
	}
	if out := mustRun(t, ep, "ap", "delete", a.ID); !strings.Contains(out, "does not exist") {
		t.Errorf("ap delete again: %s", out)
	}
	if out := mustRun(t, ep, "fs", "delete", f.ID); !strings.Contains(out, "deleted "+f.ID) {
		t.Errorf("fs delete: %s", out)
	}
	if r := run(t, ep, "fs", "describe", f.ID); r.code != cli.ExitNotFound {
		t.Errorf("describe deleted: exit %d", r.code)
	}
}
