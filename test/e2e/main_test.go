// Package e2e runs the storage behaviours of SPEC.md section 1 and the block
// scenarios of section 6 on a real single-node Kubernetes made by
// `stowage up`, with real pods writing and reading real data.
//
// It brings the cluster up itself when none runs (and tears it down again
// afterwards, leaving the machine clean); a cluster that already ran is kept.
//
//	sudo go test ./... -count=1 -timeout 60m        # from test/e2e
//	STOWAGE_E2E_DATA_DIR=/var/lib/stowage           # the cluster's data dir (default)
//	STOWAGE_E2E_KEEP=1                              # keep a cluster this run started
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stowage-io/stowage/pkg/loopdev"
)

var (
	repoRoot   string
	stowageBin string
	kubectlBin string
	dataDir    string
	kubeconfig string
	apiSocket  string
	kube       *kubernetes.Clientset
	restCfg    *rest.Config
	dyn        *dynamic.DynamicClient
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	if os.Geteuid() != 0 {
		// Not a silent "ok": a run that tested nothing must not pass.
		fmt.Println("e2e: FAIL: not run: the end-to-end suite needs root (it runs a local Kubernetes with loop devices and mounts); run it as root, e.g. `bash hack/test.sh`")
		return 1
	}
	var err error
	if repoRoot, err = filepath.Abs("../.."); err != nil {
		fmt.Println("e2e:", err)
		return 1
	}
	dataDir = envOr("STOWAGE_E2E_DATA_DIR", "/var/lib/stowage")
	kubeconfig = filepath.Join(dataDir, "kubeconfig", "admin.kubeconfig")
	apiSocket = "unix://" + filepath.Join(dataDir, "run", "stowage-api.sock")
	stowageBin = filepath.Join(repoRoot, "bin", "stowage")
	kubectlBin = filepath.Join(repoRoot, "_output", "bin", "kubectl")

	step("building bin/stowage")
	if out, err := command(repoRoot, "go", "build", "-o", stowageBin, "./cmd/stowage").CombinedOutput(); err != nil {
		fmt.Printf("e2e: build stowage: %v\n%s", err, out)
		return 1
	}
	startedHere := false
	if err := exec.Command(stowageBin, "status", "--data-dir", dataDir).Run(); err != nil {
		step("no cluster runs: stowage up (components from hack/build-components.sh)")
		if out, err := command(repoRoot, "bash", "hack/build-components.sh").CombinedOutput(); err != nil {
			fmt.Printf("e2e: build components: %v\n%s", err, tail(out))
			return 1
		}
		startedHere = true
		up := exec.Command(stowageBin, "up", "--data-dir", dataDir)
		up.Stdout, up.Stderr = os.Stdout, os.Stderr
		if err := up.Run(); err != nil {
			fmt.Println("e2e: stowage up:", err)
			down()
			return 1
		}
	}
	if startedHere && os.Getenv("STOWAGE_E2E_KEEP") != "1" {
		defer func() {
			// The machine must be left clean: a failed down fails the run,
			// and so does anything of the cluster's left in the kernel.
			if err := down(); err != nil {
				fmt.Println("e2e: FAIL: stowage down:", err)
				code = 1
			}
			if left := leftovers(); left != "" {
				fmt.Println("e2e: FAIL: left behind after stowage down:\n" + left)
				code = 1
			}
		}()
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Println("e2e: kubeconfig:", err)
		return 1
	}
	cfg.QPS, cfg.Burst = 50, 100
	restCfg = cfg
	kube = kubernetes.NewForConfigOrDie(cfg)
	dyn = dynamic.NewForConfigOrDie(cfg)
	code = m.Run()
	// No log line, error or argument list may hold a token or a value.
	if found := checkLogsHoldNoSecrets(); found != "" {
		fmt.Println("e2e: FAIL: secrets where they must never be:\n" + found)
		code = 1
	}
	return code
}

func down() error {
	step("stowage down --wipe (this run started the cluster)")
	d := exec.Command(stowageBin, "down", "--wipe", "--data-dir", dataDir)
	d.Stdout, d.Stderr = os.Stdout, os.Stderr
	return d.Run()
}

// leftovers lists loop devices backed by files under the data directory
// and mounts under it, one per line.
func leftovers() string {
	var b strings.Builder
	loops, _ := loopdev.Under(dataDir)
	for _, l := range loops {
		deleted := ""
		if l.Deleted {
			deleted = " (deleted)"
		}
		fmt.Fprintf(&b, "loop device %s: %s%s\n", filepath.Base(l.Path), l.BackingFile, deleted)
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dataDir+"/") {
			fmt.Fprintf(&b, "mount %s (%s)\n", f[1], f[0])
		}
	}
	return b.String()
}

func step(msg string) { fmt.Printf("e2e %s: %s\n", time.Now().Format("15:04:05"), msg) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func command(dir, name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Dir = dir
	return c
}

func tail(b []byte) string {
	s := string(b)
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

// kubectl runs the cluster's kubectl and returns its output.
func kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kubectlErr(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		// Callers print the output on failure: give them both streams.
		return strings.TrimSpace(string(out) + "\n" + stderr.String()), err
	}
	return strings.TrimSpace(string(out)), nil
}

// stowage runs the Stowage CLI against the cluster's Stowage server.
func stowage(args ...string) (string, int) {
	c := exec.Command(stowageBin, append(args, "--endpoint", apiSocket)...)
	out, err := c.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return strings.TrimSpace(string(out)), code
}
