// Package block is the volume model of Stowage's EBS-compatible block volumes:
// the volume types and their size, IOPS and throughput rules. It is the only
// place that knows them; the API, CLI and CSI layers hand it what the user
// asked for and record the Performance it returns, which the data path then
// enforces.
package block

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// GiB is the unit volume sizes are provisioned in, as on EBS.
const GiB int64 = 1 << 30

// BytesToGiB rounds b up to whole GiB, so a volume is never smaller than asked
// for. b <= 0 gives 0.
func BytesToGiB(b int64) int64 {
	if b <= 0 {
		return 0
	}
	n := b / GiB
	if b%GiB != 0 {
		n++
	}
	return n
}

// DataKeySize is the size of an encrypted volume's data key: AES-256-XTS
// takes two 256-bit keys, which is what the nodes' encryption (fscrypt v2
// policies) needs. The control plane generates keys of this size without
// knowing how a node uses them.
const DataKeySize = 64

// FormatBytes writes b in binary units as `df -h` does ("1.5 GiB"), for
// messages and tables that show pool space.
func FormatBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// Type is an EBS volume type.
type Type string

const (
	TypeGP2      Type = "gp2"
	TypeGP3      Type = "gp3"
	TypeIO1      Type = "io1"
	TypeIO2      Type = "io2"
	TypeST1      Type = "st1"
	TypeSC1      Type = "sc1"
	TypeStandard Type = "standard"

	DefaultType = TypeGP3
)

// Parameter names as users write them (the EBS CSI driver's StorageClass
// parameter names), so that errors point at what they typed. ParamSize stands
// for the requested capacity.
const (
	ParamType                       = "type"
	ParamSize                       = "size"
	ParamIOPS                       = "iops"
	ParamIOPSPerGB                  = "iopsPerGB"
	ParamAllowAutoIOPSPerGBIncrease = "allowAutoIOPSPerGBIncrease"
	ParamThroughput                 = "throughput"
)

const throughputUnsettable = "can only be set for gp3 volumes"

// Types returns every volume type, in the order they are listed to users.
func Types() []Type {
	return []Type{TypeGP2, TypeGP3, TypeIO1, TypeIO2, TypeST1, TypeSC1, TypeStandard}
}

// ParseType accepts a type name in any case; "" means DefaultType.
func ParseType(s string) (Type, error) {
	if s == "" {
		return DefaultType, nil
	}
	t := Type(strings.ToLower(s))
	if _, ok := specs[t]; !ok {
		return "", unknownType(s)
	}
	return t, nil
}

// lookup is ParseType for a Type already recorded with a volume, where ""
// is corruption rather than a request for the default.
func lookup(t Type) (spec, error) {
	sp, ok := specs[t]
	if !ok {
		return spec{}, unknownType(string(t))
	}
	return sp, nil
}

func unknownType(s string) *ParamError {
	names := make([]string, 0, len(specs))
	for _, t := range Types() {
		names = append(names, string(t))
	}
	return &ParamError{Param: ParamType, Value: s, Allowed: "must be one of " + strings.Join(names, ", ")}
}

// SizeRange is the smallest and largest size a volume of type t can have.
// It returns 0, 0 for an unknown type.
func SizeRange(t Type) (minGiB, maxGiB int64) {
	sp := specs[t]
	return sp.minGiB, sp.maxGiB
}

// ErrInvalid is wrapped by every *ParamError, so the API layer can map any
// rule violation to InvalidArgument with errors.Is.
var ErrInvalid = errors.New("invalid volume parameter")

// ParamError says which parameter is wrong and what would be accepted.
type ParamError struct {
	Param string // as the user writes it, e.g. "iopsPerGB"
	Value string // as given; "" when the parameter is missing
	Type  Type   // the volume type the rule belongs to; "" if none
	// Allowed tells the user what to do, e.g. "must be 3000–16000".
	Allowed string
}

func (e *ParamError) Error() string {
	var b strings.Builder
	if e.Value == "" {
		fmt.Fprintf(&b, "missing %s", e.Param)
	} else {
		fmt.Fprintf(&b, "invalid %s %q", e.Param, e.Value)
	}
	if e.Type != "" {
		fmt.Fprintf(&b, " for %s", e.Type)
	}
	b.WriteString(": ")
	b.WriteString(e.Allowed)
	return b.String()
}

func (e *ParamError) Unwrap() error { return ErrInvalid }

func paramErr(param string, value int64, t Type, format string, args ...any) *ParamError {
	return &ParamError{Param: param, Value: strconv.FormatInt(value, 10), Type: t, Allowed: fmt.Sprintf(format, args...)}
}

// Request is what a user asked for, from StorageClass parameters or CLI
// flags. A zero field is unset.
type Request struct {
	Type                       string
	SizeGiB                    int64
	IOPS                       int64
	IOPSPerGB                  int64
	AllowAutoIOPSPerGBIncrease bool
	ThroughputMiBps            int64
}

// Performance is what a volume gets once defaults and rules are applied. It
// is recorded with the volume and enforced on the data path.
type Performance struct {
	Type            Type
	SizeGiB         int64
	IOPS            int64
	ThroughputMiBps int64
}

// Resolve applies the type's defaults and rules to a creation request.
//
// On gp2, st1, sc1 and standard IOPS follow from the type and size, and iops
// and iopsPerGB are ignored rather than refused: the EBS CSI driver ignores
// them there too, and StorageClasses copied from EKS must keep working.
//
// iopsPerGB is a wish, not an exact value, as in the EBS CSI driver: the IOPS
// it gives are capped at the type's maximum for the size, and raised to the
// type's minimum only if allowAutoIOPSPerGBIncrease is set. An explicit iops
// outside the allowed range is refused instead.
func Resolve(r Request) (Performance, error) {
	t, err := ParseType(r.Type)
	if err != nil {
		return Performance{}, err
	}
	sp := specs[t]
	if err := sp.checkSize(t, r.SizeGiB); err != nil {
		return Performance{}, err
	}
	if r.ThroughputMiBps != 0 && t != TypeGP3 {
		return Performance{}, paramErr(ParamThroughput, r.ThroughputMiBps, t, throughputUnsettable)
	}
	if !sp.provisioned {
		return sp.perf(t, r.SizeGiB, 0, 0), nil
	}

	iops, err := sp.requestedIOPS(t, r)
	if err != nil {
		return Performance{}, err
	}
	if err := sp.checkIOPS(t, r.SizeGiB, iops); err != nil {
		return Performance{}, err
	}
	throughput := r.ThroughputMiBps
	if t == TypeGP3 && throughput == 0 {
		throughput = gp3MinThroughput
	}
	if err := checkThroughput(t, iops, throughput); err != nil {
		return Performance{}, err
	}
	return sp.perf(t, r.SizeGiB, iops, throughput), nil
}

// requestedIOPS turns iops/iopsPerGB into the IOPS to provision, applying
// the default, the auto-increase and the caps; range checks come after.
func (sp spec) requestedIOPS(t Type, r Request) (int64, error) {
	switch {
	case r.IOPS < 0:
		return 0, paramErr(ParamIOPS, r.IOPS, t, "must be a positive number of IOPS")
	case r.IOPSPerGB < 0:
		return 0, paramErr(ParamIOPSPerGB, r.IOPSPerGB, t, "must be a positive number of IOPS per GiB")
	case r.IOPS > 0 && r.IOPSPerGB > 0:
		return 0, paramErr(ParamIOPSPerGB, r.IOPSPerGB, t, "cannot be combined with %s %q: set only one of %s and %s",
			ParamIOPS, strconv.FormatInt(r.IOPS, 10), ParamIOPS, ParamIOPSPerGB)
	case r.IOPS > 0:
		return r.IOPS, nil
	case r.IOPSPerGB > 0:
		// Clamping the rate first keeps the product from overflowing; any
		// rate above the type's total maximum is capped below anyway.
		iops := min(r.IOPSPerGB, sp.maxIOPS) * r.SizeGiB
		if iops < sp.minIOPS {
			if !r.AllowAutoIOPSPerGBIncrease {
				return 0, paramErr(ParamIOPSPerGB, r.IOPSPerGB, t,
					"gives %d IOPS for %d GiB, below the minimum of %d: raise %s or set %s to \"true\"",
					iops, r.SizeGiB, sp.minIOPS, ParamIOPSPerGB, ParamAllowAutoIOPSPerGBIncrease)
			}
			iops = sp.minIOPS
		}
		return min(iops, sp.maxIOPSFor(r.SizeGiB)), nil
	case sp.defaultIOPS > 0:
		return sp.defaultIOPS, nil
	default:
		return 0, &ParamError{Param: ParamIOPS, Type: t,
			Allowed: fmt.Sprintf("set %s or %s; %s must be %s", ParamIOPS, ParamIOPSPerGB, ParamIOPS, sp.iopsRange(r.SizeGiB))}
	}
}

// Modify changes the type, IOPS or throughput of an existing volume, like EBS
// Elastic Volumes. An empty newType keeps the type; a zero iops or
// throughput keeps the current value when the old and new types both have
// it, and otherwise takes the new type's default (gp3: 3000 IOPS, 125 MiB/s;
// io1 and io2 have no default IOPS). Unlike Resolve, iops on a type whose IOPS
// follow from its size is refused: a change request that silently did
// nothing would be worse than an error.
func Modify(cur Performance, newType string, iops, throughputMiBps int64) (Performance, error) {
	if _, err := lookup(cur.Type); err != nil {
		return Performance{}, err
	}
	t := cur.Type
	if newType != "" {
		parsed, err := ParseType(newType)
		if err != nil {
			return Performance{}, err
		}
		t = parsed
	}
	sp, err := lookup(t)
	if err != nil {
		return Performance{}, err
	}
	if lo, hi := sp.minGiB, sp.maxGiB; cur.SizeGiB < lo || cur.SizeGiB > hi {
		return Performance{}, &ParamError{Param: ParamType, Value: string(t),
			Allowed: fmt.Sprintf("%s volumes must be %d–%d GiB and this one is %d GiB", t, lo, hi, cur.SizeGiB)}
	}
	if throughputMiBps != 0 && t != TypeGP3 {
		return Performance{}, paramErr(ParamThroughput, throughputMiBps, t, throughputUnsettable)
	}
	if !sp.provisioned {
		if iops != 0 {
			return Performance{}, paramErr(ParamIOPS, iops, t, "can only be set for gp3, io1 and io2 volumes; %s IOPS follow from the type and size", t)
		}
		return sp.perf(t, cur.SizeGiB, 0, 0), nil
	}

	if iops < 0 {
		return Performance{}, paramErr(ParamIOPS, iops, t, "must be a positive number of IOPS")
	}
	if iops == 0 {
		switch {
		case specs[cur.Type].provisioned:
			iops = cur.IOPS
		case sp.defaultIOPS > 0:
			iops = sp.defaultIOPS
		default:
			return Performance{}, &ParamError{Param: ParamIOPS, Type: t,
				Allowed: fmt.Sprintf("set %s when changing a %s volume to %s; it must be %s", ParamIOPS, cur.Type, t, sp.iopsRange(cur.SizeGiB))}
		}
	}
	if err := sp.checkIOPS(t, cur.SizeGiB, iops); err != nil {
		return Performance{}, err
	}
	if throughputMiBps == 0 && t == TypeGP3 {
		throughputMiBps = gp3MinThroughput
		if cur.Type == TypeGP3 {
			throughputMiBps = cur.ThroughputMiBps
		}
	}
	if err := checkThroughput(t, iops, throughputMiBps); err != nil {
		return Performance{}, err
	}
	return sp.perf(t, cur.SizeGiB, iops, throughputMiBps), nil
}

// Resize grows a volume. Volumes never shrink, as on EBS: the file system on
// them could not follow. Performance that follows from the size (gp2 IOPS,
// st1 and sc1 throughput) is recomputed; provisioned IOPS and throughput are
// kept, and stay valid because a larger size only relaxes the per-GiB limits.
func Resize(cur Performance, newSizeGiB int64) (Performance, error) {
	sp, err := lookup(cur.Type)
	if err != nil {
		return Performance{}, err
	}
	if newSizeGiB < cur.SizeGiB {
		return Performance{}, paramErr(ParamSize, newSizeGiB, cur.Type,
			"must be at least the current %d GiB: volumes can grow but not shrink", cur.SizeGiB)
	}
	if err := sp.checkSize(cur.Type, newSizeGiB); err != nil {
		return Performance{}, err
	}
	return sp.perf(cur.Type, newSizeGiB, cur.IOPS, cur.ThroughputMiBps), nil
}
