package server

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/stowage-io/stowage/internal/store"
)

// Reconcile makes the pools and the metadata agree after a crash: it removes
// images that no record knows about, which is what a crash in a volume
// create (image made, not yet recorded) or delete (record removed, image
// not yet) leaves; temp files of images being made are removed earlier, by
// agent.Open. Records in state creating or deleting, which servers before
// the image-first write order left, are removed with their images.
// Snapshots whose create or delete did not finish are removed too; then the
// same for file systems and access points (reconcileFiles). Run it before
// serving: an image being made by a running create has no record yet.
func (s *Server) Reconcile(ctx context.Context) error {
	var volumes []volumeRecord
	var snapshots []snapshotRecord
	err := s.store.View(ctx, func(tx store.Tx) error {
		if err := tx.Scan(bucketVolumes, "", "", func(key string, value []byte) error {
			var v volumeRecord
			if err := json.Unmarshal(value, &v); err != nil {
				return fmt.Errorf("volume %s: %w", key, err)
			}
			volumes = append(volumes, v)
			return nil
		}); err != nil {
			return err
		}
		return tx.Scan(bucketSnapshots, "", "", func(key string, value []byte) error {
			var sn snapshotRecord
			if err := json.Unmarshal(value, &sn); err != nil {
				return fmt.Errorf("snapshot %s: %w", key, err)
			}
			snapshots = append(snapshots, sn)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("reconcile: read metadata: %w", err)
	}

	knownVolumes := map[string]map[string]bool{}
	knownSnapshots := map[string]map[string]bool{}
	for _, name := range s.pools.list() {
		knownVolumes[name] = map[string]bool{}
		knownSnapshots[name] = map[string]bool{}
	}
	for i := range volumes {
		v := &volumes[i]
		switch v.State {
		case StateCreating:
			// Only a server before the image-first write order leaves these.
			s.log.Warn("reconcile: rolling back a create that did not finish", "volume", v.ID, "name", v.Name)
			if err := s.deleteVolume(ctx, v); err != nil {
				return fmt.Errorf("reconcile: roll back volume %s: %w", v.ID, err)
			}
			continue
		case StateDeleting:
			s.log.Warn("reconcile: finishing a delete that did not finish", "volume", v.ID)
			if err := s.deleteVolume(ctx, v); err != nil {
				return fmt.Errorf("reconcile: delete volume %s: %w", v.ID, err)
			}
			continue
		}
		if m, ok := knownVolumes[v.Pool]; ok {
			m[v.ID] = true
			if _, err := s.pools.get(v.Pool).ImageSize(v.ID); err != nil && v.State != StateError {
				s.log.Error("reconcile: volume image is missing", "volume", v.ID, "pool", v.Pool, "err", err)
				v.State, v.StateReason = StateError, fmt.Sprintf("image missing from pool %s: %v", v.Pool, err)
				if err := s.putVolume(ctx, v); err != nil {
					return err
				}
			}
		}
	}
	for i := range snapshots {
		sn := &snapshots[i]
		if sn.State == SnapshotPending || sn.State == SnapshotDeleting {
			s.log.Warn("reconcile: removing a snapshot that did not finish", "snapshot", sn.ID, "state", sn.State.Word())
			if err := s.deleteSnapshot(ctx, sn); err != nil {
				return fmt.Errorf("reconcile: snapshot %s: %w", sn.ID, err)
			}
			continue
		}
		if m, ok := knownSnapshots[sn.Pool]; ok {
			m[sn.ID] = true
		}
	}

	for _, name := range s.pools.list() {
		p := s.pools.get(name)
		images, err := p.ListImages()
		if err != nil {
			return fmt.Errorf("reconcile: list images of pool %s: %w", name, err)
		}
		for _, id := range images {
			if !knownVolumes[name][id] {
				s.log.Warn("reconcile: removing orphaned image", "pool", name, "volume", id)
				if err := p.DeleteImage(ctx, id); err != nil {
					return fmt.Errorf("reconcile: remove orphaned image %s: %w", id, err)
				}
			}
		}
		snaps, err := p.ListSnapshots()
		if err != nil {
			return fmt.Errorf("reconcile: list snapshots of pool %s: %w", name, err)
		}
		for _, id := range snaps {
			if !knownSnapshots[name][id] {
				s.log.Warn("reconcile: removing orphaned snapshot image", "pool", name, "snapshot", id)
				if err := p.DeleteSnapshot(ctx, id); err != nil {
					return fmt.Errorf("reconcile: remove orphaned snapshot %s: %w", id, err)
				}
			}
		}
	}
	s.reexport(ctx, volumes)
	return s.reconcileFiles(ctx)
}
