// Package harness brings up (or finds) the local cluster the end-to-end
// packages run on, tears down what it brought up and checks that nothing
// of it is left in the kernel, and runs kubectl and the stowage CLI
// against it. test/e2e (one node) and test/e2e/multinode (three) share it.
package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

// Cluster is the cluster of one package's run.
type Cluster struct {
	// Name prefixes the progress lines ("e2e", "multinode").
	Name       string
	Repo       string
	DataDir    string
	Stowage    string // bin/stowage, built from Repo
	Kubectl    string // _output/bin/kubectl
	Kubeconfig string
	APISocket  string // unix://…
	// startedHere: Setup brought it up, so Teardown takes it down.
	startedHere bool
}

// New names everything of the cluster in dataDir for the repository at
// repo.
func New(name, repo, dataDir string) *Cluster {
	return &Cluster{
		Name: name, Repo: repo, DataDir: dataDir,
		Stowage:    filepath.Join(repo, "bin", "stowage"),
		Kubectl:    filepath.Join(repo, "_output", "bin", "kubectl"),
		Kubeconfig: filepath.Join(dataDir, "kubeconfig", "admin.kubeconfig"),
		APISocket:  "unix://" + filepath.Join(dataDir, "run", "stowage-api.sock"),
	}
}

// Step prints a progress line.
func (c *Cluster) Step(msg string) {
	fmt.Printf("%s %s: %s\n", c.Name, time.Now().Format("15:04:05"), msg)
}

// Setup builds bin/stowage and, unless a cluster runs already (then
// whether it may be used: check, when not nil, decides), builds the components
// and runs `stowage up` with upArgs.
func (c *Cluster) Setup(check func() error, upArgs ...string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not run: it needs root (it runs a local Kubernetes with loop devices, mounts and network namespaces); run it as root, e.g. `bash hack/test.sh`")
	}
	c.Step("building bin/stowage")
	if out, err := c.command("go", "build", "-o", c.Stowage, "./cmd/stowage").CombinedOutput(); err != nil {
		return fmt.Errorf("build stowage: %v\n%s", err, out)
	}
	if exec.Command(c.Stowage, "status", "--data-dir", c.DataDir).Run() == nil {
		if check != nil {
			return check()
		}
		return nil
	}
	c.Step("no cluster runs: stowage up " + strings.Join(upArgs, " ") + " (components from hack/build-components.sh)")
	if out, err := c.command("bash", "hack/build-components.sh").CombinedOutput(); err != nil {
		return fmt.Errorf("build components: %v\n%s", err, tail(out))
	}
	c.startedHere = true
	up := exec.Command(c.Stowage, append([]string{"up", "--data-dir", c.DataDir}, upArgs...)...)
	up.Stdout, up.Stderr = os.Stdout, os.Stderr
	if err := up.Run(); err != nil {
		c.down()
		return fmt.Errorf("stowage up: %w", err)
	}
	return nil
}

// Teardown takes down a cluster Setup brought up (unless STOWAGE_E2E_KEEP=1)
// and returns what failed: the down itself, or anything of the cluster
// left in the kernel afterwards. "" when all is well.
func (c *Cluster) Teardown() string {
	if !c.startedHere || os.Getenv("STOWAGE_E2E_KEEP") == "1" {
		return ""
	}
	var problems []string
	if err := c.down(); err != nil {
		problems = append(problems, "stowage down: "+err.Error())
	}
	if left := c.Leftovers(); left != "" {
		problems = append(problems, "left behind after stowage down:\n"+left)
	}
	return strings.Join(problems, "\n")
}

func (c *Cluster) down() error {
	c.Step("stowage down --wipe (this run started the cluster)")
	d := exec.Command(c.Stowage, "down", "--wipe", "--data-dir", c.DataDir)
	d.Stdout, d.Stderr = os.Stdout, os.Stderr
	return d.Run()
}

// Leftovers lists what of the cluster is still in the kernel, one per
// line: loop devices backed by files under the data directory, mounts
// under it, network namespaces stowage-* and links stw-* of other nodes.
func (c *Cluster) Leftovers() string {
	var b strings.Builder
	loops, _ := loopdev.Under(c.DataDir)
	for _, l := range loops {
		deleted := ""
		if l.Deleted {
			deleted = " (deleted)"
		}
		fmt.Fprintf(&b, "loop device %s: %s%s\n", filepath.Base(l.Path), l.BackingFile, deleted)
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], c.DataDir+"/") {
			fmt.Fprintf(&b, "mount %s (%s)\n", f[1], f[0])
		}
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "stowage-") {
		fmt.Fprintf(&b, "network namespaces: %s\n", strings.TrimSpace(string(out)))
	}
	if out, _ := exec.Command("ip", "-o", "link").Output(); strings.Contains(string(out), " stw-") {
		fmt.Fprintf(&b, "links stw-*: %s\n", strings.TrimSpace(string(out)))
	}
	return b.String()
}

// KubectlErr runs the cluster's kubectl and returns its output (stdout,
// and stderr too when it fails).
func (c *Cluster) KubectlErr(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		// Callers print the output on failure: give them both streams.
		return strings.TrimSpace(string(out) + "\n" + stderr.String()), err
	}
	return strings.TrimSpace(string(out)), nil
}

// StowageCmd is the stowage CLI against the cluster's Stowage servers:
// it finds their sockets in the data directory (both, on a multi-node
// cluster, and follows the one that leads).
func (c *Cluster) StowageCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(c.Stowage, args...)
	cmd.Env = append(os.Environ(), "STOWAGE_DATA_DIR="+c.DataDir)
	return cmd
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.Repo
	return cmd
}

func tail(b []byte) string {
	s := string(b)
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}
