package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// kubectl runs the built kubectl as the cluster admin.
type kubectl struct {
	bin, kubeconfig string
}

func (c *Config) kubectl() kubectl {
	return kubectl{bin: filepath.Join(c.BinDir, "kubectl"), kubeconfig: c.Layout().AdminKubeconfig()}
}

func (k kubectl) run(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, k.bin, append([]string{"--kubeconfig=" + k.kubeconfig, "--request-timeout=20s"}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()+out.String()))
	}
	return out.String(), nil
}

// get returns a jsonpath of an object, "" when it does not exist.
func (k kubectl) get(ctx context.Context, jsonpath string, args ...string) (string, error) {
	out, err := k.run(ctx, nil, append(append([]string{"get"}, args...), "--ignore-not-found", "-o", "jsonpath="+jsonpath)...)
	return strings.TrimSpace(out), err
}

// poll calls cond every interval until it returns true, an error that is
// not transient, or timeout. The last transient error is reported on
// timeout.
func poll(ctx context.Context, timeout, interval time.Duration, what string, cond func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if ok && err == nil {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("timed out after %s waiting for %s: %w", timeout, what, last)
			}
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		case <-time.After(interval):
		}
	}
}
