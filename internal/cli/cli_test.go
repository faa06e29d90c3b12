package cli_test

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/cli"
	"github.com/stowage-io/stowage/internal/testutil/stack"
)

// These tests run the real command tree against a real API server (the
// stack's unix socket), as a user's shell would.

type cliResult struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, endpoint string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	full := append([]string{"--endpoint", endpoint, "--timeout", "20s"}, args...)
	code := cli.Execute(full, &out, &errOut)
	return cliResult{code, out.String(), errOut.String()}
}

// mustRun runs a command that has to succeed.
func mustRun(t *testing.T, endpoint string, args ...string) string {
	t.Helper()
	r := run(t, endpoint, args...)
	if r.code != cli.ExitOK {
		t.Fatalf("stowage %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// apiObject is the part of a volume or snapshot the tests read from JSON or
// YAML output. protojson writes int64 as strings.
type apiObject struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	State    string `json:"state"`
	Type     string `json:"type"`
	SizeGib  string `json:"sizeGib"`
	Iops     string `json:"iops"`
	VolumeID string `json:"volumeId"`
}

func parseJSON(t *testing.T, s string) apiObject {
	t.Helper()
	var o apiObject
	if err := json.Unmarshal([]byte(s), &o); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
	return o
}

func parseJSONList(t *testing.T, s, field string) []apiObject {
	t.Helper()
	var m map[string][]apiObject
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
	return m[field]
}

func ids(os []apiObject) []string {
	var out []string
	for _, o := range os {
		out = append(out, o.ID)
	}
	return out
}

func tableHeader(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.Join(strings.Fields(line), " ")
}

func startStack(t *testing.T) *stack.Stack {
	s := stack.Start(t, stack.Options{NoDriver: true})
	// No node plugin runs here; register the pool's node as one would.
	if _, err := pb.NewNodeServiceClient(s.Conn).RegisterNode(t.Context(), &pb.RegisterNodeRequest{Id: s.Node, Zone: s.Zone}); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVolumeCommands_Lifecycle(t *testing.T) {
	s := startStack(t)
	ep := s.APIEndpoint
	var id string
	steps := []struct {
		name  string
		args  func() []string
		code  int
		check func(t *testing.T, r cliResult)
	}{
		{"create -o json", func() []string {
			return []string{"volume", "create", "--name", "data", "--size", "10", "--type", "gp3", "--tag", "team=db", "-o", "json"}
		}, cli.ExitOK, func(t *testing.T, r cliResult) {
			v := parseJSON(t, r.stdout)
			if !strings.HasPrefix(v.ID, "vol-") || v.Name != "data" || v.State != "available" || v.SizeGib != "10" || v.Type != "gp3" {
				t.Fatalf("created %+v, want available 10 GiB gp3 named data", v)
			}
			id = v.ID
		}},
		{"create again is idempotent", func() []string {
			return []string{"volume", "create", "--name", "data", "--size", "10", "--type", "gp3", "--tag", "team=db", "-o", "json"}
		}, cli.ExitOK, func(t *testing.T, r cliResult) {
			if got := parseJSON(t, r.stdout).ID; got != id {
				t.Errorf("second create gave %s, want %s", got, id)
			}
		}},
		{"list table has headers and the volume", func() []string { return []string{"volume", "list"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if h := tableHeader(r.stdout); h != "ID NAME STATE TYPE SIZE(GiB) IOPS MiB/s ZONE NODE ATTACHED-TO TAGS" {
				t.Errorf("table header %q", h)
			}
			if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "team=db") {
				t.Errorf("table does not show %s with its tag:\n%s", id, r.stdout)
			}
			if row := strings.Fields(strings.Split(r.stdout, "\n")[1]); len(row) < 3 || row[2] != "available" {
				t.Errorf("table row %q does not show the state as the word available", row)
			}
		}},
		{"list --state available -o yaml shows state words", func() []string {
			return []string{"volume", "list", "--state", "available", "-o", "yaml"}
		}, cli.ExitOK, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "state: available") {
				t.Errorf("yaml does not show %s as available:\n%s", id, r.stdout)
			}
		}},
		{"list --state in-use leaves out the available volume", func() []string {
			return []string{"volume", "list", "--state", "in-use", "-o", "json"}
		}, cli.ExitOK, func(t *testing.T, r cliResult) {
			if got := parseJSONList(t, r.stdout, "volumes"); len(got) != 0 {
				t.Errorf("in-use volumes %v, want none", ids(got))
			}
		}},
		{"list --state busy is a usage error naming the states", func() []string {
			return []string{"volume", "list", "--state", "busy"}
		}, cli.ExitUsage, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stderr, "creating, available, in-use, deleting, error") {
				t.Errorf("stderr %q does not list the states", r.stderr)
			}
		}},
		{"list -o json", func() []string { return []string{"volume", "list", "-o", "json", "--tag", "team=db"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if got := ids(parseJSONList(t, r.stdout, "volumes")); len(got) != 1 || got[0] != id {
				t.Errorf("listed %v, want [%s]", got, id)
			}
		}},
		{"list -o yaml by zone", func() []string { return []string{"volume", "list", "-o", "yaml", "--zone", s.Zone} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			var m map[string][]apiObject
			if err := yaml.Unmarshal([]byte(r.stdout), &m); err != nil {
				t.Fatalf("output is not YAML: %v\n%s", err, r.stdout)
			}
			if got := ids(m["volumes"]); len(got) != 1 || got[0] != id {
				t.Errorf("listed %v, want [%s]", got, id)
			}
		}},
		{"describe shows YAML by default", func() []string { return []string{"volume", "describe", id} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			var v apiObject
			if err := yaml.Unmarshal([]byte(r.stdout), &v); err != nil || v.ID != id {
				t.Errorf("describe output %q (err %v), want YAML of %s", r.stdout, err, id)
			}
		}},
		{"resize", func() []string { return []string{"volume", "resize", id, "--size", "20", "-o", "json"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if v := parseJSON(t, r.stdout); v.SizeGib != "20" {
				t.Errorf("resized to %s GiB, want 20", v.SizeGib)
			}
		}},
		{"modify to io2", func() []string {
			return []string{"volume", "modify", id, "--type", "io2", "--iops", "5000", "-o", "json"}
		}, cli.ExitOK, func(t *testing.T, r cliResult) {
			if v := parseJSON(t, r.stdout); v.Type != "io2" || v.Iops != "5000" {
				t.Errorf("modified to %s with %s IOPS, want io2 with 5000", v.Type, v.Iops)
			}
		}},
		{"attach", func() []string { return []string{"volume", "attach", id, "--node", s.Node} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if h := tableHeader(r.stdout); h != "VOLUME NODE STATE TARGET" || !strings.Contains(r.stdout, id) {
				t.Errorf("attach output:\n%s", r.stdout)
			}
		}},
		{"list in-use", func() []string { return []string{"volume", "list", "--state", "in-use", "-o", "json"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if got := ids(parseJSONList(t, r.stdout, "volumes")); len(got) != 1 || got[0] != id {
				t.Errorf("in-use volumes %v, want [%s]", got, id)
			}
		}},
		{"delete while attached is a conflict", func() []string { return []string{"volume", "delete", id} }, cli.ExitConflict, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stderr, s.Node) {
				t.Errorf("error %q does not name node %s", r.stderr, s.Node)
			}
		}},
		{"detach", func() []string { return []string{"volume", "detach", id, "--node", s.Node} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stdout, "detached "+id) {
				t.Errorf("detach output %q", r.stdout)
			}
		}},
		{"delete", func() []string { return []string{"volume", "delete", id} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if strings.TrimSpace(r.stdout) != "deleted "+id {
				t.Errorf("delete output %q", r.stdout)
			}
		}},
		{"delete again succeeds", func() []string { return []string{"volume", "delete", id} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stdout, "does not exist") {
				t.Errorf("delete output %q", r.stdout)
			}
		}},
		{"describe deleted is not found", func() []string { return []string{"volume", "describe", id} }, cli.ExitNotFound, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stderr, id) {
				t.Errorf("error %q does not name %s", r.stderr, id)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, func(t *testing.T) {
			r := run(t, ep, st.args()...)
			if r.code != st.code {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, st.code, r.stderr)
			}
			st.check(t, r)
		}) {
			break // later steps build on this one
		}
	}
}

func TestSnapshotCommands_CreateListRestoreDelete(t *testing.T) {
	s := startStack(t)
	ep := s.APIEndpoint
	vol := parseJSON(t, mustRun(t, ep, "volume", "create", "--name", "src", "--size", "3", "-o", "json")).ID
	var snap string
	steps := []struct {
		name  string
		args  func() []string
		code  int
		check func(t *testing.T, r cliResult)
	}{
		{"create -o json", func() []string {
			return []string{"snapshot", "create", vol, "--name", "nightly", "--description", "before upgrade", "-o", "json"}
		}, cli.ExitOK, func(t *testing.T, r cliResult) {
			sn := parseJSON(t, r.stdout)
			if !strings.HasPrefix(sn.ID, "snap-") || sn.VolumeID != vol || sn.State != "completed" || sn.SizeGib != "3" {
				t.Fatalf("snapshot %+v, want a completed 3 GiB snapshot of %s", sn, vol)
			}
			snap = sn.ID
		}},
		{"create again is idempotent", func() []string { return []string{"snapshot", "create", vol, "--name", "nightly", "-o", "json"} },
			cli.ExitOK, func(t *testing.T, r cliResult) {
				if got := parseJSON(t, r.stdout).ID; got != snap {
					t.Errorf("second create gave %s, want %s", got, snap)
				}
			}},
		{"same name of another volume is a conflict", func() []string { return []string{"snapshot", "create", "vol-00000000000000001", "--name", "nightly"} },
			cli.ExitConflict, func(t *testing.T, r cliResult) {
				if !strings.Contains(r.stderr, snap) {
					t.Errorf("error %q does not name the existing snapshot %s", r.stderr, snap)
				}
			}},
		{"list table", func() []string { return []string{"snapshot", "list"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if h := tableHeader(r.stdout); h != "ID NAME VOLUME STATE SIZE(GiB) ZONE CREATED TAGS" {
				t.Errorf("table header %q", h)
			}
			if !strings.Contains(r.stdout, snap) {
				t.Errorf("table does not list %s:\n%s", snap, r.stdout)
			}
		}},
		{"list -o yaml of the volume", func() []string { return []string{"snapshot", "list", "--volume", vol, "-o", "yaml"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			var m map[string][]apiObject
			if err := yaml.Unmarshal([]byte(r.stdout), &m); err != nil {
				t.Fatalf("output is not YAML: %v\n%s", err, r.stdout)
			}
			if got := ids(m["snapshots"]); len(got) != 1 || got[0] != snap {
				t.Errorf("listed %v, want [%s]", got, snap)
			}
		}},
		{"restore takes the snapshot's size", func() []string { return []string{"volume", "create", "--snapshot", snap, "-o", "json"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if v := parseJSON(t, r.stdout); v.SizeGib != "3" || v.State != "available" {
				t.Errorf("restored %+v, want an available 3 GiB volume", v)
			}
		}},
		{"describe", func() []string { return []string{"snapshot", "describe", snap, "-o", "json"} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if got := parseJSON(t, r.stdout).ID; got != snap {
				t.Errorf("described %s, want %s", got, snap)
			}
		}},
		{"delete", func() []string { return []string{"snapshot", "delete", snap} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if strings.TrimSpace(r.stdout) != "deleted "+snap {
				t.Errorf("delete output %q", r.stdout)
			}
		}},
		{"delete again succeeds", func() []string { return []string{"snapshot", "delete", snap} }, cli.ExitOK, func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stdout, "does not exist") {
				t.Errorf("delete output %q", r.stdout)
			}
		}},
		{"describe deleted is not found", func() []string { return []string{"snapshot", "describe", snap} }, cli.ExitNotFound, func(t *testing.T, r cliResult) {}},
	}
	for _, st := range steps {
		if !t.Run(st.name, func(t *testing.T) {
			r := run(t, ep, st.args()...)
			if r.code != st.code {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, st.code, r.stderr)
			}
			st.check(t, r)
		}) {
			break
		}
	}
}

func TestExitCodes(t *testing.T) {
	s := startStack(t)
	ep := s.APIEndpoint
	existing := parseJSON(t, mustRun(t, ep, "volume", "create", "--name", "taken", "--size", "5", "-o", "json")).ID
	unreachable := "unix://" + filepath.Join(t.TempDir(), "nobody-listens.sock")
	tests := []struct {
		name     string
		endpoint string
		args     []string
		code     int
		stderr   []string
	}{
		{"ok", ep, []string{"pool", "list"}, cli.ExitOK, nil},
		{"not found", ep, []string{"volume", "describe", "vol-00000000000000404"}, cli.ExitNotFound, []string{"vol-00000000000000404", "does not exist"}},
		{"invalid value", ep, []string{"volume", "create", "--size", "10", "--type", "gp3", "--iops", "20000"}, cli.ExitInvalidInput,
			[]string{"iops", "20000", "3000–16000"}},
		{"invalid type", ep, []string{"volume", "create", "--size", "10", "--type", "gp9"}, cli.ExitInvalidInput, []string{"gp9"}},
		{"shrink is invalid", ep, []string{"volume", "resize", existing, "--size", "1"}, cli.ExitInvalidInput, []string{"shrink"}},
		{"name taken with other parameters", ep, []string{"volume", "create", "--name", "taken", "--size", "6"}, cli.ExitConflict,
			[]string{existing}},
		{"unreachable endpoint", unreachable, []string{"volume", "list"}, cli.ExitUnavailable, []string{"not reachable", "--endpoint"}},
		{"unknown flag", ep, []string{"volume", "list", "--bogus"}, cli.ExitUsage, []string{"--bogus"}},
		{"bad flag value", ep, []string{"volume", "create", "--size", "ten"}, cli.ExitUsage, []string{"--size", "ten"}},
		{"missing argument", ep, []string{"volume", "describe"}, cli.ExitUsage, []string{"arg"}},
		{"too many arguments", ep, []string{"volume", "resize", "a", "b", "--size", "2"}, cli.ExitUsage, []string{"arg"}},
		{"missing required flag", ep, []string{"volume", "create"}, cli.ExitUsage, []string{"--size"}},
		{"bad tag", ep, []string{"volume", "create", "--size", "1", "--tag", "novalue"}, cli.ExitUsage, []string{"novalue", "key=value"}},
		{"unknown command", ep, []string{"volumez"}, cli.ExitUsage, []string{"volumez"}},
		{"unknown subcommand", ep, []string{"volume", "destroy", existing}, cli.ExitUsage, []string{"destroy"}},
		{"unknown output format", ep, []string{"volume", "list", "-o", "xml"}, cli.ExitUsage, []string{"xml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.endpoint, tt.args...)
			if r.code != tt.code {
				t.Fatalf("stowage %s: exit %d, want %d; stderr: %s", strings.Join(tt.args, " "), r.code, tt.code, r.stderr)
			}
			for _, w := range tt.stderr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not mention %q", r.stderr, w)
				}
			}
		})
	}
	// Nothing the refused commands did changed the volume.
	v := parseJSON(t, mustRun(t, ep, "volume", "describe", existing, "-o", "json"))
	if v.SizeGib != "5" || v.State != "available" {
		t.Errorf("volume after refused commands: %+v, want 5 GiB available", v)
	}
}

func TestPoolAndNodeList_Tables(t *testing.T) {
	s := startStack(t)
	tests := []struct {
		args       []string
		wantHeader string
		wantRow    []string
	}{
		{[]string{"pool", "list"}, "NAME ZONE NODE CLONE-MODE SIZE FREE PROVISIONED VOLUMES SNAPSHOTS", []string{"pool-a", s.Zone, s.Node, "reflink"}},
		{[]string{"node", "list"}, "NODE ZONE ATTACHED MAX", []string{s.Node, s.Zone}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out := mustRun(t, s.APIEndpoint, tt.args...)
			if h := tableHeader(out); h != tt.wantHeader {
				t.Errorf("header %q, want %q", h, tt.wantHeader)
			}
			for _, w := range tt.wantRow {
				if !strings.Contains(out, w) {
					t.Errorf("table does not show %q:\n%s", w, out)
				}
			}
		})
	}
}
