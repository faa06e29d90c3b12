package csi

import (
	"maps"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/block"
)

func TestParseCreateParams_Accepted(t *testing.T) {
	tests := []struct {
		name        string
		params      map[string]string
		want        *pb.CreateVolumeRequest
		wantContext map[string]string
	}{
		{"empty", nil, &pb.CreateVolumeRequest{}, map[string]string{}},
		{"EBS StorageClass names", map[string]string{
			"type": "io2", "iopsPerGB": "50", "allowAutoIOPSPerGBIncrease": "true", "encrypted": "false",
			"kmsKeyId": "arn:aws:kms:key/1", "csi.storage.k8s.io/fstype": "xfs", "blockSize": "4096", "inodeSize": "512",
		}, &pb.CreateVolumeRequest{Type: "io2", IopsPerGb: 50, AllowAutoIopsPerGbIncrease: true, KmsKeyId: "arn:aws:kms:key/1"},
			map[string]string{"fsType": "xfs", "blockSize": "4096", "inodeSize": "512"}},
		{"gp3 iops and throughput", map[string]string{"type": "gp3", "iops": "4000", "throughput": " 250 "},
			&pb.CreateVolumeRequest{Type: "gp3", Iops: 4000, ThroughputMibps: 250}, map[string]string{}},
		{"keys in any case", map[string]string{"TYPE": "gp2", "IOPSPERGB": "10", "Encrypted": "TRUE", "KMSKEYID": "k", "FsType": "EXT4"},
			&pb.CreateVolumeRequest{Type: "gp2", IopsPerGb: 10, Encrypted: true, KmsKeyId: "k"}, map[string]string{"fsType": "ext4"}},
		{"legacy fsType key", map[string]string{"fsType": "ext3"}, &pb.CreateVolumeRequest{}, map[string]string{"fsType": "ext3"}},
		{"empty fstype leaves the node default", map[string]string{"csi.storage.k8s.io/fstype": ""}, &pb.CreateVolumeRequest{}, map[string]string{}},
		{"tagSpecification_N become tags, trimmed", map[string]string{
			"tagSpecification_1": "team=storage", "tagSpecification_2": " env = prod ", "TagSpecification_3": "empty=",
			"tagSpecification_4": "url=https://x/?a=b",
		}, &pb.CreateVolumeRequest{Tags: map[string]string{"team": "storage", "env": "prod", "empty": "", "url": "https://x/?a=b"}}, map[string]string{}},
		{"PVC and PV names become the EBS tags", map[string]string{
			"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "db", "csi.storage.k8s.io/pv/name": "pvc-123",
		}, &pb.CreateVolumeRequest{Tags: map[string]string{
			"kubernetes.io/created-for/pvc/name": "data", "kubernetes.io/created-for/pvc/namespace": "db", "kubernetes.io/created-for/pv/name": "pvc-123",
		}}, map[string]string{}},
		{"other csi.storage.k8s.io keys are ignored", map[string]string{
			"csi.storage.k8s.io/provisioner-secret-name": "s", "csi.storage.k8s.io/node-stage-secret-namespace": "ns",
		}, &pb.CreateVolumeRequest{}, map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCreateParams(tt.params)
			if err != nil {
				t.Fatalf("parseCreateParams(%v): %v", tt.params, err)
			}
			r := &got.req
			w := tt.want
			if r.Type != w.Type || r.Iops != w.Iops || r.IopsPerGb != w.IopsPerGb || r.ThroughputMibps != w.ThroughputMibps ||
				r.AllowAutoIopsPerGbIncrease != w.AllowAutoIopsPerGbIncrease || r.Encrypted != w.Encrypted || r.KmsKeyId != w.KmsKeyId {
				t.Errorf("request = %+v, want %+v", r, w)
			}
			if w.Tags == nil {
				w.Tags = map[string]string{}
			}
			if !maps.Equal(r.Tags, w.Tags) {
				t.Errorf("tags = %v, want %v", r.Tags, w.Tags)
			}
			if !maps.Equal(got.context, tt.wantContext) {
				t.Errorf("volume context = %v, want %v", got.context, tt.wantContext)
			}
		})
	}
}

func TestParseCreateParams_Refused_ErrorNamesTheKey(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		want   []string
	}{
		{"unknown key", map[string]string{"volumeType": "gp3"}, []string{`"volumeType"`, "known parameters", "iopsPerGB", "tagSpecification_<n>"}},
		{"iops not a number", map[string]string{"iops": "fast"}, []string{"iops", `"fast"`, "whole number"}},
		{"iopsPerGB negative", map[string]string{"IopsPerGB": "-5"}, []string{"IopsPerGB", "-5", "negative"}},
		{"throughput fractional", map[string]string{"throughput": "12.5"}, []string{"throughput", "12.5"}},
		{"encrypted not a bool", map[string]string{"encrypted": "yes please"}, []string{"encrypted", "yes please", "true or false"}},
		{"allowAuto not a bool", map[string]string{"allowAutoIOPSPerGBIncrease": "maybe"}, []string{"allowAutoIOPSPerGBIncrease", "maybe"}},
		{"unsupported file system", map[string]string{"csi.storage.k8s.io/fstype": "ntfs"}, []string{"csi.storage.k8s.io/fstype", "ntfs", "ext4, xfs, ext3"}},
		{"unsupported legacy fsType", map[string]string{"fsType": "btrfs"}, []string{"fsType", "btrfs"}},
		{"blockSize zero", map[string]string{"blockSize": "0"}, []string{"blockSize", "greater than 0"}},
		{"inodeSize not a number", map[string]string{"inodeSize": "big"}, []string{"inodeSize", "big"}},
		{"tag without =", map[string]string{"tagSpecification_1": "team"}, []string{"tagSpecification_1", `"team"`, "key=value"}},
		{"tag with empty key", map[string]string{"tagSpecification_7": " =x"}, []string{"tagSpecification_7", "key=value"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseCreateParams(tt.params)
			if err == nil {
				t.Fatalf("parseCreateParams(%v) succeeded, want an error", tt.params)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseMutableParams(t *testing.T) {
	tests := []struct {
		name    string
		params  map[string]string
		want    *pb.ModifyVolumeRequest
		wantErr []string
	}{
		{"type iops throughput", map[string]string{"type": "io2", "IOPS": "5000", "Throughput": "300"},
			&pb.ModifyVolumeRequest{Type: "io2", Iops: 5000, ThroughputMibps: 300, AddTags: map[string]string{}}, nil},
		{"tags", map[string]string{"tagSpecification_1": "a = b", "TAGSPECIFICATION_2": "c=d"},
			&pb.ModifyVolumeRequest{AddTags: map[string]string{"a": "b", "c": "d"}}, nil},
		{"nothing", map[string]string{}, &pb.ModifyVolumeRequest{AddTags: map[string]string{}}, nil},
		{"immutable key", map[string]string{"iopsPerGB": "10"}, nil, []string{`"iopsPerGB"`, "cannot be changed", "type, iops, throughput"}},
		{"encrypted is not mutable", map[string]string{"encrypted": "true"}, nil, []string{`"encrypted"`}},
		{"bad number", map[string]string{"iops": "lots"}, nil, []string{"iops", "lots"}},
		{"negative throughput", map[string]string{"throughput": "-1"}, nil, []string{"throughput", "negative"}},
		{"bad tag", map[string]string{"tagSpecification_1": "novalue"}, nil, []string{"tagSpecification_1", "key=value"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMutableParams(tt.params)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("parseMutableParams(%v) = %v, want an error", tt.params, got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != tt.want.Type || got.Iops != tt.want.Iops || got.ThroughputMibps != tt.want.ThroughputMibps || !maps.Equal(got.AddTags, tt.want.AddTags) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSizeGiB(t *testing.T) {
	const gib = block.GiB
	tests := []struct {
		name     string
		r        *csi.CapacityRange
		typ      string
		want     int64
		wantCode codes.Code
	}{
		{"no range: EBS default 100 GiB", nil, "", 100, codes.OK},
		{"no size on gp3", &csi.CapacityRange{}, "gp3", 100, codes.OK},
		{"no size on st1: the type minimum", &csi.CapacityRange{}, "st1", 125, codes.OK},
		{"no size on sc1 within a large limit", &csi.CapacityRange{LimitBytes: 200 * gib}, "sc1", 125, codes.OK},
		{"no size, limit below the default", &csi.CapacityRange{LimitBytes: 10 * gib}, "gp3", 10, codes.OK},
		{"no size, limit not whole GiB rounds down", &csi.CapacityRange{LimitBytes: 10*gib + 5}, "gp3", 10, codes.OK},
		{"no size, limit under 1 GiB", &csi.CapacityRange{LimitBytes: gib - 1}, "gp3", 0, codes.OutOfRange},
		{"no size, unknown type keeps the default", &csi.CapacityRange{}, "gp9", 100, codes.OK},
		{"one byte rounds up to 1 GiB", &csi.CapacityRange{RequiredBytes: 1}, "", 1, codes.OK},
		{"exactly 1 GiB", &csi.CapacityRange{RequiredBytes: gib}, "", 1, codes.OK},
		{"1 GiB and a byte rounds up to 2", &csi.CapacityRange{RequiredBytes: gib + 1}, "", 2, codes.OK},
		{"required equals limit", &csi.CapacityRange{RequiredBytes: 5 * gib, LimitBytes: 5 * gib}, "", 5, codes.OK},
		{"rounding up passes the limit", &csi.CapacityRange{RequiredBytes: gib + 1, LimitBytes: gib + 2}, "", 0, codes.OutOfRange},
		{"required above limit", &csi.CapacityRange{RequiredBytes: 3 * gib, LimitBytes: 2 * gib}, "", 0, codes.InvalidArgument},
		{"negative required", &csi.CapacityRange{RequiredBytes: -1}, "", 0, codes.InvalidArgument},
		{"negative limit", &csi.CapacityRange{LimitBytes: -1}, "", 0, codes.InvalidArgument},
		{"largest request does not overflow", &csi.CapacityRange{RequiredBytes: math.MaxInt64}, "", math.MaxInt64/gib + 1, codes.OK},
		{"largest request rounds above the same limit", &csi.CapacityRange{RequiredBytes: math.MaxInt64, LimitBytes: math.MaxInt64}, "", 0, codes.OutOfRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sizeGiB(tt.r, tt.typ)
			if status.Code(err) != tt.wantCode {
				t.Fatalf("sizeGiB(%v, %q) error %v, want code %s", tt.r, tt.typ, err, tt.wantCode)
			}
			if err == nil && got != tt.want {
				t.Errorf("sizeGiB(%v, %q) = %d GiB, want %d", tt.r, tt.typ, got, tt.want)
			}
		})
	}
}

func TestFormatOptions(t *testing.T) {
	tests := []struct {
		name   string
		fsType string
		ctx    map[string]string
		want   []string
	}{
		{"nothing asked", "ext4", nil, nil},
		{"ext4 block and inode size", "ext4", map[string]string{"blockSize": "4096", "inodeSize": "256"}, []string{"-b", "4096", "-I", "256"}},
		{"ext3 like ext4", "ext3", map[string]string{"blockSize": "1024"}, []string{"-b", "1024"}},
		{"xfs block and inode size", "xfs", map[string]string{"blockSize": "4096", "inodeSize": "512"}, []string{"-b", "size=4096", "-i", "size=512"}},
		{"xfs inode size only", "xfs", map[string]string{"inodeSize": "1024"}, []string{"-i", "size=1024"}},
		// The volume context comes from the API; never let it smuggle in
		// other mkfs options.
		{"not a number is dropped", "ext4", map[string]string{"blockSize": "4096 -O ^has_journal", "inodeSize": "-1"}, nil},
		{"unrelated keys are ignored", "xfs", map[string]string{"fsType": "xfs", "other": "1"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatOptions(tt.fsType, tt.ctx); !slices.Equal(got, tt.want) {
				t.Errorf("formatOptions(%q, %v) = %q, want %q", tt.fsType, tt.ctx, got, tt.want)
			}
		})
	}
}

func TestMountOptions_XFSGetsNouuidOnce(t *testing.T) {
	tests := []struct {
		fsType   string
		flags    []string
		readOnly bool
		want     []string
	}{
		{"ext4", nil, false, nil},
		{"ext4", []string{"noatime"}, true, []string{"noatime", "ro"}},
		{"xfs", nil, false, []string{"nouuid"}},
		{"xfs", []string{"nouuid", "noatime"}, false, []string{"nouuid", "noatime"}},
	}
	for _, tt := range tests {
		flags := slices.Clone(tt.flags)
		if got := mountOptions(tt.fsType, tt.flags, tt.readOnly); !slices.Equal(got, tt.want) {
			t.Errorf("mountOptions(%q, %v, %t) = %v, want %v", tt.fsType, tt.flags, tt.readOnly, got, tt.want)
		}
		if !slices.Equal(flags, tt.flags) {
			t.Errorf("mountOptions changed its input to %v", tt.flags)
		}
	}
}
