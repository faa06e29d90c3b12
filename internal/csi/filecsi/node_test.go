package filecsi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// fakeMounter records mounts in memory; broken marks targets whose mount
// is dead.
type fakeMounter struct {
	mounts  map[string]Mount
	broken  map[string]bool
	calls   []string
	failErr error
}

func newFakeMounter() *fakeMounter {
	return &fakeMounter{mounts: map[string]Mount{}, broken: map[string]bool{}}
}

func (f *fakeMounter) Mount(_ context.Context, m Mount) error {
	f.calls = append(f.calls, "mount "+m.Target)
	if f.failErr != nil {
		return f.failErr
	}
	f.mounts[m.Target] = m
	return nil
}

func (f *fakeMounter) Unmount(_ context.Context, target string) error {
	f.calls = append(f.calls, "unmount "+target)
	delete(f.mounts, target)
	delete(f.broken, target)
	return nil
}

func (f *fakeMounter) Mounted(target string) (string, error) { return f.mounts[target].VolumeID, nil }

func (f *fakeMounter) Check(_ context.Context, target string) error {
	if f.broken[target] {
		return errors.New("its FUSE NFS client (pid 42) has exited; the mount is dead")
	}
	return nil
}

func (f *fakeMounter) Mounts() (map[string]string, error) {
	out := map[string]string{}
	for t, m := range f.mounts {
		out[t] = m.VolumeID
	}
	return out, nil
}

// fakeAccessPoints answers DescribeAccessPoint from a map.
type fakeAccessPoints struct {
	pb.AccessPointServiceClient
	aps map[string]*pb.AccessPoint
}

func (f fakeAccessPoints) DescribeAccessPoint(_ context.Context, req *pb.DescribeAccessPointRequest, _ ...grpc.CallOption) (*pb.AccessPoint, error) {
	ap, ok := f.aps[req.AccessPointId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "access point %s not found", req.AccessPointId)
	}
	return ap, nil
}

// fakeFileSystems answers DescribeFileSystem from a map.
type fakeFileSystems struct {
	pb.FileSystemServiceClient
	fss map[string]*pb.FileSystem
}

func (f fakeFileSystems) DescribeFileSystem(_ context.Context, req *pb.DescribeFileSystemRequest, _ ...grpc.CallOption) (*pb.FileSystem, error) {
	fs, ok := f.fss[req.FileSystemId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "file system %s not found", req.FileSystemId)
	}
	return fs, nil
}

const (
	testFSID = "fs-0123456789abcdef0"
	testAPID = "fsap-0123456789abcdef0"
)

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func newTestNode(t *testing.T) (*NodeService, *fakeMounter) {
	m := newFakeMounter()
	aps := fakeAccessPoints{aps: map[string]*pb.AccessPoint{
		testAPID: {Id: testAPID, FileSystemId: testFSID, NfsAddress: "127.0.0.1:12049", NfsExportPath: "/" + testAPID,
			QuotaBytes: 10 << 20, SizeUsedBytes: 3 << 20, InodesUsed: 7},
	}}
	fss := fakeFileSystems{fss: map[string]*pb.FileSystem{
		testFSID: {Id: testFSID, NfsAddress: "127.0.0.1:12049", NfsExportPath: "/" + testFSID},
	}}
	return NewNodeService(NodeConfig{NodeID: "node-a"}, m, fss, aps), m
}

func TestNodePublishVolume_Sources(t *testing.T) {
	rwx := csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	rox := csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	dynamicContext := map[string]string{ContextAccessPointID: testAPID, ContextNFSServer: "10.0.0.1:2049", ContextNFSExportPath: "/" + testAPID}
	cases := []struct {
		name     string
		volumeID string
		vc       map[string]string
		cap      *csi.VolumeCapability
		readonly bool
		want     Mount // Server, Export, ReadOnly
		code     codes.Code
		says     string
	}{
		{name: "dynamic volume: the context says where", volumeID: testFSID + "::" + testAPID, vc: dynamicContext, cap: mountCap(rwx),
			want: Mount{Server: "10.0.0.1:2049", Export: "/" + testAPID}},
		{name: "static handle with an access point: looked up", volumeID: testFSID + "::" + testAPID, cap: mountCap(rwx),
			want: Mount{Server: "127.0.0.1:12049", Export: "/" + testAPID}},
		{name: "static handle with a sub path", volumeID: testFSID + ":/data/app:" + testAPID, cap: mountCap(rwx),
			want: Mount{Server: "127.0.0.1:12049", Export: "/" + testAPID + "/data/app"}},
		{name: "access point in the mount options (EFS style)", volumeID: testFSID, cap: mountCap(rwx, "tls", "accesspoint="+testAPID),
			want: Mount{Server: "127.0.0.1:12049", Export: "/" + testAPID}},
		{name: "ROX is read-only", volumeID: testFSID + "::" + testAPID, vc: dynamicContext, cap: mountCap(rox),
			want: Mount{Server: "10.0.0.1:2049", Export: "/" + testAPID, ReadOnly: true}},
		{name: "readonly publish", volumeID: testFSID + "::" + testAPID, vc: dynamicContext, cap: mountCap(rwx), readonly: true,
			want: Mount{Server: "10.0.0.1:2049", Export: "/" + testAPID, ReadOnly: true}},
		{name: "ro mount option", volumeID: testFSID + "::" + testAPID, vc: dynamicContext, cap: mountCap(rwx, "ro"),
			want: Mount{Server: "10.0.0.1:2049", Export: "/" + testAPID, ReadOnly: true}},
		{name: "whole file system (static, no access point)", volumeID: testFSID, cap: mountCap(rwx),
			want: Mount{Server: "127.0.0.1:12049", Export: "/" + testFSID}},
		{name: "directory of a file system", volumeID: testFSID + ":/team/a", cap: mountCap(rwx),
			want: Mount{Server: "127.0.0.1:12049", Export: "/" + testFSID + "/team/a"}},
		{name: "unknown file system", volumeID: "fs-00000000000000009", cap: mountCap(rwx), code: codes.NotFound, says: "fs-00000000000000009"},
		{name: "unknown access point", volumeID: testFSID + "::fsap-00000000000000001", cap: mountCap(rwx), code: codes.NotFound, says: "fsap-00000000000000001"},
		{name: "access point of another file system", volumeID: "fs-00000000000000009::" + testAPID, cap: mountCap(rwx), code: codes.InvalidArgument, says: testFSID},
		{name: "handle and option disagree", volumeID: testFSID + "::" + testAPID, cap: mountCap(rwx, "accesspoint=fsap-00000000000000002"), code: codes.InvalidArgument, says: "name one access point"},
		{name: "soft mounts refused", volumeID: testFSID + "::" + testAPID, cap: mountCap(rwx, "soft"), code: codes.InvalidArgument, says: "hard mounts"},
		{name: "unknown mount option", volumeID: testFSID + "::" + testAPID, cap: mountCap(rwx, "frobnicate=1"), code: codes.InvalidArgument, says: `"frobnicate=1"`},
		{name: "bad handle", volumeID: "vol-1", cap: mountCap(rwx), code: codes.InvalidArgument, says: "vol-1"},
		{name: "block access refused", volumeID: testFSID + "::" + testAPID, vc: dynamicContext, cap: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwx}}, code: codes.InvalidArgument, says: "raw block"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, m := newTestNode(t)
			target := filepath.Join(t.TempDir(), "mount")
			_, err := n.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
				VolumeId: c.volumeID, TargetPath: target, VolumeCapability: c.cap, VolumeContext: c.vc, Readonly: c.readonly})
			if c.code != codes.OK {
				if status.Code(err) != c.code || !strings.Contains(err.Error(), c.says) {
					t.Fatalf("err = %v, want %s saying %q", err, c.code, c.says)
				}
				if len(m.mounts) != 0 {
					t.Errorf("a refused publish mounted %v", m.mounts)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := m.mounts[target]
			if got.Server != c.want.Server || got.Export != c.want.Export || got.ReadOnly != c.want.ReadOnly || got.VolumeID != c.volumeID {
				t.Errorf("mounted %+v, want server %s export %s readOnly %t of %s", got, c.want.Server, c.want.Export, c.want.ReadOnly, c.volumeID)
			}
			if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
				t.Errorf("target %s not made: %v", target, err)
			}
		})
	}
}

func TestNodePublishVolume_RepeatedIdempotent_DeadMountMadeAgain(t *testing.T) {
	n, m := newTestNode(t)
	target := filepath.Join(t.TempDir(), "mount")
	req := &csi.NodePublishVolumeRequest{VolumeId: testFSID + "::" + testAPID, TargetPath: target,
		VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}
	for i := 0; i < 2; i++ {
		if _, err := n.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(m.calls, ";") != "mount "+target {
		t.Errorf("two publishes made calls %v, want one mount", m.calls)
	}
	m.broken[target] = true
	if _, err := n.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if want := "mount " + target + ";unmount " + target + ";mount " + target; strings.Join(m.calls, ";") != want {
		t.Errorf("publish over a dead mount made calls %v, want %s", m.calls, want)
	}
	other := proto.Clone(req).(*csi.NodePublishVolumeRequest)
	other.VolumeId = testFSID + ":/x:" + testAPID
	if _, err := n.NodePublishVolume(context.Background(), other); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("publish of another volume at the same target: %v, want FailedPrecondition", err)
	}
}

func TestNodeUnpublishVolume_UnmountsAndRemovesTarget_Idempotent(t *testing.T) {
	n, m := newTestNode(t)
	target := filepath.Join(t.TempDir(), "mount")
	id := testFSID + "::" + testAPID
	if _, err := n.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target,
		VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.mounts) != 0 {
		t.Errorf("mounts left: %v", m.mounts)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target still there: %v", err)
	}
}

func TestNodeGetVolumeStats_NotMountedNotFound_DeadMountAbnormal(t *testing.T) {
	n, m := newTestNode(t)
	target := t.TempDir()
	id := testFSID + "::" + testAPID
	if _, err := n.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of an unmounted path: %v, want NotFound", err)
	}
	m.mounts[target] = Mount{VolumeID: id, Target: target}
	resp, err := n.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || resp.VolumeCondition.Abnormal || len(resp.Usage) != 2 || resp.Usage[0].Total <= 0 {
		t.Fatalf("stats of a healthy mount: %v, %v", resp, err)
	}
	// The access point's usage, and its quota as the total.
	if b, i := resp.Usage[0], resp.Usage[1]; b.Total != 10<<20 || b.Used != 3<<20 || b.Available != 7<<20 || i.Used != 7 {
		t.Errorf("stats of a quota'd access point: bytes %v, inodes %v; want total 10 MiB, used 3 MiB, available 7 MiB, 7 inodes used", b, i)
	}
	m.broken[target] = true
	resp, err = n.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || !resp.VolumeCondition.Abnormal || !strings.Contains(resp.VolumeCondition.Message, id) || !strings.Contains(resp.VolumeCondition.Message, "exited") {
		t.Errorf("stats of a dead mount: %v, %v; want an abnormal condition naming the volume and why", resp, err)
	}
}

func TestKernelMountArgs_EFSOptions(t *testing.T) {
	got, err := kernelMountArgs(Mount{Server: "192.0.2.7:2049", Export: "/" + testAPID + "/sub", Target: "/t", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "-t nfs4 -o nfsvers=4.1,port=2049,hard,timeo=600,retrans=2,noresvport,rsize=1048576,wsize=1048576,ro 192.0.2.7:/" + testAPID + "/sub /t"
	if strings.Join(got, " ") != want {
		t.Errorf("mount %s\nwant  %s", strings.Join(got, " "), want)
	}
	if _, err := kernelMountArgs(Mount{Server: "no-port"}); err == nil {
		t.Error("a server without a port was accepted")
	}
}

// Two pods of one volume on one node are two NFS clients: their owners
// differ (a shared owner makes the server drop one's session for the
// other's, over and over), while a mount started again at the same
// target keeps its owner.
func TestClientOwner_OnePerMount(t *testing.T) {
	const vol = "fs-0123456789abcdef0::fsap-0123456789abcdef0"
	a := clientOwner("node-1", vol, "/var/lib/kubelet/pods/a/volumes/kubernetes.io~csi/pv/mount")
	b := clientOwner("node-1", vol, "/var/lib/kubelet/pods/b/volumes/kubernetes.io~csi/pv/mount")
	if a == b {
		t.Fatalf("two mounts of %s on one node share the NFS client owner %q", vol, a)
	}
	if again := clientOwner("node-1", vol, "/var/lib/kubelet/pods/a/volumes/kubernetes.io~csi/pv/mount/"); again != a {
		t.Errorf("the same target's owner changed: %q, then %q", a, again)
	}
	if other := clientOwner("node-2", vol, "/var/lib/kubelet/pods/a/volumes/kubernetes.io~csi/pv/mount"); other == a {
		t.Errorf("two nodes share the owner %q", a)
	}
	if len(a) > 1024 {
		t.Errorf("owner of %d bytes; NFSv4 allows 1024", len(a))
	}
}
