package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestPidFile_RoundTripAndGarbage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.pid")
	if _, err := readPidFile(p); !os.IsNotExist(err) {
		t.Errorf("missing pid file: %v, want not-exist", err)
	}
	if err := writePidFile(p, 4242); err != nil {
		t.Fatal(err)
	}
	if pid, err := readPidFile(p); err != nil || pid != 4242 {
		t.Errorf("readPidFile = %d, %v", pid, err)
	}
	os.WriteFile(p, []byte("nope\n"), 0o644)
	if _, err := readPidFile(p); err == nil || !strings.Contains(err.Error(), "not a pid") {
		t.Errorf("garbage pid file: %v", err)
	}
}

func TestProcess_StateStartStop(t *testing.T) {
	dir := t.TempDir()
	proc := Process{Name: "sleeper", PidFile: filepath.Join(dir, "run", "sleeper.pid"), Cluster: dir}
	if st, _ := proc.State(); st != NotStarted {
		t.Fatalf("before start: %v", st)
	}
	log := filepath.Join(dir, "logs", "sleeper.log")
	pid, err := proc.start(Command{Path: "/bin/sh", Args: []string{"-c", "echo started; exec sleep 60"}}, log)
	if err != nil {
		t.Fatal(err)
	}
	// The environment of a freshly exec'd process may read empty for a
	// moment; State settles quickly.
	deadline := time.Now().Add(5 * time.Second)
	st, got := proc.State()
	for st != Running && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		st, got = proc.State()
	}
	if st != Running || got != pid {
		t.Fatalf("after start: %v pid %d, want running pid %d", st, got, pid)
	}
	// Another component's view of the same pid file is not running: the
	// process carries this component's name.
	other := Process{Name: "other", PidFile: proc.PidFile, Cluster: dir}
	if st, _ := other.State(); st != Dead {
		t.Errorf("a process started for another component reads %v, want dead", st)
	}
	stopped, err := proc.Stop(context.Background(), 5*time.Second)
	if err != nil || !stopped {
		t.Fatalf("Stop = %v, %v", stopped, err)
	}
	if st, _ := proc.State(); st != NotStarted {
		t.Errorf("after stop: %v, want not started (pid file removed)", st)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "started") || !strings.Contains(string(b), "stowage: starting /bin/sh") {
		t.Errorf("log: %q", b)
	}
	if stopped, err := proc.Stop(context.Background(), time.Second); stopped || err != nil {
		t.Errorf("stopping twice = %v, %v; want nothing to do", stopped, err)
	}
}

func TestProcess_DeadWhenThePidIsGone(t *testing.T) {
	dir := t.TempDir()
	proc := Process{Name: "gone", PidFile: filepath.Join(dir, "gone.pid"), Cluster: dir}
	// Our own pid: alive, but not started as this component.
	writePidFile(proc.PidFile, os.Getpid())
	if st, pid := proc.State(); st != Dead || pid != os.Getpid() {
		t.Errorf("State = %v %d, want dead", st, pid)
	}
	writePidFile(proc.PidFile, 1<<22+1) // above pid_max
	if st, _ := proc.State(); st != Dead {
		t.Errorf("State = %v, want dead", st)
	}
}

func TestFieldBytes_ReadsSandboxIDs(t *testing.T) {
	sandbox := func(id string) []byte {
		b := protowire.AppendTag(nil, 1, protowire.BytesType)
		b = protowire.AppendString(b, id)
		b = protowire.AppendTag(b, 3, protowire.VarintType) // state
		b = protowire.AppendVarint(b, 1)
		b = protowire.AppendTag(b, 4, protowire.VarintType) // created_at
		return protowire.AppendVarint(b, 1700000000)
	}
	var resp []byte
	for _, id := range []string{"aaa", "bbb"} {
		resp = protowire.AppendTag(resp, 1, protowire.BytesType)
		resp = protowire.AppendBytes(resp, sandbox(id))
	}
	var ids []string
	for _, item := range fieldBytes(resp, 1) {
		for _, id := range fieldBytes(item, 1) {
			ids = append(ids, string(id))
		}
	}
	if strings.Join(ids, ",") != "aaa,bbb" {
		t.Errorf("ids = %v", ids)
	}
}
