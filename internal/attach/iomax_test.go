package attach

import (
	"os"
	"path/filepath"
	"testing"
)

// GetIOMax reads io.max as the kernel writes it: keys in its order, "max"
// for unlimited, other devices' lines beside ours.
func TestGetIOMax_KernelFormat(t *testing.T) {
	cg := t.TempDir()
	content := "8:0 rbps=max wbps=max riops=500 wiops=max\n7:3 rbps=2097152 wbps=max riops=max wiops=120\n"
	if err := os.WriteFile(filepath.Join(cg, IOMaxFile), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := GetIOMax(cg, "7:3")
	if want := (Limits{ReadBPS: 2097152, WriteIOPS: 120}); err != nil || got != want {
		t.Fatalf("GetIOMax = %+v, %v; want %+v", got, err, want)
	}
	if got, err := GetIOMax(cg, "7:9"); err != nil || got != (Limits{}) {
		t.Fatalf("GetIOMax of a device without a rule = %+v, %v; want no limits", got, err)
	}
}

// A rule that is already right is not written again (a write restarts the
// throttle's accounting); a negative limit is refused before any write.
func TestSetIOMax_SameRuleNotRewritten_NegativeRefused(t *testing.T) {
	cg := t.TempDir()
	file := filepath.Join(cg, IOMaxFile)
	if err := os.WriteFile(file, []byte("7:3 rbps=max wbps=max riops=100 wiops=100\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o444); err != nil { // a write would fail
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// root writes read-only files; watch the contents instead.
		os.Chmod(file, 0o644)
	}
	if err := SetIOMax(cg, "7:3", Limits{ReadIOPS: 100, WriteIOPS: 100}); err != nil {
		t.Fatalf("SetIOMax with the rule in place: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "7:3 rbps=max wbps=max riops=100 wiops=100\n" {
		t.Fatalf("an unchanged rule was rewritten: %q", b)
	}
	if err := SetIOMax(cg, "7:3", Limits{WriteBPS: -1}); err == nil {
		t.Fatal("a negative limit was accepted")
	}
}
