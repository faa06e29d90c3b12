package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The two local images: no registry is reachable, so both are built from
// files on this machine and imported into containerd's k8s.io namespace.

// PauseImageFiles is the sandbox image: the stowage binary, run as
// `stowage pause`, with its ELF interpreter and shared libraries when it is
// not statically linked.
func PauseImageFiles(stowage string) (Image, error) {
	files, err := elfWithLibraries(stowage, "/stowage")
	if err != nil {
		return Image{}, err
	}
	return Image{Name: PauseImage, Entrypoint: []string{"/stowage", "pause"}, Files: files}, nil
}

// BusyboxImageFiles is busybox-static's /bin/busybox with a symlink per
// applet, and /etc/passwd and /etc/group for root and nobody.
func BusyboxImageFiles(busybox string) (Image, error) {
	data, err := os.ReadFile(busybox)
	if err != nil {
		return Image{}, err
	}
	if interp, _, _, err := elfDeps(busybox); err != nil {
		return Image{}, err
	} else if interp != "" {
		return Image{}, fmt.Errorf("%s is dynamically linked; the busybox image needs busybox-static's", busybox)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return Image{}, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	files := []ImageFile{
		{Path: "/bin/busybox", Mode: 0o755, Data: data},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{Path: "/tmp", Mode: 0o1777, Dir: true},
		{Path: "/root", Mode: 0o700, Dir: true},
		{Path: "/home", Mode: 0o755, Dir: true},
		{Path: "/var/tmp", Mode: 0o1777, Dir: true},
	}
	for _, applet := range strings.Fields(string(out)) {
		if p := "/" + strings.TrimPrefix(applet, "/"); p != "/bin/busybox" {
			files = append(files, ImageFile{Path: p, Symlink: "/bin/busybox"})
		}
	}
	return Image{
		Name:  BusyboxImage,
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd:   []string{"sh"},
		Files: files,
	}, nil
}

// elfWithLibraries returns the binary at dst plus, for a dynamically linked
// binary, its interpreter and every library it needs (transitively), each
// at the path where this machine has it, so the same loader finds them.
func elfWithLibraries(bin, dst string) ([]ImageFile, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	files := []ImageFile{{Path: dst, Mode: 0o755, Data: data}}
	interp, needed, runpath, err := elfDeps(bin)
	if err != nil {
		return nil, err
	}
	if interp == "" && len(needed) == 0 {
		return files, nil // static
	}
	seen := map[string]bool{}
	add := func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, ImageFile{Path: p, Mode: 0o755, Data: b})
		return nil
	}
	// A shared object (a plugin loaded with dlopen) has no interpreter of
	// its own; its libraries are still needed.
	if interp != "" {
		if err := add(interp); err != nil {
			return nil, fmt.Errorf("%s's interpreter: %w", bin, err)
		}
	}
	type want struct {
		lib     string
		runpath []string // of the object that needs it
	}
	var queue []want
	for _, l := range needed {
		queue = append(queue, want{l, runpath})
	}
	for len(queue) > 0 {
		w := queue[0]
		queue = queue[1:]
		p, err := findLibrary(w.lib, w.runpath)
		if err != nil {
			return nil, fmt.Errorf("%s needs %s: %w", bin, w.lib, err)
		}
		if seen[p] {
			continue
		}
		if err := add(p); err != nil {
			return nil, err
		}
		_, more, rp, err := elfDeps(p)
		if err != nil {
			return nil, err
		}
		for _, l := range more {
			queue = append(queue, want{l, rp})
		}
	}
	return files, nil
}

// elfDeps returns an ELF file's interpreter ("" when static or a shared
// object), the libraries it names directly and where it says to look for
// them first (DT_RUNPATH, or the older DT_RPATH).
func elfDeps(p string) (interp string, needed, runpath []string, err error) {
	f, err := elf.Open(p)
	if err != nil {
		return "", nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return "", nil, nil, fmt.Errorf("%s: interpreter: %w", p, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		vals, _ := f.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				if d != "" && !strings.Contains(d, "$") { // $ORIGIN and friends: not used by Debian's binaries
					runpath = append(runpath, d)
				}
			}
		}
		if len(runpath) > 0 {
			break
		}
	}
	return interp, needed, runpath, nil
}

var libraryDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

func findLibrary(name string, runpath []string) (string, error) {
	if filepath.IsAbs(name) {
		return name, nil
	}
	for _, d := range append(runpath[:len(runpath):len(runpath)], libraryDirs...) {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(append(runpath[:len(runpath):len(runpath)], libraryDirs...), ", "))
}

// importImage writes img as an OCI archive under dir and imports it into
// containerd's k8s.io namespace, unless containerd already has this exact
// manifest under that name. It reports whether it imported.
func importImage(ctx context.Context, ctr, socket, dir string, img Image) (bool, error) {
	var buf bytes.Buffer
	digest, err := WriteOCIArchive(&buf, img)
	if err != nil {
		return false, fmt.Errorf("image %s: %w", img.Name, err)
	}
	out, err := exec.CommandContext(ctx, ctr, "--address", socket, "-n", "k8s.io", "images", "ls", "name=="+img.Name).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("ctr images ls: %v: %s", err, out)
	}
	if strings.Contains(string(out), digest) {
		return false, nil
	}
	// Several nodes import at once: each its own file (by its socket).
	name := strings.NewReplacer("/", "_", ":", "_").Replace(img.Name) + "-" + fmt.Sprintf("%x", sha256.Sum256([]byte(socket)))[:12] + ".tar"
	file := filepath.Join(dir, name)
	if err := writeFileAtomic(file, buf.Bytes(), 0o644); err != nil {
		return false, err
	}
	out, err = exec.CommandContext(ctx, ctr, "--address", socket, "-n", "k8s.io", "images", "import", file).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("ctr images import %s: %v: %s", file, err, out)
	}
	// containerd has its own copy now.
	os.Remove(file)
	return true, nil
}
