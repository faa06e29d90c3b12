// Command e2eimages builds the images the Kubernetes external storage suite
// runs its pods from (internal/cluster.E2EImages) and imports them into the
// containerd of every node of a running `stowage up` cluster, under the names
// e2e.test asks for. hack/e2e-images.sh builds agnhost and runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/stowage-io/stowage/internal/cluster"
)

func main() {
	dataDir := flag.String("data-dir", cluster.DefaultDataDir, "the cluster's data directory (stowage up --data-dir)")
	busybox := flag.String("busybox", "/bin/busybox", "a static busybox (Debian busybox-static)")
	agnhost := flag.String("agnhost", "", "a static agnhost binary (required)")
	dd := flag.String("dd", "/bin/dd", "GNU coreutils dd")
	dash := flag.String("dash", "/bin/dash", "dash")
	flag.Parse()
	if *agnhost == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: e2eimages --agnhost PATH [--data-dir DIR] [--busybox PATH] [--dd PATH] [--dash PATH]")
		os.Exit(2)
	}
	if err := run(*dataDir, cluster.E2EImageSources{Busybox: *busybox, Agnhost: *agnhost, DD: *dd, Dash: *dash}); err != nil {
		fmt.Fprintln(os.Stderr, "e2eimages:", err)
		os.Exit(1)
	}
}

func run(dataDir string, src cluster.E2EImageSources) error {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return fmt.Errorf("ctr (Debian containerd) is not on PATH: %w", err)
	}
	l := cluster.Layout(dataDir)
	// Every node has a containerd of its own (stowage up --nodes): a pod
	// finds its image only in its node's. A data directory without
	// cluster.json has at most the machine's.
	sockets := []string{l.ContainerdSocket()}
	if c, err := cluster.LoadConfig(dataDir); err == nil {
		sockets = c.ContainerdSockets()
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, socket := range sockets {
		if _, err := os.Stat(socket); err != nil {
			return fmt.Errorf("no containerd socket at %s: is the cluster up (stowage up --data-dir %s)?", socket, dataDir)
		}
	}
	imgs, err := cluster.E2EImages(src)
	if err != nil {
		return err
	}
	// The nodes' containerds import at once (ImportImage writes one archive
	// per socket), as `stowage up` does with its own images.
	ctx := context.Background()
	lines := make([][]string, len(sockets))
	errs := make([]error, len(sockets))
	var wg sync.WaitGroup
	for i, socket := range sockets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, img := range imgs {
				imported, err := cluster.ImportImage(ctx, ctr, socket, filepath.Join(l.Images(), "e2e"), img)
				if err != nil {
					errs[i] = fmt.Errorf("%s: %w", socket, err)
					return
				}
				state := "already imported"
				if imported {
					state = "imported"
				}
				where := ""
				if len(sockets) > 1 {
					where = " (" + socket + ")"
				}
				lines[i] = append(lines[i], fmt.Sprintf("%-60s %s%s", img.Name, state, where))
			}
		}()
	}
	wg.Wait()
	for _, ls := range lines {
		for _, line := range ls {
			fmt.Println(line)
		}
	}
	return errors.Join(errs...)
}
