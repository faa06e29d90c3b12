package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// killCgroupTree kills what runs in a cgroup tree, nested groups included,
// and nothing else.
func TestKillCgroupTree_KillsEveryProcessInTheTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make cgroups")
	}
	top := fmt.Sprintf("stowage-test-%d", os.Getpid())
	root := "/sys/fs/cgroup/pids/" + top
	if !exists("/sys/fs/cgroup/pids") {
		t.Skip("no cgroup v1 pids hierarchy at /sys/fs/cgroup/pids on this machine")
	}
	nested := filepath.Join(root, "pod1", "ctr1")
	if err := os.MkdirAll(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTrees(top) })

	start := func(group string) *exec.Cmd {
		c := exec.Command("sleep", "300")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		if err := os.WriteFile(filepath.Join(group, "cgroup.procs"), []byte(strconv.Itoa(c.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		return c
	}
	inTop, inNested := start(root), start(nested)
	outside := exec.Command("sleep", "300")
	if err := outside.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { outside.Process.Kill(); outside.Wait() }()

	done := make(chan struct{}, 2)
	for _, c := range []*exec.Cmd{inTop, inNested} {
		go func() { c.Wait(); done <- struct{}{} }()
	}
	if n := killCgroupTree(top); n != 2 {
		t.Fatalf("killCgroupTree killed %d processes, want 2", n)
	}
	for range 2 {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("a process in the tree is still running")
		}
	}
	if !alive(outside.Process.Pid) {
		t.Fatal("a process outside the tree was killed")
	}
}
