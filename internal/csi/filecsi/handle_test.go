package filecsi

import (
	"strings"
	"testing"
)

func TestParseVolumeHandle_EFSFormats(t *testing.T) {
	const fs, ap = "fs-0123456789abcdef0", "fsap-0123456789abcdef0"
	for _, tc := range []struct {
		in      string
		want    VolumeHandle
		wantErr string
	}{
		{in: fs, want: VolumeHandle{FileSystemID: fs}},
		{in: fs + ":", want: VolumeHandle{FileSystemID: fs}},
		{in: fs + ":/", want: VolumeHandle{FileSystemID: fs}},
		{in: fs + ":/data/app/", want: VolumeHandle{FileSystemID: fs, SubPath: "/data/app"}},
		{in: fs + "://data//app", want: VolumeHandle{FileSystemID: fs, SubPath: "/data/app"}},
		{in: fs + "::" + ap, want: VolumeHandle{FileSystemID: fs, AccessPointID: ap}},
		{in: fs + ":/sub:" + ap, want: VolumeHandle{FileSystemID: fs, SubPath: "/sub", AccessPointID: ap}},
		{in: "efs:" + fs + "::" + ap, want: VolumeHandle{FileSystemID: fs, AccessPointID: ap}},
		{in: "fs-12345678", want: VolumeHandle{FileSystemID: "fs-12345678"}},
		{in: "", wantErr: "volume handle is empty"},
		{in: "fs-123", wantErr: `"fs-123" is not a file system id`},
		{in: "FS-0123456789ABCDEF0", wantErr: "is not a file system id"},
		{in: "vol-0123456789abcdef0", wantErr: "is not a file system id"},
		{in: fs + ":/a:" + ap + ":x", wantErr: "has 4 fields separated by ':'; at most 3"},
		{in: fs + "::ap-123", wantErr: `"ap-123" is not an access point id`},
		{in: fs + ":relative", wantErr: `sub path "relative" must start with /`},
		{in: fs + ":/a/../b", wantErr: `has a ".." component`},
		{in: fs + ":/./b", wantErr: `has a "." component`},
	} {
		got, err := ParseVolumeHandle(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseVolumeHandle(%q) = %+v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseVolumeHandle(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		back, err := ParseVolumeHandle(got.String())
		if err != nil || back != got {
			t.Errorf("round trip of %q through %q = %+v, %v", tc.in, got.String(), back, err)
		}
	}
}

func TestVolumeHandle_String_DynamicVolumesAreFsColonColonFsap(t *testing.T) {
	h := VolumeHandle{FileSystemID: "fs-0123456789abcdef0", AccessPointID: "fsap-0123456789abcdef0"}
	if got := h.String(); got != "fs-0123456789abcdef0::fsap-0123456789abcdef0" {
		t.Fatalf("String() = %q", got)
	}
}

func TestApplyMountOptions_AccessPointOption(t *testing.T) {
	const fs, ap, other = "fs-0123456789abcdef0", "fsap-0123456789abcdef0", "fsap-aaaaaaaaaaaaaaaaa"
	for _, tc := range []struct {
		name     string
		handle   VolumeHandle
		options  []string
		want     VolumeHandle
		wantRest []string
		wantErr  string
	}{
		{name: "none", handle: VolumeHandle{FileSystemID: fs}, options: []string{"tls", "noatime"},
			want: VolumeHandle{FileSystemID: fs}, wantRest: []string{"tls", "noatime"}},
		{name: "from options", handle: VolumeHandle{FileSystemID: fs, SubPath: "/x"}, options: []string{"tls", "accesspoint=" + ap},
			want: VolumeHandle{FileSystemID: fs, SubPath: "/x", AccessPointID: ap}, wantRest: []string{"tls"}},
		{name: "mixed case", handle: VolumeHandle{FileSystemID: fs}, options: []string{"AccessPoint=" + strings.ToUpper(ap[5:]) + "x"},
			wantErr: "is not an access point id"},
		{name: "same in both", handle: VolumeHandle{FileSystemID: fs, AccessPointID: ap}, options: []string{"accesspoint=" + ap},
			want: VolumeHandle{FileSystemID: fs, AccessPointID: ap}},
		{name: "conflict", handle: VolumeHandle{FileSystemID: fs, AccessPointID: ap}, options: []string{"accesspoint=" + other},
			wantErr: "conflicts with the access point " + ap},
		{name: "no value", handle: VolumeHandle{FileSystemID: fs}, options: []string{"accesspoint"},
			wantErr: "is not an access point id"},
	} {
		got, rest, err := ApplyMountOptions(tc.handle, tc.options)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err = %v; want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want || strings.Join(rest, ",") != strings.Join(tc.wantRest, ",") {
			t.Errorf("%s: = %+v, %q, %v; want %+v, %q", tc.name, got, rest, err, tc.want, tc.wantRest)
		}
	}
}
