package filecsi

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
	"github.com/stowage-io/stowage/internal/testutil/loopfs"
)

type env struct {
	c       *ControllerService
	fs      pb.FileSystemServiceClient
	ap      pb.AccessPointServiceClient
	fileDir string
	fsID    string
}

// newEnv runs the real Stowage API server with a file-tree pool and makes
// one file system in it. Root directories get owners, so it needs root.
func newEnv(t *testing.T, f apitest.Files) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: access point root directories are made with an owner")
	}
	endpoint, dir := apitest.StartFiles(t, f)
	conn := apitest.Dial(t, endpoint)
	e := &env{fs: pb.NewFileSystemServiceClient(conn), ap: pb.NewAccessPointServiceClient(conn), fileDir: dir}
	e.c = NewControllerService(e.fs, e.ap)
	fs, err := e.fs.CreateFileSystem(context.Background(), &pb.CreateFileSystemRequest{Name: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	e.fsID = fs.Id
	return e
}

func (e *env) hostPath(p string) string { return filepath.Join(e.fileDir, "filesystems", e.fsID, p) }

var rwx = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
}}

func (e *env) params(extra map[string]string) map[string]string {
	p := map[string]string{"provisioningMode": "efs-ap", "fileSystemId": e.fsID, "directoryPerms": "700"}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

func claim(ns, name, pv string) map[string]string {
	return map[string]string{"csi.storage.k8s.io/pvc/namespace": ns, "csi.storage.k8s.io/pvc/name": name, "csi.storage.k8s.io/pv/name": pv}
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func (e *env) create(t *testing.T, name string, params map[string]string) *csi.Volume {
	t.Helper()
	resp, err := e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: rwx,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 5 << 30}})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.Volume
}

func ownerMode(t *testing.T, p string) (uint32, uint32, os.FileMode) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

func TestCreateVolume_GidRangeClass_TwoClaimsGetDistinctGids_ThirdExhaustsTheRange(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	params := e.params(map[string]string{"gidRangeStart": "7000", "gidRangeEnd": "7001", "basePath": "/dynamic_provisioning"})
	a := e.create(t, "pvc-a", merge(params, claim("ns", "a", "pvc-a")))
	b := e.create(t, "pvc-b", merge(params, claim("ns", "b", "pvc-b")))
	if a.VolumeContext[ContextGID] == b.VolumeContext[ContextGID] {
		t.Fatalf("both claims got gid %s", a.VolumeContext[ContextGID])
	}
	for _, v := range []*csi.Volume{a, b} {
		gid := v.VolumeContext[ContextGID]
		if gid != "7000" && gid != "7001" || v.VolumeContext[ContextUID] != gid {
			t.Errorf("volume %s: uid %s gid %s; want uid = gid from 7000..7001", v.VolumeId, v.VolumeContext[ContextUID], gid)
		}
		uid, g, mode := ownerMode(t, e.hostPath(v.VolumeContext[ContextRootDirectory]))
		if want := v.VolumeContext[ContextGID]; want != itoa(g) || want != itoa(uid) || mode != 0o700 {
			t.Errorf("root directory of %s: %d:%d %o; want %s:%s 700", v.VolumeId, uid, g, mode, want, want)
		}
		if !strings.HasPrefix(v.VolumeId, e.fsID+"::fsap-") {
			t.Errorf("volume id %q; want %s::fsap-…", v.VolumeId, e.fsID)
		}
	}
	_, err := e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-c", Parameters: merge(params, claim("ns", "c", "pvc-c")), VolumeCapabilities: rwx})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "gid range gidRangeStart=7000..gidRangeEnd=7001 is exhausted: all 2 gids are in use") {
		t.Fatalf("third claim: %v; want RESOURCE_EXHAUSTED naming the range and how many are in use", err)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestCreateVolume_SubPathPatternAndEnsureUniqueDirectory_MakeThePromisedDirectories(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	pattern := map[string]string{"basePath": "/dyn", "subPathPattern": "${.PVC.namespace}/${.PVC.name}", "uid": "1001", "gid": "1002", "directoryPerms": "750"}
	unique := e.create(t, "pvc-u", merge(e.params(pattern), claim("team", "data", "pvc-u")))
	root := unique.VolumeContext[ContextRootDirectory]
	if !uuidSuffix.MatchString(root) || uuidSuffix.ReplaceAllString(root, "") != "/dyn/team/data" {
		t.Fatalf("ensureUniqueDirectory (default true): root %q; want /dyn/team/data-<uuid>", root)
	}
	exact := e.create(t, "pvc-e", merge(e.params(pattern), map[string]string{"ensureUniqueDirectory": "false"}, claim("team", "logs", "pvc-e")))
	if got := exact.VolumeContext[ContextRootDirectory]; got != "/dyn/team/logs" {
		t.Fatalf("ensureUniqueDirectory false: root %q; want /dyn/team/logs", got)
	}
	for _, p := range []string{root, "/dyn/team/logs"} {
		if uid, gid, mode := ownerMode(t, e.hostPath(p)); uid != 1001 || gid != 1002 || mode != 0o750 {
			t.Errorf("%s: %d:%d %o; want 1001:1002 750", p, uid, gid, mode)
		}
	}
	for _, p := range []string{"/dyn", "/dyn/team"} {
		if uid, gid, mode := ownerMode(t, e.hostPath(p)); uid != 0 || gid != 0 || mode != 0o755 {
			t.Errorf("parent %s: %d:%d %o; want root 0755", p, uid, gid, mode)
		}
	}
	// A retry of the same name asks for the same directory and gets the
	// same access point.
	again := e.create(t, "pvc-u", merge(e.params(pattern), claim("team", "data", "pvc-u")))
	if again.VolumeId != unique.VolumeId {
		t.Fatalf("retry gave %s, first %s", again.VolumeId, unique.VolumeId)
	}
}

func TestCreateVolume_ConcurrentSameName_OneAccessPoint(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	params := merge(e.params(map[string]string{"gidRangeStart": "8000", "gidRangeEnd": "8100", "subPathPattern": "${.PVC.name}"}), claim("ns", "same", "pvc-same"))
	// Two controllers as well as goroutines in one: the server's name
	// index backs the controller's lock.
	other := NewControllerService(e.fs, e.ap)
	const n = 8
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.c
			if i == n-1 {
				c = other
			}
			resp, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-same", Parameters: params, VolumeCapabilities: rwx})
			errs[i] = err
			if err == nil {
				ids[i] = resp.Volume.VolumeId
			}
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil && i < n-1 {
			t.Errorf("call %d: %v", i, errs[i])
		}
		if errs[i] == nil && ids[i] != ids[0] {
			t.Errorf("call %d got %s, call 0 %s", i, ids[i], ids[0])
		}
	}
	list, err := e.ap.ListAccessPoints(context.Background(), &pb.ListAccessPointsRequest{FileSystemId: e.fsID})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.AccessPoints) != 1 {
		t.Fatalf("%d access points for one name; want 1: %v", len(list.AccessPoints), list.AccessPoints)
	}
}

func TestDeleteVolume_RemovesRootDirectoryOnlyWithDeleteAccessPointRootDir(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	keep := e.create(t, "pvc-keep", e.params(map[string]string{"uid": "10", "gid": "10"}))
	gone := e.create(t, "pvc-gone", e.params(map[string]string{"uid": "10", "gid": "10", "deleteAccessPointRootDir": "true"}))
	for _, v := range []*csi.Volume{keep, gone} {
		if err := os.WriteFile(filepath.Join(e.hostPath(v.VolumeContext[ContextRootDirectory]), "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
			t.Fatalf("DeleteVolume %s: %v", v.VolumeId, err)
		}
		h, _ := ParseVolumeHandle(v.VolumeId)
		if _, err := e.ap.DescribeAccessPoint(context.Background(), &pb.DescribeAccessPointRequest{AccessPointId: h.AccessPointID}); status.Code(err) != codes.NotFound {
			t.Errorf("access point of %s after DeleteVolume: %v; want NOT_FOUND", v.VolumeId, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.hostPath("/pvc-keep"), "f")); err != nil {
		t.Errorf("without deleteAccessPointRootDir the directory and files stay: %v", err)
	}
	if _, err := os.Stat(e.hostPath("/pvc-gone")); !os.IsNotExist(err) {
		t.Errorf("with deleteAccessPointRootDir the directory goes: %v", err)
	}
	// Deleting again, a missing access point, or an id that is no handle: success.
	for _, id := range []string{gone.VolumeId, e.fsID + "::fsap-00000000000000000", "not-a-handle", e.fsID} {
		if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("DeleteVolume %q: %v; want success", id, err)
		}
	}
}

func TestDeleteVolume_LeavesAccessPointsItDidNotProvision(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	ap, err := e.ap.CreateAccessPoint(context.Background(), &pb.CreateAccessPointRequest{FileSystemId: e.fsID, Name: "by-hand",
		PosixUser: &pb.PosixUser{Uid: 1, Gid: 1}, RootDirectory: &pb.RootDirectory{Path: "/hand", CreationInfo: &pb.CreationInfo{Permissions: "755"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: e.fsID + "::" + ap.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ap.DescribeAccessPoint(context.Background(), &pb.DescribeAccessPointRequest{AccessPointId: ap.Id}); err != nil {
		t.Fatalf("a static PV's access point made by hand must stay: %v", err)
	}
}

func TestCreateVolume_UnknownFileSystemAndBadInput_Refused(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	for _, tc := range []struct {
		name   string
		req    *csi.CreateVolumeRequest
		code   codes.Code
		substr string
	}{
		{"unknown file system", &csi.CreateVolumeRequest{Name: "v1", VolumeCapabilities: rwx, Parameters: map[string]string{"provisioningMode": "efs-ap", "fileSystemId": "fs-00000000000000000", "directoryPerms": "700"}},
			codes.InvalidArgument, `parameter fileSystemId: file system "fs-00000000000000000" does not exist`},
		{"bad perms", &csi.CreateVolumeRequest{Name: "v2", VolumeCapabilities: rwx, Parameters: e.params(map[string]string{"directoryPerms": "999"})},
			codes.InvalidArgument, `parameter directoryPerms: "999" is not an octal mode from 000 to 777`},
		{"no name", &csi.CreateVolumeRequest{VolumeCapabilities: rwx, Parameters: e.params(nil)}, codes.InvalidArgument, "name is required"},
		{"block", &csi.CreateVolumeRequest{Name: "v3", Parameters: e.params(nil), VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}},
			codes.InvalidArgument, "raw block access (volumeMode: Block) is not supported"},
		{"quota without size", &csi.CreateVolumeRequest{Name: "v4", VolumeCapabilities: rwx, Parameters: e.params(map[string]string{"quota": "true"})},
			codes.InvalidArgument, "parameter quota=true makes the claim's size a hard limit, but the claim has no size"},
		{"quota on a pool without quotas", &csi.CreateVolumeRequest{Name: "v5", VolumeCapabilities: rwx, Parameters: e.params(map[string]string{"quota": "true"}),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}}, codes.FailedPrecondition, "cannot enforce quotas"},
		{"one zone", &csi.CreateVolumeRequest{Name: "v6", VolumeCapabilities: rwx, Parameters: e.params(map[string]string{"az": "zone-b"})},
			codes.OK, ""},
	} {
		_, err := e.c.CreateVolume(context.Background(), tc.req)
		if status.Code(err) != tc.code || (tc.substr != "" && !strings.Contains(err.Error(), tc.substr)) {
			t.Errorf("%s: %v; want %s containing %q", tc.name, err, tc.code, tc.substr)
		}
	}
	oneZone, err := e.fs.CreateFileSystem(context.Background(), &pb.CreateFileSystemRequest{Name: "oz", AvailabilityZone: "zone-a"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "v7", VolumeCapabilities: rwx,
		Parameters: map[string]string{"provisioningMode": "efs-ap", "fileSystemId": oneZone.Id, "directoryPerms": "700", "az": "zone-b"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `parameter az: "zone-b", but file system `+oneZone.Id+" is One Zone in zone-a") {
		t.Errorf("az of another zone on a One Zone file system: %v", err)
	}
}

func TestCreateVolume_ReuseAccessPoint_SameClaimGetsTheSameAccessPoint(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	params := merge(e.params(map[string]string{"reuseAccessPoint": "true", "subPathPattern": "${.PVC.namespace}/${.PVC.name}"}), claim("ns", "keep", "pvc-1"))
	first := e.create(t, "pvc-1", params)
	// The claim made again (another cluster, or after the PV went with
	// Retain): a new PV name, the same access point.
	params["csi.storage.k8s.io/pv/name"] = "pvc-2"
	second := e.create(t, "pvc-2", params)
	if first.VolumeId != second.VolumeId {
		t.Fatalf("reuseAccessPoint: %s then %s; want the same access point", first.VolumeId, second.VolumeId)
	}
	// The same claim from a class with another fixed gid is refused.
	params["gid"] = "4"
	_, err := e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-3", Parameters: params, VolumeCapabilities: rwx})
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "the StorageClass says gid=4") {
		t.Fatalf("reuse with other parameters: %v; want ALREADY_EXISTS saying why", err)
	}
}

func TestCreateVolume_VolumeContextCarriesTheNFSExport(t *testing.T) {
	e := newEnv(t, apitest.Files{NFSAddress: "192.0.2.10:2049"})
	v := e.create(t, "pvc-nfs", e.params(map[string]string{"uid": "5", "gid": "6"}))
	h, err := ParseVolumeHandle(v.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ContextFileSystemID: e.fsID, ContextAccessPointID: h.AccessPointID, ContextRootDirectory: "/pvc-nfs",
		ContextNFSServer: "192.0.2.10:2049", ContextNFSExportPath: "/" + h.AccessPointID, ContextUID: "5", ContextGID: "6"}
	for k, w := range want {
		if v.VolumeContext[k] != w {
			t.Errorf("volume context %s = %q; want %q (all: %v)", k, v.VolumeContext[k], w, v.VolumeContext)
		}
	}
	if v.CapacityBytes != 5<<30 {
		t.Errorf("capacity %d; want the claim's size", v.CapacityBytes)
	}
}

func TestControllerExpandVolume_ElasticIsNoOp_QuotaIsRaised(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	v := e.create(t, "pvc-elastic", e.params(nil))
	resp, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: v.VolumeId, CapacityRange: &csi.CapacityRange{RequiredBytes: 10 << 30}})
	if err != nil || resp.CapacityBytes != 10<<30 || resp.NodeExpansionRequired {
		t.Fatalf("elastic expand: %v, %v", resp, err)
	}
	if _, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: e.fsID + "::fsap-00000000000000000", CapacityRange: &csi.CapacityRange{RequiredBytes: 1}}); status.Code(err) != codes.NotFound {
		t.Errorf("expand of a missing access point: %v; want NOT_FOUND", err)
	}
	if _, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: v.VolumeId}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("expand without a capacity range: %v; want INVALID_ARGUMENT", err)
	}
}

func TestControllerExpandVolume_QuotaVolume_RaisesTheQuota(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	e := newEnv(t, apitest.Files{Dir: loopfs.New(t, "btrfs", 256<<20)})
	resp, err := e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-q", VolumeCapabilities: rwx,
		Parameters: e.params(map[string]string{"quota": "true", "uid": "0", "gid": "0"}), CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	v := resp.Volume
	if v.VolumeContext[ContextQuotaBytes] != "8388608" || v.CapacityBytes != 8<<20 {
		t.Fatalf("quota volume: capacity %d, context %v", v.CapacityBytes, v.VolumeContext)
	}
	root := e.hostPath("/pvc-q")
	write := func(name string, n int) error {
		f, err := os.Create(filepath.Join(root, name))
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(make([]byte, n)); err != nil {
			return err
		}
		return f.Sync()
	}
	if err := write("big", 12<<20); err == nil {
		t.Fatal("writing 12 MiB under an 8 MiB quota succeeded")
	}
	os.Remove(filepath.Join(root, "big"))
	exp, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: v.VolumeId, CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
	if err != nil || exp.CapacityBytes != 32<<20 || exp.NodeExpansionRequired {
		t.Fatalf("expand: %v, %v", exp, err)
	}
	h, _ := ParseVolumeHandle(v.VolumeId)
	ap, err := e.ap.DescribeAccessPoint(context.Background(), &pb.DescribeAccessPointRequest{AccessPointId: h.AccessPointID})
	if err != nil || ap.QuotaBytes != 32<<20 {
		t.Fatalf("access point after expand: %v, %v", ap, err)
	}
	if err := write("big2", 12<<20); err != nil {
		t.Fatalf("writing 12 MiB under the raised 32 MiB quota: %v", err)
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	v := e.create(t, "pvc-v", e.params(nil))
	ctx := context.Background()
	modes := []csi.VolumeCapability_AccessMode_Mode{
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
	}
	for _, m := range modes {
		caps := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: m}}}
		for _, id := range []string{v.VolumeId, e.fsID, e.fsID + ":/sub"} {
			resp, err := e.c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: caps})
			if err != nil || resp.Confirmed == nil {
				t.Errorf("%s %s: %v, %v; want confirmed", id, m, resp, err)
			}
		}
	}
	block := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: modes[0]}}}
	if resp, err := e.c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.VolumeId, VolumeCapabilities: block}); err != nil || resp.Confirmed != nil || resp.Message == "" {
		t.Errorf("block: %v, %v; want not confirmed, with a message", resp, err)
	}
	for _, id := range []string{"fs-00000000000000000", e.fsID + "::fsap-00000000000000000", "junk"} {
		if _, err := e.c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: rwx}); status.Code(err) != codes.NotFound {
			t.Errorf("%s: %v; want NOT_FOUND", id, err)
		}
	}
}

func TestIdentityAndCapabilities(t *testing.T) {
	info, err := IdentityService{}.GetPluginInfo(context.Background(), nil)
	if err != nil || info.Name != "file.csi.stowage.io" {
		t.Fatalf("plugin info: %v, %v", info, err)
	}
	pc, _ := IdentityService{}.GetPluginCapabilities(context.Background(), nil)
	var controller, online bool
	for _, c := range pc.Capabilities {
		controller = controller || c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE
		online = online || c.GetVolumeExpansion().GetType() == csi.PluginCapability_VolumeExpansion_ONLINE
	}
	if !controller || !online {
		t.Errorf("plugin capabilities %v; want the controller service and online expansion", pc.Capabilities)
	}
	cc, _ := (&ControllerService{}).ControllerGetCapabilities(context.Background(), nil)
	got := map[csi.ControllerServiceCapability_RPC_Type]bool{}
	for _, c := range cc.Capabilities {
		got[c.GetRpc().GetType()] = true
	}
	for _, want := range []csi.ControllerServiceCapability_RPC_Type{csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME, csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER} {
		if !got[want] {
			t.Errorf("controller capabilities lack %s", want)
		}
	}
}

func TestCreateVolume_OneZoneFileSystem_VolumeConstrainedToItsZone(t *testing.T) {
	e := newEnv(t, apitest.Files{})
	if v := e.create(t, "pvc-standard", e.params(nil)); len(v.AccessibleTopology) != 0 {
		t.Errorf("a Standard file system's volume has topology %v; want none (every node)", v.AccessibleTopology)
	}
	oz, err := e.fs.CreateFileSystem(context.Background(), &pb.CreateFileSystemRequest{Name: "one-zone", AvailabilityZone: "zone-a"})
	if err != nil {
		t.Fatal(err)
	}
	v := e.create(t, "pvc-one-zone", e.params(map[string]string{"fileSystemId": oz.Id}))
	if len(v.AccessibleTopology) != 1 || v.AccessibleTopology[0].Segments[TopologyKeyZone] != "zone-a" {
		t.Errorf("a One Zone file system's volume has topology %v; want %s=zone-a", v.AccessibleTopology, TopologyKeyZone)
	}
}
