package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/handoff"
)

// serveHandoff serves the server's local handoff on a socket of the test
// for this test's user (no root needed).
func serveHandoff(t *testing.T, e *testEnv) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "handoff.sock")
	l, err := handoff.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &handoff.Server{Open: e.srv.OpenLocalImage, PeerUID: os.Getuid()}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { l.Close(); <-done })
	return sock
}

// attachLocal attaches v to the pool's node and returns the request the
// node plugin would make for its image.
func (e *testEnv) attachLocal(t *testing.T, v *pb.Volume, readOnly bool) handoff.Request {
	t.Helper()
	ctx := testCtx(t)
	a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a", ReadOnly: readOnly})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if a.LocalTarget == "" || sec.LocalTarget != a.LocalTarget || sec.Secret == "" {
		t.Fatalf("local attachment %v, secret's target %q", a, sec.LocalTarget)
	}
	return handoff.Request{VolumeID: v.Id, NodeID: "node-a", Target: a.LocalTarget, Secret: sec.Secret}
}

func sameFile(t *testing.T, f *os.File, path string) bool {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(path, &b); err != nil {
		t.Fatal(err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func TestLocalHandoff_LocalAttachmentOfThisNode_ImageDescriptor(t *testing.T) {
	e := newEnv(t, envOptions{})
	sock := serveHandoff(t, e)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "local", SizeGib: 1})
	req := e.attachLocal(t, v, false)
	f, ro, err := handoff.Open(testCtx(t), sock, req)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ro || !sameFile(t, f, e.imagePath(v.Id)) {
		t.Fatalf("handed read-only=%t, a file that is the image: %t; want the image, writable", ro, sameFile(t, f, e.imagePath(v.Id)))
	}
	if _, err := f.WriteAt([]byte("node"), 0); err != nil {
		t.Fatalf("write through the handed image: %v", err)
	}

	r := e.create(t, &pb.CreateVolumeRequest{Name: "read-only", SizeGib: 1})
	rf, ro, err := handoff.Open(testCtx(t), sock, e.attachLocal(t, r, true))
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	if _, werr := rf.WriteAt([]byte("x"), 0); !ro || werr == nil {
		t.Fatalf("read-only attachment: told read-only=%t, write error %v; want a read-only descriptor", ro, werr)
	}
}

func TestLocalHandoff_Refusals(t *testing.T) {
	e := newEnv(t, envOptions{networked: []string{"pool-a"}})
	e.registerNode(t, "node-b", "zone-a", 0)
	sock := serveHandoff(t, e)
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "local", SizeGib: 1})
	good := e.attachLocal(t, v, false)

	w := e.create(t, &pb.CreateVolumeRequest{Name: "networked", SizeGib: 1})
	wa, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: w.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	wsec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: w.Id, NodeId: "node-b"})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		req  func(handoff.Request) handoff.Request
		code codes.Code
		want []string
	}{
		{"wrong secret", func(r handoff.Request) handoff.Request { r.Secret = "not-the-secret"; return r },
			codes.PermissionDenied, []string{v.Id, "secret"}},
		{"no secret", func(r handoff.Request) handoff.Request { r.Secret = ""; return r },
			codes.PermissionDenied, []string{"secret"}},
		{"wrong node", func(r handoff.Request) handoff.Request { r.NodeID = "node-b"; return r },
			codes.PermissionDenied, []string{v.Id, "not attached to node node-b", "node-a"}},
		{"network attachment", func(handoff.Request) handoff.Request {
			return handoff.Request{VolumeID: w.Id, NodeID: "node-b", Target: wa.ExportName, Secret: wsec.Secret}
		}, codes.FailedPrecondition, []string{w.Id, "over the network", wa.ExportName}},
		{"unknown attachment", func(r handoff.Request) handoff.Request { r.Target = "lat-00000000000000000"; return r },
			codes.NotFound, []string{v.Id, "lat-00000000000000000"}},
		{"unknown volume", func(r handoff.Request) handoff.Request { r.VolumeID = "vol-00000000000000000"; return r },
			codes.NotFound, []string{"vol-00000000000000000"}},
		{"no target", func(r handoff.Request) handoff.Request { r.Target = ""; return r },
			codes.InvalidArgument, []string{"local target"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _, err := handoff.Open(ctx, sock, tc.req(good))
			if f != nil {
				f.Close()
			}
			wantCode(t, err, tc.code, tc.want...)
		})
	}

	// Detached: the target is dead, even with its secret.
	if _, err := e.volumes.DetachVolume(ctx, &pb.DetachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	_, _, err = handoff.Open(ctx, sock, good)
	wantCode(t, err, codes.PermissionDenied, "not attached to node node-a")
	// Attached again: a new target and secret; the old ones do not serve.
	again := e.attachLocal(t, v, false)
	if again.Target == good.Target || again.Secret == good.Secret {
		t.Fatal("a new local attachment has the old target or secret")
	}
	_, _, err = handoff.Open(ctx, sock, good)
	wantCode(t, err, codes.NotFound, good.Target)
}

// A local attachment recorded by a server from before the handoff (no
// target, no secret) gets both from a repeated AttachVolume, which the
// external attacher makes when it re-publishes.
func TestAttachVolume_LocalAttachmentOfAnOlderServer_GetsTargetAndSecret(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := testCtx(t)
	v := e.create(t, &pb.CreateVolumeRequest{Name: "old", SizeGib: 1})
	if _, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	// Make the record what an older server wrote.
	rec, err := e.srv.getVolume(ctx, v.Id)
	if err != nil {
		t.Fatal(err)
	}
	rec.Attachments[0].LocalTarget, rec.Attachments[0].Secret = "", ""
	if err := e.srv.putVolume(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	_, err = e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-a"})
	wantCode(t, err, codes.FailedPrecondition, "ControllerPublishVolume again")
	a, err := e.volumes.AttachVolume(ctx, &pb.AttachVolumeRequest{VolumeId: v.Id, NodeId: "node-a"})
	if err != nil || a.LocalTarget == "" {
		t.Fatalf("repeated attach = %v, %v; want a local target", a, err)
	}
	if sec, err := e.volumes.GetAttachmentSecret(ctx, &pb.GetAttachmentSecretRequest{VolumeId: v.Id, NodeId: "node-a"}); err != nil || sec.LocalTarget != a.LocalTarget || sec.Secret == "" {
		t.Fatalf("secret after the repeated attach: %v, %v", sec, err)
	}
}
