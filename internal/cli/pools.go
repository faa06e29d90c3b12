package cli

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/stowage-io/stowage/internal/agent"
	"github.com/stowage-io/stowage/internal/files"
)

// openBlockPool opens the block pool of spec, for the server's in-process
// pools and for `stowage agent` alike. With a size, spec.dir is first made
// an xfs-with-reflink file system on a loop-mounted image; mounted says
// whether this call mounted it (also when Open then fails), so that the
// caller unmounts it when it stops (unmountPools).
func openBlockPool(ctx context.Context, spec poolSpec, keepTmp bool, log *slog.Logger) (p *agent.Pool, mounted bool, err error) {
	if spec.size > 0 {
		if mounted, err = agent.MountImageFS(ctx, spec.dir, spec.dir+".img", spec.size); err != nil {
			return nil, false, fmt.Errorf("pool %s: %w", spec.name, err)
		}
	}
	p, err = agent.Open(agent.Config{Dir: spec.dir, Zone: spec.zone, Node: spec.node, KeepTmp: keepTmp})
	if err != nil {
		return nil, mounted, fmt.Errorf("pool %s: %w", spec.name, err)
	}
	log.Info("storage pool ready", "pool", spec.name, "dir", spec.dir, "zone", spec.zone, "node", spec.node, "cloneMode", p.CloneMode())
	return p, mounted, nil
}

// openFilePool opens (making and mounting it first when spec has a size:
// a btrfs image, whose quota groups give access points quotas) the
// file-tree pool of spec. mounted says whether this call mounted it.
func openFilePool(ctx context.Context, spec poolSpec, log *slog.Logger) (t *files.Tree, mounted bool, err error) {
	if spec.size > 0 {
		if mounted, err = agent.MountBtrfsImageFS(ctx, spec.dir, spec.dir+".img", spec.size); err != nil {
			return nil, false, fmt.Errorf("file-tree pool %s: %w", spec.name, err)
		}
	}
	t, err = files.Open(files.Config{Dir: spec.dir, Zone: spec.zone, Node: spec.node})
	if err != nil {
		return nil, mounted, fmt.Errorf("file-tree pool %s: %w", spec.name, err)
	}
	log.Info("file-tree pool ready", "pool", spec.name, "dir", spec.dir, "zone", spec.zone, "node", spec.node, "quotas", t.Quotas())
	return t, mounted, nil
}

// unmountPools unmounts the pool file systems a process mounted, so that a
// stopped server or agent leaves no mount behind.
func unmountPools(log *slog.Logger, mounted []poolSpec) {
	for _, spec := range mounted {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := agent.UnmountImageFS(ctx, spec.dir, spec.dir+".img"); err != nil {
			log.Error("could not unmount pool file system (are volumes still attached?)", "pool", spec.name, "dir", spec.dir, "err", err)
		}
		cancel()
	}
}

// keyValues reads the value s of a flag like --pool: key=value pairs
// separated by commas, of the given keys only.
func keyValues(flag, s string, keys ...string) (map[string]string, error) {
	kvs := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return nil, usageErrorf("%s %q: %q is not key=value (keys: %s)", flag, s, kv, strings.Join(keys, ", "))
		}
		if !slices.Contains(keys, k) {
			return nil, usageErrorf("%s %q: unknown key %q (keys: %s)", flag, s, k, strings.Join(keys, ", "))
		}
		kvs[k] = v
	}
	return kvs, nil
}
