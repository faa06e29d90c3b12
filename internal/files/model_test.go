package files

import (
	"errors"
	"strings"
	"testing"
)

func TestCleanRootPath(t *testing.T) {
	cases := []struct {
		name, in, want, errHas string
	}{
		{"empty is the root", "", "/", ""},
		{"root", "/", "/", ""},
		{"doubled and trailing slashes are cleaned", "//a//b/", "/a/b", ""},
		{"dot-dot escapes are refused", "/a/../../etc", "", `"/a/../../etc" has a ".." component`},
		{"dot components are refused", "/a/./b", "", `has a "." component`},
		{"relative paths are refused", "a/b", "", `"a/b" must start with /`},
		{"reserved temporary names are refused", "/.stowage-tmp-x", "", "reserved"},
		{"NUL bytes are refused", "/a\x00b", "", "NUL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := CleanRootPath(c.in)
			if c.errHas != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.errHas) {
					t.Fatalf("err = %v, want ErrInvalid containing %q", err, c.errHas)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("CleanRootPath(%q) = %q, %v; want %q", c.in, got, err, c.want)
			}
		})
	}
}

func TestParsePermissions(t *testing.T) {
	cases := []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"0755", 0o755, true}, {"750", 0o750, true}, {"000", 0, true}, {"777", 0o777, true},
		{"1777", 0, false}, {"0800", 0, false}, {"rwx", 0, false}, {"", 0, false}, {"00755", 0, false},
	}
	for _, c := range cases {
		got, err := ParsePermissions(c.in)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("ParsePermissions(%q) = %o, %v; want %o ok=%t", c.in, got, err, c.want, c.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "000 to 777")) {
			t.Errorf("ParsePermissions(%q) error %q should say what is allowed", c.in, err)
		}
	}
}

func TestResolveModes(t *testing.T) {
	cases := []struct {
		name        string
		perf, tput  string
		prov        int64
		want        Modes
		errContains string
	}{
		{"defaults", "", "", 0, Modes{PerformanceGeneralPurpose, ThroughputBursting, 0}, ""},
		{"case-insensitive", "MAXIO", "Elastic", 0, Modes{PerformanceMaxIO, ThroughputElastic, 0}, ""},
		{"provisioned", "", "provisioned", 100, Modes{PerformanceGeneralPurpose, ThroughputProvisioned, 100}, ""},
		{"unknown performance mode", "turbo", "", 0, Modes{}, `performance mode "turbo"`},
		{"unknown throughput mode", "", "fast", 0, Modes{}, `throughput mode "fast"`},
		{"provisioned without a rate", "", "provisioned", 0, Modes{}, "outside 1–3414"},
		{"rate without provisioned mode", "", "bursting", 10, Modes{}, "needs throughput mode provisioned"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ResolveModes(c.perf, c.tput, c.prov)
			if c.errContains != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.errContains) {
					t.Fatalf("err = %v, want ErrInvalid containing %q", err, c.errContains)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestCheckPOSIXUser(t *testing.T) {
	if err := CheckPOSIXUser(1000, 1000, []uint32{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := CheckPOSIXUser(^uint32(0), 0, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("uid 2^32-1: %v", err)
	}
	if err := CheckPOSIXUser(1, 1, make([]uint32, 17)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "17 secondary") {
		t.Errorf("17 secondary groups: %v", err)
	}
}
