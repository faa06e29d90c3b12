// Command e2eimages builds the images the Kubernetes external storage suite
// runs its pods from (internal/cluster.E2EImages) and imports them into the
// containerd of a running `stowage up` cluster, under the names e2e.test asks
// for. hack/e2e-images.sh builds agnhost and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

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
	socket := l.ContainerdSocket()
	if _, err := os.Stat(socket); err != nil {
		return fmt.Errorf("no containerd socket at %s: is the cluster up (stowage up --data-dir %s)?", socket, dataDir)
	}
	imgs, err := cluster.E2EImages(src)
	if err != nil {
		return err
	}
	ctx := context.Background()
	for _, img := range imgs {
		imported, err := cluster.ImportImage(ctx, ctr, socket, filepath.Join(l.Images(), "e2e"), img)
		if err != nil {
			return err
		}
		state := "already imported"
		if imported {
			state = "imported"
		}
		fmt.Printf("%-60s %s\n", img.Name, state)
	}
	return nil
}
