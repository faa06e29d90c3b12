package block

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func perf(t Type, size, iops, throughput int64) Performance {
	return Performance{Type: t, SizeGiB: size, IOPS: iops, ThroughputMiBps: throughput}
}

// wantErr describes a rejection: the parameter and value it must blame and
// words the message must contain.
type wantErr struct {
	param, value string
	says         []string
}

func checkErr(t *testing.T, err error, want wantErr) {
	t.Helper()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want one wrapping ErrInvalid", err)
	}
	pe, ok := errors.AsType[*ParamError](err)
	if !ok {
		t.Fatalf("err = %T, want *ParamError", err)
	}
	if pe.Param != want.param || pe.Value != want.value {
		t.Errorf("blames %s=%q, want %s=%q (%v)", pe.Param, pe.Value, want.param, want.value, err)
	}
	msg := err.Error()
	for _, s := range append([]string{want.param}, want.says...) {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q does not say %q", msg, s)
		}
	}
}

func TestResolve_ValidRequest_AppliesDefaultsAndDerivedPerformance(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want Performance
	}{
		// gp3
		{"no type is gp3 with baseline performance", Request{SizeGiB: 10}, perf(TypeGP3, 10, 3000, 125)},
		{"type is case-insensitive", Request{Type: "GP3", SizeGiB: 10}, perf(TypeGP3, 10, 3000, 125)},
		{"gp3 min size", Request{Type: "gp3", SizeGiB: 1}, perf(TypeGP3, 1, 3000, 125)},
		{"gp3 max size", Request{Type: "gp3", SizeGiB: 16384}, perf(TypeGP3, 16384, 3000, 125)},
		{"gp3 baseline iops allowed below the ratio", Request{Type: "gp3", SizeGiB: 1, IOPS: 3000}, perf(TypeGP3, 1, 3000, 125)},
		{"gp3 iops at 500 per GiB", Request{Type: "gp3", SizeGiB: 12, IOPS: 6000}, perf(TypeGP3, 12, 6000, 125)},
		{"gp3 iops at max", Request{Type: "gp3", SizeGiB: 32, IOPS: 16000}, perf(TypeGP3, 32, 16000, 125)},
		{"gp3 throughput at 0.25 per iops", Request{Type: "gp3", SizeGiB: 100, ThroughputMiBps: 750}, perf(TypeGP3, 100, 3000, 750)},
		{"gp3 throughput at max", Request{Type: "gp3", SizeGiB: 100, IOPS: 4000, ThroughputMiBps: 1000}, perf(TypeGP3, 100, 4000, 1000)},
		{"gp3 iopsPerGB multiplies size", Request{Type: "gp3", SizeGiB: 50, IOPSPerGB: 100}, perf(TypeGP3, 50, 5000, 125)},
		{"gp3 iopsPerGB above ratio capped", Request{Type: "gp3", SizeGiB: 10, IOPSPerGB: 1000}, perf(TypeGP3, 10, 5000, 125)},
		{"gp3 iopsPerGB above max capped", Request{Type: "gp3", SizeGiB: 100, IOPSPerGB: 500}, perf(TypeGP3, 100, 16000, 125)},
		{"gp3 huge iopsPerGB capped without overflow", Request{Type: "gp3", SizeGiB: 16384, IOPSPerGB: math.MaxInt64}, perf(TypeGP3, 16384, 16000, 125)},
		{"gp3 iopsPerGB below min auto-increased", Request{Type: "gp3", SizeGiB: 100, IOPSPerGB: 10, AllowAutoIOPSPerGBIncrease: true}, perf(TypeGP3, 100, 3000, 125)},

		// gp2: iops and iopsPerGB are ignored, as by the EBS CSI driver.
		{"gp2 min size gets 100 iops", Request{Type: "gp2", SizeGiB: 1}, perf(TypeGP2, 1, 100, 128)},
		{"gp2 33 GiB still 100 iops", Request{Type: "gp2", SizeGiB: 33}, perf(TypeGP2, 33, 100, 128)},
		{"gp2 3 iops per GiB", Request{Type: "gp2", SizeGiB: 34}, perf(TypeGP2, 34, 102, 128)},
		{"gp2 170 GiB last at 128 MiB/s", Request{Type: "gp2", SizeGiB: 170}, perf(TypeGP2, 170, 510, 128)},
		{"gp2 171 GiB gets 250 MiB/s", Request{Type: "gp2", SizeGiB: 171}, perf(TypeGP2, 171, 513, 250)},
		{"gp2 iops capped at 16000", Request{Type: "gp2", SizeGiB: 5334}, perf(TypeGP2, 5334, 16000, 250)},
		{"gp2 max size", Request{Type: "gp2", SizeGiB: 16384}, perf(TypeGP2, 16384, 16000, 250)},
		{"gp2 iops ignored", Request{Type: "gp2", SizeGiB: 100, IOPS: 5000}, perf(TypeGP2, 100, 300, 128)},
		{"gp2 iops and iopsPerGB together ignored", Request{Type: "gp2", SizeGiB: 100, IOPS: 5000, IOPSPerGB: 50}, perf(TypeGP2, 100, 300, 128)},

		// io1
		{"io1 min size at max ratio", Request{Type: "io1", SizeGiB: 4, IOPS: 200}, perf(TypeIO1, 4, 200, 50)},
		{"io1 min iops", Request{Type: "io1", SizeGiB: 4, IOPS: 100}, perf(TypeIO1, 4, 100, 25)},
		{"io1 32000 iops reaches 500 MiB/s", Request{Type: "io1", SizeGiB: 640, IOPS: 32000}, perf(TypeIO1, 640, 32000, 500)},
		{"io1 max iops reaches 1000 MiB/s", Request{Type: "io1", SizeGiB: 1280, IOPS: 64000}, perf(TypeIO1, 1280, 64000, 1000)},
		{"io1 max size", Request{Type: "io1", SizeGiB: 16384, IOPS: 1000}, perf(TypeIO1, 16384, 1000, 250)},
		{"io1 iopsPerGB", Request{Type: "io1", SizeGiB: 100, IOPSPerGB: 50}, perf(TypeIO1, 100, 5000, 500)},
		{"io1 iopsPerGB above ratio capped", Request{Type: "io1", SizeGiB: 100, IOPSPerGB: 100}, perf(TypeIO1, 100, 5000, 500)},
		{"io1 iopsPerGB below min auto-increased", Request{Type: "io1", SizeGiB: 10, IOPSPerGB: 1, AllowAutoIOPSPerGBIncrease: true}, perf(TypeIO1, 10, 100, 25)},

		// io2
		{"io2 min size at max ratio", Request{Type: "io2", SizeGiB: 4, IOPS: 4000}, perf(TypeIO2, 4, 4000, 1000)},
		{"io2 max size and iops", Request{Type: "io2", SizeGiB: 65536, IOPS: 256000}, perf(TypeIO2, 65536, 256000, 4000)},
		{"io2 iopsPerGB above max capped", Request{Type: "io2", SizeGiB: 300, IOPSPerGB: 1000}, perf(TypeIO2, 300, 256000, 4000)},

		// st1, sc1, standard: performance follows from type and size.
		{"st1 min size gets the throughput floor", Request{Type: "st1", SizeGiB: 125}, perf(TypeST1, 125, 500, 20)},
		{"st1 40 MiB/s per TiB", Request{Type: "st1", SizeGiB: 1024}, perf(TypeST1, 1024, 500, 40)},
		{"st1 throughput capped at 500", Request{Type: "st1", SizeGiB: 16384}, perf(TypeST1, 16384, 500, 500)},
		{"st1 iopsPerGB ignored", Request{Type: "st1", SizeGiB: 1024, IOPSPerGB: 10}, perf(TypeST1, 1024, 500, 40)},
		{"sc1 min size gets the throughput floor", Request{Type: "sc1", SizeGiB: 125}, perf(TypeSC1, 125, 250, 10)},
		{"sc1 12 MiB/s per TiB", Request{Type: "sc1", SizeGiB: 2048}, perf(TypeSC1, 2048, 250, 24)},
		{"sc1 max size", Request{Type: "sc1", SizeGiB: 16384}, perf(TypeSC1, 16384, 250, 192)},
		{"standard min size", Request{Type: "standard", SizeGiB: 1}, perf(TypeStandard, 1, 200, 90)},
		{"standard max size", Request{Type: "standard", SizeGiB: 1024, IOPS: 1000}, perf(TypeStandard, 1024, 200, 90)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.req)
			if err != nil {
				t.Fatalf("Resolve(%+v): %v", tc.req, err)
			}
			if got != tc.want {
				t.Fatalf("Resolve(%+v) = %+v, want %+v", tc.req, got, tc.want)
			}
		})
	}
}

func TestResolve_InvalidRequest_RejectedNamingParameterAndRange(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want wantErr
	}{
		{"unknown type", Request{Type: "gp4", SizeGiB: 10}, wantErr{"type", "gp4", []string{"gp2, gp3, io1, io2, st1, sc1, standard"}}},
		{"size missing", Request{Type: "gp3"}, wantErr{"size", "0", []string{"1–16384 GiB"}}},
		{"size negative", Request{Type: "gp3", SizeGiB: -1}, wantErr{"size", "-1", []string{"1–16384 GiB"}}},
		{"gp2 above max size", Request{Type: "gp2", SizeGiB: 16385}, wantErr{"size", "16385", []string{"gp2", "1–16384 GiB"}}},
		{"gp3 above max size", Request{Type: "gp3", SizeGiB: 16385}, wantErr{"size", "16385", []string{"gp3", "1–16384 GiB"}}},
		{"io1 below min size", Request{Type: "io1", SizeGiB: 3, IOPS: 100}, wantErr{"size", "3", []string{"io1", "4–16384 GiB"}}},
		{"io2 above max size", Request{Type: "io2", SizeGiB: 65537, IOPS: 1000}, wantErr{"size", "65537", []string{"io2", "4–65536 GiB"}}},
		{"st1 below min size", Request{Type: "st1", SizeGiB: 124}, wantErr{"size", "124", []string{"st1", "125–16384 GiB"}}},
		{"sc1 above max size", Request{Type: "sc1", SizeGiB: 16385}, wantErr{"size", "16385", []string{"sc1", "125–16384 GiB"}}},
		{"standard above max size", Request{Type: "standard", SizeGiB: 1025}, wantErr{"size", "1025", []string{"standard", "1–1024 GiB"}}},

		{"gp3 iops below min", Request{Type: "gp3", SizeGiB: 100, IOPS: 2999}, wantErr{"iops", "2999", []string{"3000–16000"}}},
		{"gp3 iops above max", Request{Type: "gp3", SizeGiB: 100, IOPS: 16001}, wantErr{"iops", "16001", []string{"3000–16000", "(16000 for 100 GiB)"}}},
		{"gp3 iops above ratio", Request{Type: "gp3", SizeGiB: 12, IOPS: 6001}, wantErr{"iops", "6001", []string{"at most 500 per GiB (6000 for 12 GiB)"}}},
		{"gp3 iops above baseline on 1 GiB", Request{Type: "gp3", SizeGiB: 1, IOPS: 3001}, wantErr{"iops", "3001", []string{"(3000 for 1 GiB)"}}},
		{"gp3 iops negative", Request{Type: "gp3", SizeGiB: 10, IOPS: -1}, wantErr{"iops", "-1", nil}},
		{"gp3 iopsPerGB negative", Request{Type: "gp3", SizeGiB: 10, IOPSPerGB: -5}, wantErr{"iopsPerGB", "-5", nil}},
		{"gp3 iops and iopsPerGB together", Request{Type: "gp3", SizeGiB: 10, IOPS: 3000, IOPSPerGB: 300}, wantErr{"iopsPerGB", "300", []string{`iops "3000"`, "only one of iops and iopsPerGB"}}},
		{"gp3 iopsPerGB below min without auto-increase", Request{Type: "gp3", SizeGiB: 100, IOPSPerGB: 10}, wantErr{"iopsPerGB", "10", []string{"1000 IOPS", "minimum of 3000", "allowAutoIOPSPerGBIncrease"}}},
		{"gp3 throughput below min", Request{Type: "gp3", SizeGiB: 10, ThroughputMiBps: 124}, wantErr{"throughput", "124", []string{"125–1000 MiB/s"}}},
		{"gp3 throughput negative", Request{Type: "gp3", SizeGiB: 10, ThroughputMiBps: -1}, wantErr{"throughput", "-1", []string{"125–1000 MiB/s"}}},
		{"gp3 throughput above iops ratio", Request{Type: "gp3", SizeGiB: 10, ThroughputMiBps: 751}, wantErr{"throughput", "751", []string{"0.25 MiB/s per provisioned IOPS (750 for 3000 IOPS)"}}},
		{"gp3 throughput above max", Request{Type: "gp3", SizeGiB: 100, IOPS: 16000, ThroughputMiBps: 1001}, wantErr{"throughput", "1001", []string{"125–1000 MiB/s", "(1000 for 16000 IOPS)"}}},

		{"io1 without iops", Request{Type: "io1", SizeGiB: 20}, wantErr{"iops", "", []string{"missing iops for io1", "iopsPerGB", "100–64000", "(1000 for 20 GiB)"}}},
		{"io2 without iops", Request{Type: "io2", SizeGiB: 20}, wantErr{"iops", "", []string{"missing iops for io2", "iopsPerGB", "100–256000"}}},
		{"io1 iops below min", Request{Type: "io1", SizeGiB: 100, IOPS: 99}, wantErr{"iops", "99", []string{"100–64000"}}},
		{"io1 iops above ratio", Request{Type: "io1", SizeGiB: 4, IOPS: 201}, wantErr{"iops", "201", []string{"at most 50 per GiB (200 for 4 GiB)"}}},
		{"io1 iops above max", Request{Type: "io1", SizeGiB: 2000, IOPS: 64001}, wantErr{"iops", "64001", []string{"(64000 for 2000 GiB)"}}},
		{"io1 iopsPerGB below min without auto-increase", Request{Type: "io1", SizeGiB: 10, IOPSPerGB: 1}, wantErr{"iopsPerGB", "1", []string{"10 IOPS", "minimum of 100"}}},
		{"io1 iops and iopsPerGB together", Request{Type: "io1", SizeGiB: 10, IOPS: 300, IOPSPerGB: 30}, wantErr{"iopsPerGB", "30", []string{"iops"}}},
		{"io2 iops above ratio", Request{Type: "io2", SizeGiB: 4, IOPS: 4001}, wantErr{"iops", "4001", []string{"at most 1000 per GiB (4000 for 4 GiB)"}}},
		{"io2 iops above max", Request{Type: "io2", SizeGiB: 65536, IOPS: 256001}, wantErr{"iops", "256001", []string{"100–256000"}}},

		{"io1 throughput", Request{Type: "io1", SizeGiB: 100, IOPS: 1000, ThroughputMiBps: 500}, wantErr{"throughput", "500", []string{"only be set for gp3"}}},
		{"gp2 throughput", Request{Type: "gp2", SizeGiB: 100, ThroughputMiBps: 200}, wantErr{"throughput", "200", []string{"gp2", "only be set for gp3"}}},
		{"st1 throughput", Request{Type: "st1", SizeGiB: 500, ThroughputMiBps: 200}, wantErr{"throughput", "200", []string{"st1", "only be set for gp3"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.req)
			if err == nil {
				t.Fatalf("Resolve(%+v) = %+v, want an error", tc.req, got)
			}
			checkErr(t, err, tc.want)
		})
	}
}

func TestParamError_Message_ReadsAsOneActionableSentence(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"out of range", Request{Type: "gp3", SizeGiB: 12, IOPS: 20000},
			`invalid iops "20000" for gp3: must be 3000–16000 and at most 500 per GiB (6000 for 12 GiB)`},
		{"missing", Request{Type: "io1", SizeGiB: 20},
			`missing iops for io1: set iops or iopsPerGB; iops must be 100–64000 and at most 50 per GiB (1000 for 20 GiB)`},
		{"no type to blame", Request{Type: "nvme", SizeGiB: 20},
			`invalid type "nvme": must be one of gp2, gp3, io1, io2, st1, sc1, standard`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Resolve(tc.req)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Resolve(%+v) error = %v, want %s", tc.req, err, tc.want)
			}
		})
	}
}

func TestModify_ValidChange_RecomputesPerformance(t *testing.T) {
	tests := []struct {
		name             string
		cur              Performance
		newType          string
		iops, throughput int64
		want             Performance
	}{
		{"gp2 to gp3 gets gp3 baseline", perf(TypeGP2, 100, 300, 128), "gp3", 0, 0, perf(TypeGP3, 100, 3000, 125)},
		{"gp2 to gp3 with iops and throughput", perf(TypeGP2, 100, 300, 128), "gp3", 6000, 500, perf(TypeGP3, 100, 6000, 500)},
		{"nothing set keeps everything", perf(TypeGP3, 100, 6000, 500), "", 0, 0, perf(TypeGP3, 100, 6000, 500)},
		{"gp3 iops only keeps throughput", perf(TypeGP3, 100, 3000, 500), "", 8000, 0, perf(TypeGP3, 100, 8000, 500)},
		{"gp3 throughput only keeps iops", perf(TypeGP3, 100, 6000, 500), "gp3", 0, 1000, perf(TypeGP3, 100, 6000, 1000)},
		{"gp3 to gp2 derives from size", perf(TypeGP3, 100, 6000, 500), "gp2", 0, 0, perf(TypeGP2, 100, 300, 128)},
		{"gp3 to io2 keeps iops", perf(TypeGP3, 100, 4000, 1000), "IO2", 0, 0, perf(TypeIO2, 100, 4000, 1000)},
		{"io1 to gp3 keeps iops, gets default throughput", perf(TypeIO1, 100, 5000, 500), "gp3", 0, 0, perf(TypeGP3, 100, 5000, 125)},
		{"io1 to io2 up to the io2 ratio", perf(TypeIO1, 100, 5000, 500), "io2", 100000, 0, perf(TypeIO2, 100, 100000, 4000)},
		{"gp3 to st1 derives from size", perf(TypeGP3, 200, 3000, 125), "st1", 0, 0, perf(TypeST1, 200, 500, 20)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Modify(tc.cur, tc.newType, tc.iops, tc.throughput)
			if err != nil {
				t.Fatalf("Modify(%+v, %q, %d, %d): %v", tc.cur, tc.newType, tc.iops, tc.throughput, err)
			}
			if got != tc.want {
				t.Fatalf("Modify(%+v, %q, %d, %d) = %+v, want %+v", tc.cur, tc.newType, tc.iops, tc.throughput, got, tc.want)
			}
		})
	}
}

func TestModify_InvalidChange_RejectedNamingParameter(t *testing.T) {
	tests := []struct {
		name             string
		cur              Performance
		newType          string
		iops, throughput int64
		want             wantErr
	}{
		{"io2 iops beyond ratio", perf(TypeIO2, 100, 1000, 250), "", 100001, 0, wantErr{"iops", "100001", []string{"at most 1000 per GiB (100000 for 100 GiB)"}}},
		{"gp2 to io1 without iops", perf(TypeGP2, 100, 300, 128), "io1", 0, 0, wantErr{"iops", "", []string{"changing a gp2 volume to io1", "(5000 for 100 GiB)"}}},
		{"kept gp3 iops above io1 ratio", perf(TypeGP3, 20, 3000, 125), "io1", 0, 0, wantErr{"iops", "3000", []string{"(1000 for 20 GiB)"}}},
		{"kept io2 iops above gp3 max", perf(TypeIO2, 1000, 50000, 4000), "gp3", 0, 0, wantErr{"iops", "50000", []string{"3000–16000"}}},
		{"kept gp3 throughput above new iops ratio", perf(TypeGP3, 100, 6000, 1000), "", 3000, 0, wantErr{"throughput", "1000", []string{"(750 for 3000 IOPS)"}}},
		{"iops on gp2", perf(TypeGP2, 100, 300, 128), "", 500, 0, wantErr{"iops", "500", []string{"gp3, io1 and io2"}}},
		{"iops negative", perf(TypeGP3, 100, 3000, 125), "", -1, 0, wantErr{"iops", "-1", nil}},
		{"throughput on io1", perf(TypeGP3, 100, 3000, 125), "io1", 1000, 250, wantErr{"throughput", "250", []string{"only be set for gp3"}}},
		{"gp3 too small for io1", perf(TypeGP3, 2, 3000, 125), "io1", 100, 0, wantErr{"type", "io1", []string{"4–16384 GiB", "this one is 2 GiB"}}},
		{"gp3 too small for st1", perf(TypeGP3, 100, 3000, 125), "st1", 0, 0, wantErr{"type", "st1", []string{"125–16384 GiB"}}},
		{"gp3 too large for standard", perf(TypeGP3, 2000, 3000, 125), "standard", 0, 0, wantErr{"type", "standard", []string{"1–1024 GiB"}}},
		{"unknown new type", perf(TypeGP3, 100, 3000, 125), "gp9", 0, 0, wantErr{"type", "gp9", []string{"gp2, gp3"}}},
		{"unknown current type", perf("", 100, 3000, 125), "gp3", 0, 0, wantErr{"type", "", []string{"gp2, gp3"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Modify(tc.cur, tc.newType, tc.iops, tc.throughput)
			if err == nil {
				t.Fatalf("Modify(%+v, %q, %d, %d) = %+v, want an error", tc.cur, tc.newType, tc.iops, tc.throughput, got)
			}
			checkErr(t, err, tc.want)
		})
	}
}

func TestResize_Grow_RecomputesSizeDerivedPerformance(t *testing.T) {
	tests := []struct {
		name string
		cur  Performance
		size int64
		want Performance
	}{
		{"gp2 recomputes iops and throughput", perf(TypeGP2, 100, 300, 128), 200, perf(TypeGP2, 200, 600, 250)},
		{"same size is a no-op", perf(TypeGP2, 100, 300, 128), 100, perf(TypeGP2, 100, 300, 128)},
		{"st1 recomputes throughput", perf(TypeST1, 125, 500, 20), 1024, perf(TypeST1, 1024, 500, 40)},
		{"sc1 to max size", perf(TypeSC1, 125, 250, 10), 16384, perf(TypeSC1, 16384, 250, 192)},
		{"gp3 keeps provisioned performance", perf(TypeGP3, 12, 6000, 500), 100, perf(TypeGP3, 100, 6000, 500)},
		{"io2 keeps provisioned iops", perf(TypeIO2, 4, 4000, 1000), 65536, perf(TypeIO2, 65536, 4000, 1000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resize(tc.cur, tc.size)
			if err != nil {
				t.Fatalf("Resize(%+v, %d): %v", tc.cur, tc.size, err)
			}
			if got != tc.want {
				t.Fatalf("Resize(%+v, %d) = %+v, want %+v", tc.cur, tc.size, got, tc.want)
			}
		})
	}
}

func TestResize_ShrinkOrBeyondMax_Rejected(t *testing.T) {
	tests := []struct {
		name string
		cur  Performance
		size int64
		want wantErr
	}{
		{"shrink", perf(TypeGP3, 100, 3000, 125), 99, wantErr{"size", "99", []string{"at least the current 100 GiB", "not shrink"}}},
		{"gp3 beyond max", perf(TypeGP3, 100, 3000, 125), 16385, wantErr{"size", "16385", []string{"1–16384 GiB"}}},
		{"standard beyond max", perf(TypeStandard, 1024, 200, 90), 1025, wantErr{"size", "1025", []string{"1–1024 GiB"}}},
		{"unknown type", perf("gp4", 100, 3000, 125), 200, wantErr{"type", "gp4", nil}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resize(tc.cur, tc.size)
			if err == nil {
				t.Fatalf("Resize(%+v, %d) = %+v, want an error", tc.cur, tc.size, got)
			}
			checkErr(t, err, tc.want)
		})
	}
}

func TestParseType_KnownNamesAnyCase_EmptyIsGP3(t *testing.T) {
	tests := []struct {
		in      string
		want    Type
		wantErr bool
	}{
		{"", TypeGP3, false},
		{"gp2", TypeGP2, false},
		{"Io2", TypeIO2, false},
		{"STANDARD", TypeStandard, false},
		{"gp4", "", true},
		{" gp3", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseType(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseType(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseType(%q) error %v does not wrap ErrInvalid", tc.in, err)
			}
		})
	}
}

func TestSizeRange_EveryType_MatchesEBS(t *testing.T) {
	tests := []struct {
		t        Type
		min, max int64
	}{
		{TypeGP2, 1, 16384},
		{TypeGP3, 1, 16384},
		{TypeIO1, 4, 16384},
		{TypeIO2, 4, 65536},
		{TypeST1, 125, 16384},
		{TypeSC1, 125, 16384},
		{TypeStandard, 1, 1024},
		{"unknown", 0, 0},
	}
	if len(tests)-1 != len(Types()) {
		t.Fatalf("table covers %d types, Types() has %d", len(tests)-1, len(Types()))
	}
	for _, tc := range tests {
		t.Run(string(tc.t), func(t *testing.T) {
			if lo, hi := SizeRange(tc.t); lo != tc.min || hi != tc.max {
				t.Fatalf("SizeRange(%s) = %d, %d; want %d, %d", tc.t, lo, hi, tc.min, tc.max)
			}
		})
	}
}

func TestBytesToGiB_RoundsUp(t *testing.T) {
	tests := []struct {
		name  string
		bytes int64
		want  int64
	}{
		{"negative", -1, 0},
		{"zero", 0, 0},
		{"one byte", 1, 1},
		{"exactly 1 GiB", GiB, 1},
		{"one byte over", GiB + 1, 2},
		{"500 MiB", 500 << 20, 1},
		{"max int64 without overflow", math.MaxInt64, 1 << 33},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := BytesToGiB(tc.bytes); got != tc.want {
				t.Fatalf("BytesToGiB(%d) = %d, want %d", tc.bytes, got, tc.want)
			}
		})
	}
}
