package cluster

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestChooseFSType_ByCapSysResource(t *testing.T) {
	for _, tc := range []struct {
		name, status, want, why string
	}{
		// 000001ffffffffff: every capability of a 6.x kernel.
		{name: "full root", status: "Name:\tstowage\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n", want: "ext4", why: "has CAP_SYS_RESOURCE"},
		// The same without bit 24.
		{name: "sandboxed root", status: "CapEff:\t000001fffeffffff\n", want: "xfs", why: "lacks CAP_SYS_RESOURCE"},
		{name: "no caps", status: "CapEff:\t0000000000000000\n", want: "xfs", why: "lacks"},
		{name: "unreadable", status: "Name:\tx\n", want: "ext4", why: "cannot read"},
		{name: "garbage", status: "CapEff:\tzz\n", want: "ext4", why: "cannot read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := chooseFSType([]byte(tc.status))
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("chooseFSType = %q, %q; want %q and a reason containing %q", got, why, tc.want, tc.why)
			}
		})
	}
}

// The classes `up` installs carry the chosen file system; with none chosen
// they keep deploy/local's ext4.
func TestManifestBundle_ClassesGetChosenFSType(t *testing.T) {
	for _, fs := range []string{"", "xfs", "ext4"} {
		bundle, err := manifestBundle(fs)
		if err != nil {
			t.Fatal(err)
		}
		want := fs
		if want == "" {
			want = "ext4"
		}
		classes := 0
		for _, doc := range strings.Split(string(bundle), "\n---\n") {
			var obj struct {
				Kind       string `json:"kind"`
				Metadata   struct{ Name string }
				Parameters map[string]string `json:"parameters"`
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatal(err)
			}
			if obj.Kind != "StorageClass" {
				continue
			}
			classes++
			if got := obj.Parameters["csi.storage.k8s.io/fstype"]; got != want {
				t.Errorf("fsType %q: class %s has fstype %q, want %q", fs, obj.Metadata.Name, got, want)
			}
		}
		if classes < 2 {
			t.Errorf("fsType %q: %d StorageClasses in the bundle, want at least 2", fs, classes)
		}
	}
}
