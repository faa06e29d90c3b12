package cluster

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// The images a cluster of the user's own needs to run Stowage (issue 10):
// `stowage` itself with the tools its roles call, and the upstream
// sidecars and the Secrets Store driver from the binaries the build makes.
// No registry is reachable and there is no Docker engine: each is one
// layer of files from this machine (Debian packages' installed files and
// our binaries), written with fixed times and owners, so the same inputs
// give the same digests.

// ImageRepo is where the images are named; push them to your registry
// under another name with `ctr images tag` + `ctr images push`.
const ImageRepo = "localhost/stowage"

// NodeTools are the programs the node plugin runs (mkfs, grow, check,
// identify, loop devices, mounts), its own and mount-utils' (blockdev for
// the read-only bit and sizes, fsck and its helpers before a mount);
// every one must be on this machine.
var NodeTools = []string{
	"mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs", "e2fsck", "xfs_repair", "dumpe2fs",
	"fsck", "fsck.ext4", "fsck.xfs", "blockdev",
	"blkid", "losetup", "mount", "umount",
	// fsck.xfs is a /bin/sh script.
	"dash",
}

// StorageHostTools are what a storage host (`stowage agent`, or the
// server with its file pools) runs: nfs-ganesha with its VFS back end (a
// plugin it loads by name, so no ELF names it) and libtirpc's
// /etc/netconfig, without which ganesha cannot listen, and mkfs.btrfs for
// a file pool given a size. The plugin's path
// is found on this machine.
func StorageHostTools() ([]string, error) {
	plugins, _ := filepath.Glob("/usr/lib/*/ganesha/libfsalvfs.so")
	if len(plugins) == 0 {
		return nil, fmt.Errorf("the stowage image needs nfs-ganesha's VFS back end (libfsalvfs.so under /usr/lib/<arch>/ganesha): install nfs-ganesha-vfs (hack/setup.sh)")
	}
	// A file pool given a size is a btrfs image the server makes.
	return []string{"ganesha.nfsd", plugins[0], "/etc/netconfig", "mkfs.btrfs"}, nil
}

// SidecarBinaries are the upstream components that get an image each,
// named after the binary and tagged with the version it reports.
var SidecarBinaries = []string{
	"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter",
	"snapshot-controller", "secrets-store-csi-driver",
}

// PackageOf is the Debian package that installed path and its version,
// from dpkg's database (the pin the image records).
type PackageOf func(path string) (pkg, version string, err error)

// DpkgPackageOf asks dpkg-query.
func DpkgPackageOf(p string) (string, string, error) {
	// Debian 12 has merged /usr, and libraries are symlinks: dpkg may know
	// the file as /usr/lib/…, /sbin/… or by the symlink's target.
	cands := []string{p}
	if real, err := filepath.EvalSymlinks(p); err == nil && real != p {
		cands = append(cands, real)
	}
	for _, c := range cands[:len(cands):len(cands)] {
		if alt, ok := strings.CutPrefix(c, "/usr"); ok {
			cands = append(cands, alt)
		} else {
			cands = append(cands, "/usr"+c)
		}
	}
	var out []byte
	var err error
	for _, c := range cands {
		if out, err = exec.Command("dpkg-query", "-S", c).Output(); err == nil {
			break
		}
	}
	if err != nil {
		return "", "", fmt.Errorf("dpkg-query -S %s: no Debian package installed it (tried %s)", p, strings.Join(cands, ", "))
	}
	pkg, _, _ := strings.Cut(strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]), ":")
	pkg = strings.TrimSpace(strings.Split(pkg, ",")[0])
	v, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("dpkg-query -W %s: %w", pkg, err)
	}
	return pkg, string(v), nil
}

// StowageImage is the multi-call binary at /usr/bin/stowage with the
// tools (each with its ELF loader and libraries; a tool given by its
// absolute path is taken from there: a plugin with its libraries, or a
// plain file as it is) and
// /usr/share/stowage/packages.json: every file from a Debian package, with
// the package and its version. tag is the image's tag (the stowage
// version).
func StowageImage(stowage, tag string, tools []string, packageOf PackageOf) (Image, error) {
	files, err := elfWithLibraries(stowage, "/usr/bin/stowage")
	if err != nil {
		return Image{}, err
	}
	for _, t := range tools {
		more, err := toolFiles("stowage", t)
		if err != nil {
			return Image{}, err
		}
		files = append(files, more...)
	}
	files = dedupe(files)
	type pinned struct {
		Path    string `json:"path"`
		Package string `json:"package"`
		Version string `json:"version"`
	}
	var pins []pinned
	for _, f := range files {
		if f.Path == "/usr/bin/stowage" || f.Symlink != "" || f.Dir {
			continue
		}
		pkg, v, err := packageOf(f.Path)
		if err != nil {
			return Image{}, err
		}
		pins = append(pins, pinned{f.Path, pkg, v})
	}
	pj, err := json.MarshalIndent(pins, "", "  ")
	if err != nil {
		return Image{}, err
	}
	files = append(files,
		ImageFile{Path: "/usr/share/stowage/packages.json", Mode: 0o644, Data: append(pj, '\n')},
		ImageFile{Path: "/tmp", Mode: 0o1777, Dir: true},
		ImageFile{Path: "/etc/mtab", Symlink: "/proc/mounts"},
	)
	if slices.ContainsFunc(files, func(f ImageFile) bool { return f.Path == "/usr/bin/dash" }) {
		files = append(files, ImageFile{Path: "/bin/sh", Symlink: "/usr/bin/dash"})
	}
	return Image{
		Name:       ImageRepo + "/stowage:" + tag,
		Entrypoint: []string{"/usr/bin/stowage"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Files:      files,
	}, nil
}

// toolFiles are the files of tool t in image: found on PATH unless t is an
// absolute path, with its libraries when it is an ELF object.
func toolFiles(image, t string) ([]ImageFile, error) {
	p := t
	if !filepath.IsAbs(t) {
		var err error
		if p, err = exec.LookPath(t); err == nil {
			p, err = filepath.Abs(p)
		}
		if err != nil {
			return nil, fmt.Errorf("the %s image needs %s: %w (install its Debian package: hack/setup.sh)", image, t, err)
		}
	}
	files, err := fileOrELF(p)
	if err != nil {
		if filepath.IsAbs(t) {
			return nil, fmt.Errorf("the %s image needs %s: %w (install its Debian package: hack/setup.sh)", image, t, err)
		}
		return nil, fmt.Errorf("tool %s: %w", t, err)
	}
	return files, nil
}

// fileOrELF is p with its libraries when it is an ELF object, else p's
// bytes with its permissions.
func fileOrELF(p string) ([]ImageFile, error) {
	f, err := elf.Open(p)
	if err == nil {
		f.Close()
		return elfWithLibraries(p, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return []ImageFile{{Path: p, Mode: int64(st.Mode().Perm()), Data: b}}, nil
}

// SidecarImage is one upstream binary of the build at /<name>, its
// entrypoint, tagged with the version `<bin> --version` reports.
// With it go the programs it runs (SidecarTools).
func SidecarImage(bin string) (Image, error) {
	name := filepath.Base(bin)
	v, err := binaryVersion(bin)
	if err != nil {
		return Image{}, err
	}
	files, err := elfWithLibraries(bin, "/"+name)
	if err != nil {
		return Image{}, err
	}
	img := Image{Name: ImageRepo + "/" + name + ":" + v, Entrypoint: []string{"/" + name}}
	for _, t := range SidecarTools[name] {
		more, err := toolFiles(name, t)
		if err != nil {
			return Image{}, err
		}
		files = append(files, more...)
		img.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	img.Files = dedupe(files)
	return img, nil
}

// RoleImages are the images the chart runs: the stowage image of binary
// stowage, tagged tag, with the node's and a storage host's tools, and one
// image per upstream sidecar of binDir. `stowage images build` and
// `stowage up --install=chart` make them.
func RoleImages(stowage, binDir, tag string) ([]Image, error) {
	host, err := StorageHostTools()
	if err != nil {
		return nil, err
	}
	img, err := StowageImage(stowage, tag, append(slices.Clone(NodeTools), host...), DpkgPackageOf)
	if err != nil {
		return nil, err
	}
	imgs := []Image{img}
	for _, b := range SidecarBinaries {
		p := filepath.Join(binDir, b)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("sidecar %s: %w (hack/build-components.sh builds it into %s)", b, err, binDir)
		}
		img, err := SidecarImage(p)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

// SidecarTools are the programs an upstream sidecar runs: the Secrets
// Store driver mounts each pod's secrets volume as a tmpfs with mount(8).
var SidecarTools = map[string][]string{
	"secrets-store-csi-driver": {"mount", "umount"},
}

var versionRE = regexp.MustCompile(`v\d+\.\d+\.\d+[0-9A-Za-z.+-]*`)

// binaryVersion is the first vX.Y.Z in `bin --version`'s output (the
// sidecars print "csi-provisioner v5.1.0", the Secrets Store driver JSON).
func binaryVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w: %s", bin, err, out)
	}
	v := versionRE.FindString(string(out))
	if v == "" {
		return "", fmt.Errorf("%s --version printed no vX.Y.Z: %q", bin, out)
	}
	return strings.NewReplacer("+", "_").Replace(v), nil
}

// dedupe keeps the first file of each path (tools share libraries), in
// path order.
func dedupe(files []ImageFile) []ImageFile {
	seen := map[string]bool{}
	var out []ImageFile
	for _, f := range files {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// WriteImages writes each image as <dir>/<name>_<tag>.oci.tar and returns
// the files with their manifest digests, for `ctr images import`.
func WriteImages(dir string, imgs []Image) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	written := map[string]string{}
	for _, img := range imgs {
		repo, tag, _ := splitRef(img.Name)
		p := filepath.Join(dir, filepath.Base(repo)+"_"+tag+".oci.tar")
		f, err := os.Create(p + ".tmp")
		if err != nil {
			return nil, err
		}
		d, err := WriteOCIArchive(f, img)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(p+".tmp", p)
		}
		if err != nil {
			os.Remove(p + ".tmp")
			return nil, fmt.Errorf("image %s: %w", img.Name, err)
		}
		written[p] = d
	}
	return written, nil
}
