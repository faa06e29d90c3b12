package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/block"
	"github.com/stowage-io/stowage/internal/store"
)

// Buckets of the metadata store.
const (
	bucketVolumes       = "volumes"
	bucketVolumeNames   = "volume-names"
	bucketSnapshots     = "snapshots"
	bucketSnapshotNames = "snapshot-names"
	bucketNodes         = "nodes"
)

// Volume states, as EBS names them; the list is the proto's, and records
// store their words ("in-use").
const (
	StateCreating  = pb.VolumeState_VOLUME_STATE_CREATING
	StateAvailable = pb.VolumeState_VOLUME_STATE_AVAILABLE
	StateInUse     = pb.VolumeState_VOLUME_STATE_IN_USE
	StateDeleting  = pb.VolumeState_VOLUME_STATE_DELETING
	StateError     = pb.VolumeState_VOLUME_STATE_ERROR
)

// Snapshot states.
const (
	SnapshotPending   = pb.SnapshotState_SNAPSHOT_STATE_PENDING
	SnapshotCompleted = pb.SnapshotState_SNAPSHOT_STATE_COMPLETED
	SnapshotDeleting  = pb.SnapshotState_SNAPSHOT_STATE_DELETING
)

// volumeRecord is a volume as the store keeps it.
type volumeRecord struct {
	ID             string            `json:"id"`
	Name           string            `json:"name,omitempty"`
	RequestKey     string            `json:"requestKey,omitempty"`
	Pool           string            `json:"pool"`
	Zone           string            `json:"zone"`
	Node           string            `json:"node"`
	SizeGiB        int64             `json:"sizeGiB"`
	Type           string            `json:"type"`
	IOPS           int64             `json:"iops"`
	Throughput     int64             `json:"throughputMiBps"`
	State          pb.VolumeState    `json:"state"`
	StateReason    string            `json:"stateReason,omitempty"`
	Tags           map[string]string `json:"tags,omitempty"`
	SnapshotID     string            `json:"snapshotId,omitempty"`
	SourceVolumeID string            `json:"sourceVolumeId,omitempty"`
	MultiAttach    bool              `json:"multiAttach,omitempty"`
	Encryption
	Attachments []attachmentRecord `json:"attachments,omitempty"`
	// AttachGeneration is the generation of the newest network attachment;
	// each new one (but a second of a multi-attach volume) gets one more.
	AttachGeneration uint64    `json:"attachGeneration,omitempty"`
	Created          time.Time `json:"created"`
}

type attachmentRecord struct {
	NodeID   string    `json:"nodeId"`
	ReadOnly bool      `json:"readOnly,omitempty"`
	Attached time.Time `json:"attached"`
	// A network attachment (the node is not the storage host) has an NBD
	// export of its own and a generation; a local one (the node of a pool
	// in this process) an opaque local target, which the node presents to
	// the local handoff. Both have the secret the node presents. Local
	// attachments of servers before the handoff have neither target nor
	// secret; AttachVolume gives them both.
	ExportName  string `json:"exportName,omitempty"`
	Generation  uint64 `json:"generation,omitempty"`
	LocalTarget string `json:"localTarget,omitempty"`
	// SealedSecret is the secret sealed by the KMS master key
	// (Server.setAttachmentSecret); Secret holds it in the clear only on
	// a server without a KMS, and in records written before sealing.
	SealedSecret []byte `json:"sealedSecret,omitempty"`
	Secret       string `json:"secret,omitempty"`
}

func (a attachmentRecord) network() bool { return a.ExportName != "" }

type snapshotRecord struct {
	ID          string            `json:"id"`
	Name        string            `json:"name,omitempty"`
	VolumeID    string            `json:"volumeId"`
	Pool        string            `json:"pool"`
	Zone        string            `json:"zone"`
	SizeGiB     int64             `json:"sizeGiB"`
	SizeBytes   int64             `json:"sizeBytes"`
	State       pb.SnapshotState  `json:"state"`
	Tags        map[string]string `json:"tags,omitempty"`
	Description string            `json:"description,omitempty"`
	Encryption
	Created time.Time `json:"created"`
}

// Encryption is how a volume (and its snapshots, restores and clones, which
// share its data key) is encrypted at rest.
type Encryption struct {
	Encrypted bool   `json:"encrypted,omitempty"`
	KMSKeyID  string `json:"kmsKeyId,omitempty"`
	// DataKey is the volume's data key wrapped by the KMS key; the plaintext
	// is never stored.
	DataKey []byte `json:"dataKey,omitempty"`
}

type nodeRecord struct {
	ID         string    `json:"id"`
	Zone       string    `json:"zone"`
	MaxVolumes int32     `json:"maxVolumes,omitempty"`
	Registered time.Time `json:"registered"`
}

// newID returns an EBS-shaped id: prefix, dash, 17 hex digits.
func newID(prefix string) string {
	b := make([]byte, 9)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return prefix + "-" + hex.EncodeToString(b)[:17]
}

// toProto is the volume as the API shows it; exportAddr is where its
// pool's storage host exports volumes over NBD (empty: it does not, and
// the volume attaches only on its node).
func (v *volumeRecord) toProto(exportAddr string) *pb.Volume {
	out := &pb.Volume{
		Id: v.ID, Name: v.Name, Zone: v.Zone, SizeGib: v.SizeGiB, Type: v.Type,
		Iops: v.IOPS, ThroughputMibps: v.Throughput, State: v.State, StateReason: v.StateReason,
		Tags: v.Tags, SnapshotId: v.SnapshotID, SourceVolumeId: v.SourceVolumeID,
		CreateTime: timestamppb.New(v.Created), Pool: v.Pool, Node: v.Node, MultiAttach: v.MultiAttach,
		Encrypted: v.Encrypted, KmsKeyId: v.KMSKeyID, Zonal: exportAddr != "",
	}
	for _, a := range v.Attachments {
		out.Attachments = append(out.Attachments, v.attachmentProto(a, exportAddr))
	}
	return out
}

// attachmentProto never holds the attachment's secret: that goes to the
// attached node only, through GetAttachmentSecret.
func (v *volumeRecord) attachmentProto(a attachmentRecord, exportAddr string) *pb.Attachment {
	att := &pb.Attachment{
		VolumeId: v.ID, NodeId: a.NodeID, State: pb.AttachmentState_ATTACHMENT_STATE_ATTACHED,
		AttachTime: timestamppb.New(a.Attached), ReadOnly: a.ReadOnly,
	}
	if a.network() {
		att.ExportAddress, att.ExportName, att.Generation = exportAddr, a.ExportName, a.Generation
	} else {
		att.LocalTarget = a.LocalTarget
	}
	return att
}

func (v *volumeRecord) attachment(node string) (attachmentRecord, bool) {
	for _, a := range v.Attachments {
		if a.NodeID == node {
			return a, true
		}
	}
	return attachmentRecord{}, false
}

func (v *volumeRecord) attachedNodes() []string {
	var ns []string
	for _, a := range v.Attachments {
		ns = append(ns, a.NodeID)
	}
	return ns
}

func (s *snapshotRecord) toProto() *pb.Snapshot {
	return &pb.Snapshot{
		Id: s.ID, Name: s.Name, VolumeId: s.VolumeID, SizeGib: s.SizeGiB, SizeBytes: s.SizeBytes,
		State: s.State, CreateTime: timestamppb.New(s.Created), Tags: s.Tags,
		Description: s.Description, Zone: s.Zone, Pool: s.Pool, Encrypted: s.Encrypted, KmsKeyId: s.KMSKeyID,
	}
}

// requestKey is what two CreateVolume calls with one name must agree on to
// be the same request (idempotency); anything else is ALREADY_EXISTS.
func requestKey(r *pb.CreateVolumeRequest) string {
	tags := make([]string, 0, len(r.Tags))
	for k, v := range r.Tags {
		tags = append(tags, k+"="+v)
	}
	sort.Strings(tags)
	return fmt.Sprintf("size=%d type=%s iops=%d iopsPerGB=%d auto=%t tp=%d zone=%s node=%s snap=%s src=%s enc=%t kms=%s multi=%t tags=%q",
		r.SizeGib, normalType(r.Type), r.Iops, r.IopsPerGb, r.AllowAutoIopsPerGbIncrease, r.ThroughputMibps,
		r.Zone, r.Node, r.SnapshotId, r.SourceVolumeId, r.Encrypted, r.KmsKeyId, r.MultiAttach, tags)
}

// forget deletes record id and its name-index entry, if that entry still
// points at id (a newer object may have taken the name).
func forget(tx store.Tx, bucket, nameBucket, id, name string) error {
	if name != "" {
		cur, err := tx.Get(nameBucket, name)
		if err == nil && string(cur) == id {
			if err := tx.Delete(nameBucket, name); err != nil {
				return err
			}
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	return tx.Delete(bucket, id)
}

// byName returns the record the name index points at, or nil if the name
// is free (or points at a record that is gone).
func byName[T any](ctx context.Context, st store.Store, bucket, nameBucket, name string) (*T, error) {
	var out *T
	err := st.View(ctx, func(tx store.Tx) error {
		id, err := tx.Get(nameBucket, name)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var rec T
		if err := store.GetJSON(tx, bucket, string(id), &rec); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		}
		out = &rec
		return nil
	})
	if err != nil {
		return nil, internal(err, "look up name %q", name)
	}
	return out, nil
}

// normalType makes "" and "GP3" the same request as "gp3".
func normalType(t string) string {
	if t == "" {
		return string(block.DefaultType)
	}
	return strings.ToLower(t)
}

// getRecord reads the kind record id (a volume, a snapshot, …) from
// bucket; a missing one is NotFound, naming it.
func getRecord[T any](ctx context.Context, st store.Store, bucket, kind, id string) (*T, error) {
	var r T
	err := st.View(ctx, func(tx store.Tx) error { return store.GetJSON(tx, bucket, id, &r) })
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "%s %s does not exist", kind, id)
	}
	if err != nil {
		return nil, internal(err, "read %s %s", kind, id)
	}
	return &r, nil
}

// putRecord saves the kind record r under id in bucket.
func putRecord(ctx context.Context, st store.Store, bucket, kind, id string, r any) error {
	if err := st.Update(ctx, func(tx store.Tx) error { return store.PutJSON(tx, bucket, id, r) }); err != nil {
		return internal(err, "save %s %s", kind, id)
	}
	return nil
}
