package block

import "fmt"

// spec holds one type's rules. Figures are EBS's (AWS EBS User Guide,
// "Amazon EBS volume types"), so that manifests and expectations carry over.
type spec struct {
	minGiB, maxGiB int64
	// provisioned types (gp3, io1, io2) take IOPS from the user; on the
	// others IOPS and throughput follow from type and size.
	provisioned      bool
	minIOPS, maxIOPS int64
	maxIOPSPerGiB    int64
	// defaultIOPS is what gp3 gets when unset; it is also allowed at any
	// size even where the per-GiB ratio would give less. 0: iops required.
	defaultIOPS int64
}

const (
	gp3MinThroughput = 125
	gp3MaxThroughput = 1000
)

var specs = map[Type]spec{
	TypeGP2:      {minGiB: 1, maxGiB: 16384},
	TypeGP3:      {minGiB: 1, maxGiB: 16384, provisioned: true, minIOPS: 3000, maxIOPS: 16000, maxIOPSPerGiB: 500, defaultIOPS: 3000},
	TypeIO1:      {minGiB: 4, maxGiB: 16384, provisioned: true, minIOPS: 100, maxIOPS: 64000, maxIOPSPerGiB: 50},
	TypeIO2:      {minGiB: 4, maxGiB: 65536, provisioned: true, minIOPS: 100, maxIOPS: 256000, maxIOPSPerGiB: 1000},
	TypeST1:      {minGiB: 125, maxGiB: 16384},
	TypeSC1:      {minGiB: 125, maxGiB: 16384},
	TypeStandard: {minGiB: 1, maxGiB: 1024},
}

// maxIOPSFor is the most IOPS a volume of this size may provision.
func (sp spec) maxIOPSFor(sizeGiB int64) int64 {
	return min(sp.maxIOPS, max(sp.defaultIOPS, sp.maxIOPSPerGiB*sizeGiB))
}

// iopsRange reads e.g. "3000–16000 and at most 500 per GiB (6000 for 12 GiB)".
func (sp spec) iopsRange(sizeGiB int64) string {
	return fmt.Sprintf("%d–%d and at most %d per GiB (%d for %d GiB)",
		sp.minIOPS, sp.maxIOPS, sp.maxIOPSPerGiB, sp.maxIOPSFor(sizeGiB), sizeGiB)
}

func (sp spec) checkSize(t Type, sizeGiB int64) error {
	if sizeGiB < sp.minGiB || sizeGiB > sp.maxGiB {
		return paramErr(ParamSize, sizeGiB, t, "must be %d–%d GiB", sp.minGiB, sp.maxGiB)
	}
	return nil
}

func (sp spec) checkIOPS(t Type, sizeGiB, iops int64) error {
	if iops < sp.minIOPS || iops > sp.maxIOPSFor(sizeGiB) {
		return paramErr(ParamIOPS, iops, t, "must be %s", sp.iopsRange(sizeGiB))
	}
	return nil
}

// checkThroughput applies gp3's rule: 125–1000 MiB/s and at most 0.25 MiB/s
// per provisioned IOPS, though 125 MiB/s is always allowed.
func checkThroughput(t Type, iops, throughputMiBps int64) error {
	if t != TypeGP3 {
		return nil
	}
	limit := min(gp3MaxThroughput, max(gp3MinThroughput, iops/4))
	if throughputMiBps < gp3MinThroughput || throughputMiBps > limit {
		return paramErr(ParamThroughput, throughputMiBps, t,
			"must be %d–%d MiB/s and at most 0.25 MiB/s per provisioned IOPS (%d for %d IOPS)",
			gp3MinThroughput, gp3MaxThroughput, limit, iops)
	}
	return nil
}

// perf fills in what follows from the type and size. iops is used only by
// provisioned types and throughput only by gp3.
func (sp spec) perf(t Type, sizeGiB, iops, throughputMiBps int64) Performance {
	p := Performance{Type: t, SizeGiB: sizeGiB, IOPS: iops, ThroughputMiBps: throughputMiBps}
	switch t {
	case TypeGP2:
		// 3 IOPS per GiB between 100 and 16000. EBS's burst to 3000 and
		// its throughput between 170 and 334 GiB depend on burst credits,
		// which Stowage does not model: it gives the baseline.
		p.IOPS = min(16000, max(100, 3*sizeGiB))
		p.ThroughputMiBps = 128
		if sizeGiB > 170 {
			p.ThroughputMiBps = 250
		}
	case TypeIO1:
		// 256 KiB per I/O up to 500 MiB/s; above 32000 IOPS, 16 KiB per
		// I/O up to 1000 MiB/s.
		p.ThroughputMiBps = min(500, iops/4)
		if iops > 32000 {
			p.ThroughputMiBps = min(1000, iops/64)
		}
	case TypeIO2:
		// 256 KiB per I/O up to 4000 MiB/s (io2 Block Express).
		p.ThroughputMiBps = min(4000, iops/4)
	case TypeST1:
		// Baseline 40 MiB/s per TiB up to 500. Without burst credits a
		// minimum-size volume would get under 5 MiB/s, so it gets at least
		// 20 MiB/s.
		p.IOPS = 500
		p.ThroughputMiBps = min(500, max(20, 40*sizeGiB/1024))
	case TypeSC1:
		// Baseline 12 MiB/s per TiB up to 250, at least 10 MiB/s (about
		// EBS's burst rate for a minimum-size sc1) for the same reason.
		p.IOPS = 250
		p.ThroughputMiBps = min(250, max(10, 12*sizeGiB/1024))
	case TypeStandard:
		p.IOPS = 200
		p.ThroughputMiBps = 90
	}
	return p
}
