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
//	STOWAGE_E2E_INSTALL=chart                       # the drivers as the Helm chart's pods
//	                                                # (stowage up --install=chart)
//
// With STOWAGE_E2E_INSTALL=chart, CI runs the block scenarios and the
// chart's own tests (hack/test.sh names them); the tests that stop or read
// the drivers' host processes skip, saying so.
package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stowage-io/stowage/test/e2e/harness"
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
	cluster    *harness.Cluster
	// chartInstall: the drivers are the chart's pods (STOWAGE_E2E_INSTALL=chart).
	chartInstall bool
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	var err error
	if repoRoot, err = filepath.Abs("../.."); err != nil {
		fmt.Println("e2e:", err)
		return 1
	}
	dataDir = envOr("STOWAGE_E2E_DATA_DIR", "/var/lib/stowage")
	cluster = harness.New("e2e", repoRoot, dataDir)
	kubeconfig, apiSocket, stowageBin, kubectlBin = cluster.Kubeconfig, cluster.APISocket, cluster.Stowage, cluster.Kubectl
	var upArgs []string
	switch v := os.Getenv("STOWAGE_E2E_INSTALL"); v {
	case "", "processes":
	case "chart":
		chartInstall = true
		upArgs = append(upArgs, "--install=chart")
	default:
		fmt.Printf("e2e: FAIL: STOWAGE_E2E_INSTALL=%q: want chart or processes\n", v)
		return 1
	}
	// A running cluster is used only when it was installed the same way.
	sameInstall := func() error {
		b, err := os.ReadFile(filepath.Join(dataDir, "cluster.json"))
		if err != nil {
			return err
		}
		var c struct {
			Install string `json:"install"`
		}
		if err := json.Unmarshal(b, &c); err != nil {
			return err
		}
		if (c.Install == "chart") != chartInstall {
			return fmt.Errorf("the cluster that runs from %s has install %q, and this run wants STOWAGE_E2E_INSTALL=%q: `stowage down` it first", dataDir, c.Install, os.Getenv("STOWAGE_E2E_INSTALL"))
		}
		return nil
	}
	// Not a silent "ok": a run that tested nothing must not pass.
	if err := cluster.Setup(sameInstall, upArgs...); err != nil {
		fmt.Println("e2e: FAIL:", err)
		return 1
	}
	defer func() {
		// The machine must be left clean: a failed down fails the run,
		// and so does anything of the cluster's left in the kernel.
		if problems := cluster.Teardown(); problems != "" {
			fmt.Println("e2e: FAIL: " + problems)
			code = 1
		}
	}()

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

func step(msg string) { cluster.Step(msg) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
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
	return cluster.KubectlErr(stdin, args...)
}

// stowage runs the Stowage CLI against the cluster's Stowage server.
func stowage(args ...string) (string, int) {
	out, err := cluster.StowageCmd(args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return strings.TrimSpace(string(out)), code
}
