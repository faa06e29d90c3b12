// Package blockexport is the storage host's side of the network data path
// for block volumes: it exports a volume's image over NBD for one
// attachment, checks the attachment's secret, fences older generations of
// the same volume and holds each export to its IOPS and throughput limits
// (the node's cgroup throttle never sees network I/O).
//
// The exporter keeps no state of its own: after a restart the server
// declares its attachments again (Export is idempotent), and clients that
// were connected reconnect with the same secret and generation.
package blockexport

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/stowage-io/stowage/pkg/nbd"
)

var (
	// ErrStaleGeneration means an export was asked for a generation older
	// than one the volume was already exported at.
	ErrStaleGeneration = errors.New("generation superseded")
	// ErrExists means the attachment is exported with other parameters.
	ErrExists = errors.New("already exported with different parameters")
	// ErrInvalid means the attachment is incomplete.
	ErrInvalid = errors.New("invalid attachment")
)

// Attachment is one export: a volume's image for one node's attachment.
type Attachment struct {
	ID         string // the NBD export name
	VolumeID   string
	ImagePath  string
	Generation uint64 // > 0; a higher one fences every lower one of the volume
	// Secret is what the node must present (NewSecret makes one). Only its
	// hash is kept.
	Secret   string
	ReadOnly bool
	Limits   Limits
}

// NewSecret returns a fresh attachment secret: 32 random bytes, base64url.
func NewSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Exporter serves attachments' exports over NBD.
type Exporter struct {
	srv *nbd.Server
	log *slog.Logger

	mu      sync.Mutex
	exports map[string]*export // by attachment id
	volumes map[string]*volume // by volume id; kept after the last export goes, for its generation
	// ended are the attachments fenced (by the generation that fenced
	// them) or ended by Unexport: a client of one that comes back is
	// refused, not told to wait for the export. Bounded (maxEnded).
	ended *ended
}

type volume struct {
	generation uint64
	// io is held shared by every request while it touches the image and
	// exclusively by fencing, so once a fence returns no request of the
	// fenced generation is still writing.
	io sync.RWMutex
}

type export struct {
	a      Attachment // Secret cleared
	hash   [32]byte
	vol    *volume
	file   *os.File
	direct *os.File     // O_DIRECT, for reads and large writes; nil if the file system refused
	size   atomic.Int64 // the image's, as of Export or the last Resize
	nbd    *nbd.Export
	gone   chan struct{}
	ended  atomic.Bool
	limits atomic.Pointer[buckets]
}

type buckets struct {
	limits    Limits
	iops, bps *bucket
}

// New makes an exporter; log gets refusals and fencing (never secrets).
func New(log *slog.Logger) *Exporter {
	if log == nil {
		log = slog.Default()
	}
	e := &Exporter{log: log, exports: map[string]*export{}, volumes: map[string]*volume{}, ended: newEnded(maxEnded)}
	e.srv = &nbd.Server{Lookup: e.lookup, Authenticate: e.authenticate, Logger: log}
	return e
}

// Serve accepts NBD connections on l until Close.
func (e *Exporter) Serve(l net.Listener) error { return e.srv.Serve(l) }

// Close ends every connection and closes the images. The exports' records
// go with it; a new Exporter gets them declared again.
func (e *Exporter) Close() error {
	e.mu.Lock()
	var all []*export
	for _, x := range e.exports {
		all = append(all, x)
	}
	e.mu.Unlock()
	for _, x := range all {
		e.end(x)
	}
	return e.srv.Close()
}

// Export exports a.ImagePath as a.ID. Exporting the same attachment again
// with the same parameters succeeds (new limits are applied); a newer
// generation of the volume first fences every older one: when Export
// returns, their requests fail with ESHUTDOWN, their connections are
// closing and none of their writes can still reach the image.
func (e *Exporter) Export(ctx context.Context, a Attachment) error {
	if a.ID == "" || a.VolumeID == "" || a.ImagePath == "" || a.Secret == "" || a.Generation == 0 {
		return fmt.Errorf("export attachment %q: id, volume, image, secret and generation are required: %w", a.ID, ErrInvalid)
	}
	hash := sha256.Sum256([]byte(a.Secret))
	a.Secret = ""

	e.mu.Lock()
	defer e.mu.Unlock()
	if x, ok := e.exports[a.ID]; ok {
		same := x.a
		same.Limits = a.Limits
		if same != a || subtle.ConstantTimeCompare(x.hash[:], hash[:]) != 1 {
			return fmt.Errorf("export attachment %s of volume %s: %w", a.ID, a.VolumeID, ErrExists)
		}
		x.setLimits(a.Limits)
		x.a.Limits = a.Limits
		return nil
	}
	if r, ok := e.ended.get(a.ID); ok && r.fencedBy != 0 {
		return fmt.Errorf("export attachment %s of volume %s: fenced by generation %d: %w", a.ID, a.VolumeID, r.fencedBy, ErrStaleGeneration)
	} else if ok {
		return fmt.Errorf("export attachment %s of volume %s: it was detached, and a detached attachment does not come back (attach again for a new one): %w", a.ID, a.VolumeID, ErrStaleGeneration)
	}
	v := e.volumes[a.VolumeID]
	if v == nil {
		v = &volume{}
		e.volumes[a.VolumeID] = v
	}
	if a.Generation < v.generation {
		return fmt.Errorf("export attachment %s of volume %s at generation %d: the volume is attached at generation %d: %w",
			a.ID, a.VolumeID, a.Generation, v.generation, ErrStaleGeneration)
	}
	if a.Generation > v.generation {
		e.fence(a.VolumeID, v, a.Generation)
		v.generation = a.Generation
	}
	flag := os.O_RDWR
	if a.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(a.ImagePath, flag, 0)
	if err != nil {
		return fmt.Errorf("export attachment %s of volume %s: %w", a.ID, a.VolumeID, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("export attachment %s of volume %s: %w", a.ID, a.VolumeID, err)
	}
	// Reads and large writes go around the page cache where the file system
	// allows it (nbd.FileBackend.Direct); small writes stay buffered. FLUSH
	// and FUA sync both.
	direct, err := os.OpenFile(a.ImagePath, flag|syscall.O_DIRECT, 0)
	if err != nil {
		e.log.Info("image opened without direct I/O", "attachment", a.ID, "volume", a.VolumeID, "err", err)
		direct = nil
	}
	x := &export{a: a, hash: hash, vol: v, file: f, direct: direct, gone: make(chan struct{})}
	x.setLimits(a.Limits)
	x.size.Store(st.Size())
	x.nbd = &nbd.Export{Name: a.ID, SizeFunc: x.size.Load, ReadOnly: a.ReadOnly, Backend: nbd.FileBackend{F: f, Direct: direct}, Admit: x.admit, Gone: x.gone}
	e.exports[a.ID] = x
	e.log.Info("volume exported", "attachment", a.ID, "volume", a.VolumeID, "generation", a.Generation,
		"size", st.Size(), "read_only", a.ReadOnly, "iops_limit", a.Limits.IOPS, "bytes_per_second_limit", a.Limits.BytesPerSecond)
	return nil
}

// Resize makes every export of a volume serve the size its image has
// now, after it grew: new opens are told it, and requests up to the new
// end are accepted on connections already open (their clients learn the
// size with nbd.Client.RefreshSize). A volume with no exports is success;
// an image smaller than its exports is an error and changes nothing.
func (e *Exporter) Resize(ctx context.Context, volumeID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, x := range e.exports {
		if x.a.VolumeID != volumeID {
			continue
		}
		st, err := x.file.Stat()
		if err != nil {
			return fmt.Errorf("resize export of attachment %s of volume %s: %w", id, volumeID, err)
		}
		old := x.size.Load()
		if st.Size() < old {
			return fmt.Errorf("resize export of attachment %s of volume %s: the image shrank from %d to %d bytes: %w", id, volumeID, old, st.Size(), ErrInvalid)
		}
		if st.Size() != old {
			x.size.Store(st.Size())
			e.log.Info("volume export grew", "attachment", id, "volume", volumeID, "from", old, "to", st.Size())
		}
	}
	return nil
}

// fence ends every export of v older than gen. Called with e.mu held.
func (e *Exporter) fence(volumeID string, v *volume, gen uint64) {
	for id, x := range e.exports {
		if x.vol != v {
			continue
		}
		delete(e.exports, id)
		e.ended.add(id, endReason{fencedBy: gen})
		e.end(x)
		e.log.Warn("attachment fenced: its requests now fail", "attachment", id, "volume", volumeID,
			"generation", x.a.Generation, "fenced_by_generation", gen)
	}
}

// end stops x: new requests fail, connections close, and once the
// requests already touching the image are done the image is closed.
func (e *Exporter) end(x *export) {
	if x.ended.Swap(true) {
		return
	}
	close(x.gone)
	x.vol.io.Lock()
	x.vol.io.Unlock()
	x.file.Close()
	if x.direct != nil {
		x.direct.Close()
	}
}

// Forget drops the generation record of a volume whose image is gone
// (deleted), so that the exporter does not keep one for every volume it
// ever exported. A volume with an export still is kept. Volume ids are
// never reused, and a client of an ended attachment is refused by its
// attachment's record (ended), not by the volume's generation.
func (e *Exporter) Forget(volumeID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, x := range e.exports {
		if x.a.VolumeID == volumeID {
			return
		}
	}
	delete(e.volumes, volumeID)
}

// VolumesKnown is how many volumes the exporter keeps a generation record of.
func (e *Exporter) VolumesKnown() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.volumes)
}

// Unexport removes an attachment's export (detach); its connections end.
// A missing one is success.
func (e *Exporter) Unexport(ctx context.Context, attachmentID string) error {
	e.mu.Lock()
	x, ok := e.exports[attachmentID]
	delete(e.exports, attachmentID)
	e.ended.add(attachmentID, endReason{})
	e.mu.Unlock()
	if ok {
		e.end(x)
		e.log.Info("volume unexported", "attachment", attachmentID, "volume", x.a.VolumeID, "generation", x.a.Generation)
	}
	return nil
}

func (x *export) setLimits(l Limits) {
	if b := x.limits.Load(); b != nil && b.limits == l {
		return
	}
	x.limits.Store(&buckets{limits: l, iops: newBucket(l.IOPS, 1), bps: newBucket(l.BytesPerSecond, 1<<20)})
}

// admit holds a request to the limits, then to the fence.
func (x *export) admit(ctx context.Context, r nbd.Request) (func(), error) {
	if x.ended.Load() {
		return nil, nbd.ESHUTDOWN
	}
	if r.Command != nbd.CmdFlush {
		b := x.limits.Load()
		if err := b.iops.wait(ctx, x.gone, ops(r.Length)); err != nil {
			return nil, nbd.ESHUTDOWN
		}
		if r.Command == nbd.CmdRead || r.Command == nbd.CmdWrite {
			if err := b.bps.wait(ctx, x.gone, float64(r.Length)); err != nil {
				return nil, nbd.ESHUTDOWN
			}
		}
	}
	x.vol.io.RLock()
	if x.ended.Load() {
		x.vol.io.RUnlock()
		return nil, nbd.ESHUTDOWN
	}
	return x.vol.io.RUnlock, nil
}

func (e *Exporter) authenticate(_ context.Context, a nbd.Auth, remote net.Addr) error {
	e.mu.Lock()
	x, ok := e.exports[a.Export]
	r, gone := e.ended.get(a.Export)
	e.mu.Unlock()
	by, fenced := r.fencedBy, gone && r.fencedBy != 0
	detached := gone && !fenced
	refuse := func(reason string, args ...any) error {
		e.log.Warn("nbd client refused", append([]any{"attachment", a.Export, "generation", a.Generation,
			"remote", remote.String(), "reason", reason}, args...)...)
		return fmt.Errorf("%w: attachment %s: %s", nbd.ErrRefused, a.Export, reason)
	}
	switch {
	case fenced:
		return refuse("fenced by a newer attachment of the volume", "fenced_by_generation", by)
	case detached && !ok:
		return refuse("detached: the volume's attachment to this node has ended")
	case !ok:
		// Not (yet) declared: after a restart the server declares it again,
		// so the client keeps trying.
		e.log.Info("nbd client asked for an attachment not exported (yet)", "attachment", a.Export, "remote", remote.String())
		return fmt.Errorf("%w: attachment %s", nbd.ErrUnknownExport, a.Export)
	case a.Generation != x.a.Generation:
		return refuse("wrong generation", "exported_generation", x.a.Generation)
	}
	h := sha256.Sum256(a.Secret)
	if subtle.ConstantTimeCompare(h[:], x.hash[:]) != 1 {
		return refuse("wrong secret")
	}
	return nil
}

func (e *Exporter) lookup(_ context.Context, name string, auth *nbd.Auth) (*nbd.Export, error) {
	if auth == nil || auth.Export != name {
		e.log.Warn("nbd client refused", "attachment", name, "reason", "did not present the attachment's secret")
		return nil, fmt.Errorf("%w: attachment %s: present the attachment's secret first", nbd.ErrRefused, name)
	}
	e.mu.Lock()
	x, ok := e.exports[name]
	e.mu.Unlock()
	if !ok || x.a.Generation != auth.Generation {
		return nil, fmt.Errorf("%w: attachment %s is no longer exported", nbd.ErrRefused, name)
	}
	return x.nbd, nil
}
