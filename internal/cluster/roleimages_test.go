package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/files"
	"github.com/stowage-io/stowage/internal/nfsmount"
)

// layerFiles reads the single layer of an OCI archive back: path → content
// (a symlink's is "-> target", a directory's empty).
func layerFiles(t *testing.T, archive []byte) map[string][]byte {
	t.Helper()
	blobs := readArchive(t, archive)
	var idx struct{ Manifests []struct{ Digest string } }
	json.Unmarshal(blobs["index.json"], &idx)
	var man struct{ Layers []struct{ Digest string } }
	json.Unmarshal(blobs["blobs/sha256/"+strings.TrimPrefix(idx.Manifests[0].Digest, "sha256:")], &man)
	out := map[string][]byte{}
	for name, data := range readArchive(t, blobs["blobs/sha256/"+strings.TrimPrefix(man.Layers[0].Digest, "sha256:")]) {
		out["/"+strings.TrimSuffix(name, "/")] = data
	}
	return out
}

func TestStowageImage_ToolsWithTheirLibraries_PinnedPackages_Reproducible(t *testing.T) {
	self, err := os.Executable() // an ELF binary standing in for stowage
	if err != nil {
		t.Fatal(err)
	}
	tools := []string{"mkfs.ext4", "blkid", "losetup"}
	for _, tl := range tools {
		if _, err := exec.LookPath(tl); err != nil {
			t.Fatalf("%s is not on this machine; hack/setup.sh installs it: %v", tl, err)
		}
	}
	fakeDpkg := func(p string) (string, string, error) { return "pkg-of-" + filepath.Base(p), "1.0-1", nil }
	build := func() ([]byte, string) {
		img, err := StowageImage(self, "v0.test", tools, fakeDpkg)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		d, err := WriteOCIArchive(&buf, img)
		if err != nil {
			t.Fatal(err)
		}
		return buf.Bytes(), d
	}
	a, d1 := build()
	_, d2 := build()
	if d1 != d2 {
		t.Fatalf("two builds of the same files: digests %s and %s", d1, d2)
	}
	files := layerFiles(t, a)
	for _, want := range []string{"/usr/bin/stowage", "/usr/share/stowage/packages.json", "/etc/mtab"} {
		if _, ok := files[want]; !ok {
			t.Errorf("image lacks %s", want)
		}
	}
	var pins []struct{ Path, Package, Version string }
	if err := json.Unmarshal(files["/usr/share/stowage/packages.json"], &pins); err != nil {
		t.Fatal(err)
	}
	pinned := map[string]bool{}
	for _, p := range pins {
		pinned[p.Path] = true
		if _, ok := files[p.Path]; !ok {
			t.Errorf("packages.json names %s, which the image lacks", p.Path)
		}
	}
	for _, tl := range tools {
		p, _ := exec.LookPath(tl)
		if _, ok := files[p]; !ok || !pinned[p] {
			t.Errorf("tool %s (%s): in image %v, pinned %v", tl, p, ok, pinned[p])
		}
	}
	var libc bool
	for p := range files {
		libc = libc || strings.Contains(p, "libc.so")
	}
	if !libc {
		t.Errorf("no libc in the image: the dynamically linked tools could not run")
	}

	if _, err := StowageImage(self, "v0.test", []string{"no-such-tool-here"}, fakeDpkg); err == nil || !strings.Contains(err.Error(), "no-such-tool-here") {
		t.Errorf("a missing tool: %v, want an error naming it", err)
	}
}

// TestDpkgPackageOf_NamesTheRealPackage runs dpkg-query on this machine
// (Debian): losetup comes from util-linux or mount, mkfs.ext4 from
// e2fsprogs.
func TestDpkgPackageOf_NamesTheRealPackage(t *testing.T) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		t.Skip("no dpkg-query: not a Debian machine, the image's pins need one")
	}
	p, _ := exec.LookPath("mkfs.ext4")
	pkg, v, err := DpkgPackageOf(p)
	if err != nil || pkg != "e2fsprogs" || v == "" {
		t.Fatalf("DpkgPackageOf(%s) = %q %q %v, want e2fsprogs and a version", p, pkg, v, err)
	}
}

// builtSidecarImage is the image of sidecar name from the build's
// _output/bin; the test skips when it is not built.
func builtSidecarImage(t *testing.T, name string) Image {
	t.Helper()
	bin := filepath.Join("..", "..", "_output", "bin", name)
	if _, err := os.Stat(bin); err != nil {
		t.Skip(name + " is not built (hack/build-components.sh builds it): " + err.Error())
	}
	img, err := SidecarImage(bin)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestSidecarImage_TaggedWithTheBinarysVersion(t *testing.T) {
	img := builtSidecarImage(t, "csi-provisioner")
	if !strings.HasPrefix(img.Name, ImageRepo+"/csi-provisioner:v") || img.Entrypoint[0] != "/csi-provisioner" {
		t.Fatalf("image %s entrypoint %v", img.Name, img.Entrypoint)
	}
}

// The Secrets Store driver's image has the mount(8) it runs for each
// pod's tmpfs, with its libraries, on its PATH.
func TestSidecarImage_SecretsStoreDriverHasMount(t *testing.T) {
	img := builtSidecarImage(t, "secrets-store-csi-driver")
	paths := map[string]bool{}
	for _, f := range img.Files {
		paths[f.Path] = true
	}
	for _, tool := range []string{"mount", "umount"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if !paths[p] {
			t.Errorf("the image lacks %s (%s)", tool, p)
		}
	}
	if len(img.Env) == 0 || !strings.Contains(img.Env[0], "/usr/bin") {
		t.Errorf("the image's PATH: %v", img.Env)
	}
}

func TestBinaryVersion_FirstSemver(t *testing.T) {
	dir := t.TempDir()
	for out, want := range map[string]string{
		"csi-provisioner v5.1.0":                             "v5.1.0",
		`{"BuildVersion":"v1.6.1","GitCommit":""}`:           "v1.6.1",
		"snapshot-controller v8.2.0-rc.1+dirty extra v9.9.9": "v8.2.0-rc.1_dirty",
	} {
		s := filepath.Join(dir, "bin")
		os.WriteFile(s, []byte("#!/bin/sh\necho '"+out+"'\n"), 0o755)
		got, err := binaryVersion(s)
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", out, got, err, want)
		}
	}
	os.WriteFile(filepath.Join(dir, "bin"), []byte("#!/bin/sh\necho 'no version'\n"), 0o755)
	if _, err := binaryVersion(filepath.Join(dir, "bin")); err == nil {
		t.Error("no version printed: want an error")
	}
}

// TestStowageImage_ToolsRunFromTheImageAlone unpacks the image's layer
// and runs its tools chrooted into it (root): mkfs.ext4 makes a file
// system and blkid reads it back, with nothing from the host but the
// kernel, so the image carries every library they load.
func TestStowageImage_ToolsRunFromTheImageAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	img, err := StowageImage(self, "v0.test", []string{"mkfs.ext4", "blkid"}, func(string) (string, string, error) { return "p", "1", nil })
	if err != nil {
		t.Fatal(err)
	}
	root := unpackImage(t, img)
	if err := os.WriteFile(filepath.Join(root, "tmp", "fs.img"), make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	mkfs, _ := exec.LookPath("mkfs.ext4")
	blkid, _ := exec.LookPath("blkid")
	run := func(args ...string) string {
		c := exec.Command(args[0], args[1:]...)
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		c.Dir = "/"
		c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("%v in the image: %v: %s", args, err, out)
		}
		return string(out)
	}
	run(mkfs, "-q", "-F", "-L", "imgtest", "/tmp/fs.img")
	if out := run(blkid, "/tmp/fs.img"); !strings.Contains(out, `LABEL="imgtest"`) || !strings.Contains(out, `TYPE="ext4"`) {
		t.Fatalf("blkid in the image: %s", out)
	}
}

// unpackImage writes img's one layer into a new directory, as a container
// runtime would.
func unpackImage(t *testing.T, img Image) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := WriteOCIArchive(&buf, img); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for p, data := range layerFiles(t, buf.Bytes()) {
		dst := filepath.Join(root, p)
		if strings.HasSuffix(p, "/tmp") || p == "/" {
			os.MkdirAll(dst, 0o1777)
			continue
		}
		if target, ok := strings.CutPrefix(string(data), "-> "); ok {
			os.MkdirAll(filepath.Dir(dst), 0o755)
			if err := os.Symlink(target, dst); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if len(data) == 0 {
			os.MkdirAll(dst, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// A storage host's nfs-ganesha runs from the image alone: chrooted into
// the unpacked image (in a mount namespace of its own, with /proc and
// /dev as a container runtime gives them, and the state directory bound
// in at its own path), it serves an export that a FUSE NFS client mounts
// and reads.
func TestStowageImage_GaneshaServesFromTheImageAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot, mount namespaces and FUSE need root")
	}
	if _, err := exec.LookPath("ganesha.nfsd"); err != nil {
		t.Skip("needs ganesha.nfsd (Debian nfs-ganesha, nfs-ganesha-vfs; hack/setup.sh)")
	}
	host, err := StorageHostTools()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	img, err := StowageImage(self, "v0.test", host, func(string) (string, string, error) { return "p", "1", nil })
	if err != nil {
		t.Fatal(err)
	}
	root := unpackImage(t, img)
	state := t.TempDir()
	tree := filepath.Join(state, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "hello"), []byte("served from the image"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Only the daemon comes from the image; the wrapper sets up what the
	// runtime would, in a mount namespace that ends with the daemon.
	wrapper := filepath.Join(t.TempDir(), "ganesha-in-image")
	script := `#!/bin/sh
set -e
r=$1; d=$2; shift 2
mkdir -p "$r/proc" "$r/dev" "$r$d"
mount -t proc proc "$r/proc"
mount --rbind /dev "$r/dev"
mount --bind "$d" "$r$d"
exec chroot "$r" /usr/bin/ganesha.nfsd "$@"
`
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(wrapper), "run")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec unshare -m --propagation private "+wrapper+" "+root+" "+state+` "$@"`+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ex := files.Export{ID: 3, AccessPointID: "fsap-00000000000000003", Path: tree, Pseudo: "/fsap-00000000000000003", Squash: true, AnonUID: 0, AnonGID: 0, ReadOnly: true}
	g, err := files.StartGanesha(ctx, files.GaneshaConfig{Binary: bin, StateDir: filepath.Join(state, "ganesha"), Port: port, Graceless: true}, []files.Export{ex})
	if err != nil {
		t.Fatalf("nfs-ganesha from the image: %v", err)
	}
	defer g.Stop()
	target := filepath.Join(t.TempDir(), "mnt")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := nfsmount.New(ctx, nfsmount.Options{Server: g.Address(), Export: ex.Pseudo, Target: target, ReadOnly: true})
	if err != nil {
		log, _ := os.ReadFile(g.LogPath())
		t.Fatalf("mount the image's nfs-ganesha export: %v\nnfs-ganesha's log:\n%s", err, log)
	}
	defer func() {
		if err := m.Unmount(time.Second); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
		m.Close()
	}()
	if got, err := os.ReadFile(filepath.Join(target, "hello")); err != nil || string(got) != "served from the image" {
		t.Fatalf("read through the image's nfs-ganesha: %q, %v", got, err)
	}
}
