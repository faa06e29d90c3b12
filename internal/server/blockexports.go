package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/blockexport"
	"github.com/stowage-io/stowage/internal/handoff"
	"github.com/stowage-io/stowage/internal/store"
)

// BlockExporter exports the volumes of one pool over the network (NBD) to
// nodes other than the pool's own: LocalBlockExporter when the pool is in
// this process, the agent API for a storage host of its own. It is told
// volume ids, never paths: the storage host knows where its images are.
type BlockExporter interface {
	// Address is the host:port nodes reach the exports at.
	Address() string
	// Export declares an attachment's export; again with the same
	// parameters it succeeds (new limits apply). A higher generation of
	// the volume fences every lower one before Export returns.
	Export(ctx context.Context, e BlockExport) error
	// Unexport ends an attachment's export; a missing one is success.
	Unexport(ctx context.Context, attachmentID string) error
	// Refresh makes the volume's exports serve the size its image has now,
	// after it grew, to new opens and to connections already open. A
	// volume with no exports is success.
	Refresh(ctx context.Context, volumeID string) error
}

// BlockExport is one attachment's export.
type BlockExport struct {
	AttachmentID string // the NBD export name
	VolumeID     string
	Generation   uint64
	Secret       string // what the node presents; never logged
	ReadOnly     bool
	// Limits are the volume's provisioned IOPS and bytes per second
	// (zero: unlimited), enforced by the exporter.
	IOPS, BytesPerSecond int64
}

// LocalBlockExporter serves a pool of this process through a
// blockexport.Exporter listening at Addr.
type LocalBlockExporter struct {
	Exporter *blockexport.Exporter
	Pool     LocalPool
	Addr     string
}

func (l LocalBlockExporter) Address() string { return l.Addr }

// Forget drops what the exporter keeps of a deleted volume.
func (l LocalBlockExporter) Forget(volumeID string) { l.Exporter.Forget(volumeID) }

// volumeForgetter is an exporter in this process, which keeps a record
// per volume until told the volume is gone (an agent's forgets when its
// image is deleted through the agent API).
type volumeForgetter interface{ Forget(volumeID string) }

func (l LocalBlockExporter) Export(ctx context.Context, e BlockExport) error {
	if e.VolumeID == "" {
		return fmt.Errorf("export attachment %s: no volume", e.AttachmentID)
	}
	return l.Exporter.Export(ctx, blockexport.Attachment{
		ID: e.AttachmentID, VolumeID: e.VolumeID, ImagePath: l.Pool.ImagePath(e.VolumeID),
		Generation: e.Generation, Secret: e.Secret, ReadOnly: e.ReadOnly,
		Limits: blockexport.Limits{IOPS: e.IOPS, BytesPerSecond: e.BytesPerSecond},
	})
}

func (l LocalBlockExporter) Unexport(ctx context.Context, attachmentID string) error {
	return l.Exporter.Unexport(ctx, attachmentID)
}

func (l LocalBlockExporter) Refresh(ctx context.Context, volumeID string) error {
	return l.Exporter.Resize(ctx, volumeID)
}

// exportAddress is where the pool's volumes are exported; empty when it
// has no exporter.
func (s *Server) exportAddress(pool string) string {
	if e, ok := s.pools.exporter(pool); ok {
		return e.Address()
	}
	return ""
}

func (s *Server) volumeProto(v *volumeRecord) *pb.Volume {
	return v.toProto(s.exportAddress(v.Pool))
}

func (s *Server) attachmentProto(v *volumeRecord, a attachmentRecord) *pb.Attachment {
	return v.attachmentProto(a, s.exportAddress(v.Pool))
}

// newNetworkAttachment gives a an export of its own, a secret and a
// generation: one more than the volume's last, so that the storage host
// fences every attachment before it, or the same as the attachments it
// shares a multi-attach volume with.
func (s *Server) newNetworkAttachment(v *volumeRecord, a *attachmentRecord) error {
	shared := false
	for _, o := range v.Attachments {
		if o.network() && o.Generation == v.AttachGeneration {
			shared = true
		}
	}
	if !shared || !v.MultiAttach {
		v.AttachGeneration++
	}
	a.Generation = v.AttachGeneration
	a.ExportName = fmt.Sprintf("%s.g%d.%s", v.ID, a.Generation, a.NodeID)
	return s.setAttachmentSecret(v.ID, a)
}

// attachmentSecretPurpose binds sealed attachment secrets (kms.SealInternal).
const attachmentSecretPurpose = "attachment-secret"

// attachmentAAD binds a sealed secret to its attachment: a sealed secret
// copied into another attachment's record does not open.
func attachmentAAD(volumeID string, a attachmentRecord) []byte {
	return fmt.Appendf(nil, "volume=%s node=%s export=%s target=%s generation=%d", volumeID, a.NodeID, a.ExportName, a.LocalTarget, a.Generation)
}

// setAttachmentSecret gives a a new secret, stored sealed by the KMS
// master key, so that a copy of the metadata store (an etcd backup) does
// not hold what opens the volume's export. A server without a KMS keeps
// it in the clear.
func (s *Server) setAttachmentSecret(volumeID string, a *attachmentRecord) error {
	secret := blockexport.NewSecret()
	if s.kms == nil {
		a.Secret, a.SealedSecret = secret, nil
		return nil
	}
	sealed, err := s.kms.SealInternal(attachmentSecretPurpose, []byte(secret), attachmentAAD(volumeID, *a))
	if err != nil {
		return status.Errorf(codes.Internal, "seal the attachment secret of volume %s for node %s: %v", volumeID, a.NodeID, err)
	}
	a.Secret, a.SealedSecret = "", sealed
	return nil
}

// attachmentSecret is a's secret in the clear.
func (s *Server) attachmentSecret(volumeID string, a attachmentRecord) (string, error) {
	if len(a.SealedSecret) == 0 {
		return a.Secret, nil
	}
	if s.kms == nil {
		return "", status.Errorf(codes.FailedPrecondition,
			"the attachment secret of volume %s for node %s is sealed by a KMS master key, and this server runs without a KMS", volumeID, a.NodeID)
	}
	p, err := s.kms.OpenInternal(attachmentSecretPurpose, a.SealedSecret, attachmentAAD(volumeID, a))
	if err != nil {
		return "", status.Errorf(codes.FailedPrecondition,
			"the attachment secret of volume %s for node %s does not open with this server's KMS master key (%v): is its <data-dir>/kms/master.key the one the other servers use? Detaching and attaching the volume again gives the attachment a new secret", volumeID, a.NodeID, err)
	}
	return string(p), nil
}

// export declares a network attachment's export with the volume's limits;
// a local attachment needs none.
func (s *Server) export(ctx context.Context, v *volumeRecord, a attachmentRecord) error {
	if !a.network() {
		return nil
	}
	e, ok := s.pools.exporter(v.Pool)
	if !ok {
		if err := s.hosts.notConnected(v.Pool); err != nil {
			return err
		}
		return status.Errorf(codes.FailedPrecondition,
			"volume %s is attached to node %s over the network, but its pool %s has no exporter on this server (was it started without --nbd-listen?)", v.ID, a.NodeID, v.Pool)
	}
	secret, err := s.attachmentSecret(v.ID, a)
	if err != nil {
		return err
	}
	err = e.Export(ctx, BlockExport{AttachmentID: a.ExportName, VolumeID: v.ID, Generation: a.Generation, Secret: secret,
		ReadOnly: a.ReadOnly, IOPS: v.IOPS, BytesPerSecond: v.Throughput << 20})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, blockexport.ErrStaleGeneration):
		return status.Errorf(codes.FailedPrecondition, "volume %s: the attachment to node %s (generation %d) was fenced by a newer one: %v", v.ID, a.NodeID, a.Generation, err)
	}
	return status.Errorf(codes.Unavailable, "volume %s: the storage host of pool %s (node %s, NBD at %s) could not export it to node %s: %v",
		v.ID, v.Pool, s.pools.get(v.Pool).Node(), e.Address(), a.NodeID, err)
}

// unexport ends a network attachment's export.
func (s *Server) unexport(v *volumeRecord, a attachmentRecord) error {
	e, ok := s.pools.exporter(v.Pool)
	if !a.network() || !ok {
		return nil
	}
	if err := e.Unexport(context.Background(), a.ExportName); err != nil {
		return status.Errorf(codes.Unavailable, "volume %s: the storage host of pool %s (NBD at %s) could not end the export to node %s: %v",
			v.ID, v.Pool, e.Address(), a.NodeID, err)
	}
	return nil
}

// refreshExports makes the exports of v's network attachments serve its
// image's size now (after a grow); with none it does nothing.
func (s *Server) refreshExports(ctx context.Context, v *volumeRecord) error {
	e, ok := s.pools.exporter(v.Pool)
	if !ok || !slices.ContainsFunc(v.Attachments, attachmentRecord.network) {
		return nil
	}
	if err := e.Refresh(ctx, v.ID); err != nil {
		return status.Errorf(codes.Unavailable, "volume %s: its image grew, but the storage host of pool %s (node %s, NBD at %s) could not make its exports serve the new size: %v",
			v.ID, v.Pool, s.pools.get(v.Pool).Node(), e.Address(), err)
	}
	return nil
}

// reexport declares again the exports of every network attachment (an
// exporter keeps no state across restarts). A failure is logged and left
// to the next publish of that attachment, which declares it again.
func (s *Server) reexport(ctx context.Context, volumes []volumeRecord) {
	for i := range volumes {
		v := &volumes[i]
		for _, a := range v.Attachments {
			if !a.network() {
				continue
			}
			if err := s.export(ctx, v, a); err != nil {
				s.log.Error("reconcile: could not export a network attachment again", "volume", v.ID, "node", a.NodeID, "export", a.ExportName, "err", err)
				continue
			}
			s.log.Info("reconcile: network attachment exported again", "volume", v.ID, "node", a.NodeID, "export", a.ExportName, "generation", a.Generation)
		}
	}
}

// GetAttachmentSecret gives a node the secret of its own network
// attachment of a volume, and nobody else.
func (s *Server) GetAttachmentSecret(ctx context.Context, req *pb.GetAttachmentSecretRequest) (*pb.AttachmentSecret, error) {
	node, err := s.callerNode(ctx, req.NodeId, "volume:GetAttachmentSecret", "the attachment secret of volume "+req.VolumeId)
	if err != nil {
		return nil, err
	}
	if req.VolumeId == "" || node == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and node id are required")
	}
	v, err := s.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	a, ok := v.attachment(node)
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "volume %s is not attached to node %s, so that node may not have its attachment secret", v.ID, node)
	}
	if !a.network() && a.LocalTarget == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is attached to node %s locally by a server older than the local handoff, without a secret; ControllerPublishVolume again (the attacher retries it) gives it one", v.ID, node)
	}
	secret, err := s.attachmentSecret(v.ID, a)
	if err != nil {
		return nil, err
	}
	return &pb.AttachmentSecret{VolumeId: v.ID, NodeId: node, ExportName: a.ExportName, Generation: a.Generation, LocalTarget: a.LocalTarget, Secret: secret}, nil
}

// newLocalAttachment gives a local attachment of volume volumeID its
// opaque target and the secret its node presents to the local handoff.
func (s *Server) newLocalAttachment(volumeID string, a *attachmentRecord) error {
	a.LocalTarget = newID("lat")
	return s.setAttachmentSecret(volumeID, a)
}

// OpenLocalImage is the local handoff's authorization (handoff.Opener):
// it opens the image of r's attachment when r names a local attachment
// of the volume to r's node, that node is the one of the volume's pool
// (this machine: the pool is in this process), and r carries the
// attachment's secret. The image is opened read-only for a read-only
// attachment. The handoff has checked already that the caller is root.
func (s *Server) OpenLocalImage(ctx context.Context, r handoff.Request) (*os.File, bool, error) {
	if r.VolumeID == "" || r.NodeID == "" || r.Target == "" {
		return nil, false, status.Error(codes.InvalidArgument, "local handoff: volume id, node id and local target are required")
	}
	v, err := s.getVolume(ctx, r.VolumeID)
	if err != nil {
		return nil, false, err
	}
	a, ok := v.attachment(r.NodeID)
	if !ok {
		return nil, false, status.Errorf(codes.PermissionDenied, "local handoff: volume %s is not attached to node %s (attached to: %s)", v.ID, r.NodeID, strings.Join(v.attachedNodes(), ", "))
	}
	if a.network() {
		return nil, false, status.Errorf(codes.FailedPrecondition, "local handoff: volume %s is attached to node %s over the network (NBD export %s), not locally; attach its export", v.ID, r.NodeID, a.ExportName)
	}
	if a.LocalTarget == "" || a.LocalTarget != r.Target {
		return nil, false, status.Errorf(codes.NotFound, "local handoff: volume %s has no local attachment %s to node %s (it may have been detached and attached again); stage it again", v.ID, r.Target, r.NodeID)
	}
	p, ok := s.pools.get(v.Pool).(LocalPool)
	if !ok {
		return nil, false, status.Errorf(codes.FailedPrecondition, "local handoff: volume %s is in pool %s, which is not in this server's process", v.ID, v.Pool)
	}
	if p.Node() != r.NodeID {
		return nil, false, status.Errorf(codes.PermissionDenied, "local handoff: volume %s is stored on node %s, not on node %s: only the node of its pool gets its image", v.ID, p.Node(), r.NodeID)
	}
	secret, err := s.attachmentSecret(v.ID, a)
	if err != nil {
		return nil, false, err
	}
	if subtle.ConstantTimeCompare([]byte(r.Secret), []byte(secret)) != 1 {
		return nil, false, status.Errorf(codes.PermissionDenied, "local handoff: the secret given for volume %s on node %s is not its attachment's", v.ID, r.NodeID)
	}
	f, err := p.OpenImage(v.ID, a.ReadOnly)
	if err != nil {
		return nil, false, s.poolError(err, v.Pool, "local handoff: open the image of volume %s", v.ID)
	}
	return f, a.ReadOnly, nil
}

// DefaultReexportInterval is how often the server declares every network
// attachment's export again.
const DefaultReexportInterval = 3 * time.Second

// unreachablePrefix starts the state reason of a volume whose storage host
// could not export an attachment of it.
const unreachablePrefix = "storage host unreachable: "

// StartReexports declares every network attachment's export again every
// interval until stop: a storage host that restarted (its exporter keeps
// no state) serves its attachments again within one interval, and the
// nodes' clients, which retry an export that is not there, reconnect. A
// volume whose storage host cannot be reached says so in its state
// reason until it can.
func (s *Server) StartReexports(ctx context.Context, interval time.Duration) (stop func()) {
	if !s.pools.anyExporter() && s.storageHosts == nil {
		return func() {}
	}
	if interval <= 0 {
		interval = DefaultReexportInterval
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.reexportAll(ctx)
			}
		}
	}()
	return func() { cancel(); <-done }
}

func (s *Server) reexportAll(ctx context.Context) {
	var volumes []volumeRecord
	err := s.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(bucketVolumes, "", "", func(_ string, value []byte) error {
			var v volumeRecord
			if err := json.Unmarshal(value, &v); err != nil {
				return err
			}
			for _, a := range v.Attachments {
				if a.network() {
					volumes = append(volumes, v)
					break
				}
			}
			return nil
		})
	})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("re-export: read volumes", "err", err)
		}
		return
	}
	for i := range volumes {
		v := &volumes[i]
		var failed error
		for _, a := range v.Attachments {
			if err := s.export(ctx, v, a); err != nil {
				failed = err
			}
		}
		reason := ""
		if failed != nil {
			reason = unreachablePrefix + status.Convert(failed).Message()
		}
		if was := strings.HasPrefix(v.StateReason, unreachablePrefix); (failed != nil) != was || (failed != nil && reason != v.StateReason) {
			s.setUnreachable(ctx, v.ID, reason)
		}
	}
}

// setUnreachable records (or, with reason "", clears) that a volume's
// storage host cannot export its attachments.
func (s *Server) setUnreachable(ctx context.Context, id, reason string) {
	v, unlock, err := s.lockVolume(ctx, id)
	if err != nil {
		return // busy or gone: the next round sees it
	}
	defer unlock()
	if reason == "" && !strings.HasPrefix(v.StateReason, unreachablePrefix) {
		return
	}
	v.StateReason = reason
	if err := s.putVolume(ctx, v); err != nil {
		return
	}
	if reason != "" {
		s.log.Error("network attachments of a volume cannot be exported: its storage host is unreachable", "volume", v.ID, "pool", v.Pool, "reason", reason)
	} else {
		s.log.Info("network attachments of a volume exported again: its storage host is back", "volume", v.ID, "pool", v.Pool)
	}
}
