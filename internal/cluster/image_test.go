package cluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// readArchive returns the files of a tar by name.
func readArchive(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeSymlink {
			data = []byte("-> " + h.Linkname)
		}
		files[h.Name] = data
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestWriteOCIArchive_IsAValidImageLayout(t *testing.T) {
	img := Image{
		Name:       "docker.io/library/test:1.0",
		Entrypoint: []string{"/bin/app"},
		Env:        []string{"PATH=/bin"},
		Files: []ImageFile{
			{Path: "/bin/app", Mode: 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
			{Path: "/bin/sh", Symlink: "/bin/app"},
			{Path: "/usr/share/x/y.txt", Mode: 0o644, Data: []byte("y")},
			{Path: "/tmp", Mode: 0o1777, Dir: true},
		},
	}
	var buf bytes.Buffer
	manifestDigest, err := WriteOCIArchive(&buf, img)
	if err != nil {
		t.Fatal(err)
	}
	files := readArchive(t, buf.Bytes())
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", files["oci-layout"])
	}
	// Every blob is stored under its own digest.
	for name, data := range files {
		if strings.HasPrefix(name, "blobs/sha256/") && !strings.HasSuffix(name, "/") {
			if want := "blobs/sha256/" + strings.TrimPrefix(sha(data), "sha256:"); name != want {
				t.Errorf("blob %s has digest %s", name, sha(data))
			}
		}
	}
	var index struct {
		SchemaVersion int          `json:"schemaVersion"`
		Manifests     []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if index.SchemaVersion != 2 || len(index.Manifests) != 1 {
		t.Fatalf("index: %s", files["index.json"])
	}
	md := index.Manifests[0]
	if md.Digest != manifestDigest || md.MediaType != mediaTypeManifest || md.Platform == nil || md.Platform.OS != "linux" {
		t.Errorf("index descriptor: %+v", md)
	}
	if md.Annotations[annotationContainerdRef] != img.Name || md.Annotations[annotationRefName] != "1.0" {
		t.Errorf("annotations: %v", md.Annotations)
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		if int64(len(b)) != d.Size {
			t.Errorf("blob %s: size %d, descriptor says %d", d.Digest, len(b), d.Size)
		}
		return b
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(md), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		Architecture string `json:"architecture"`
		Config       struct {
			Entrypoint []string `json:"Entrypoint"`
			Env        []string `json:"Env"`
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("uncompressed layer's diff_id must be its digest: manifest %+v, config %+v", manifest, config)
	}
	if config.Config.Entrypoint[0] != "/bin/app" || config.Architecture == "" {
		t.Errorf("config: %+v", config)
	}
	layer := readArchive(t, blob(manifest.Layers[0]))
	for name, want := range map[string]string{
		"bin/app":           "#!/bin/sh\necho hi\n",
		"bin/sh":            "-> /bin/app",
		"usr/share/x/y.txt": "y",
		"usr/":              "",
		"usr/share/":        "",
		"usr/share/x/":      "",
		"tmp/":              "",
	} {
		got, ok := layer[name]
		if !ok {
			t.Errorf("layer has no %s (has %v)", name, keys(layer))
		} else if string(got) != want {
			t.Errorf("layer %s = %q, want %q", name, got, want)
		}
	}

	// The same image gives the same digest: `up` relies on it to skip
	// importing an image containerd has.
	var again bytes.Buffer
	if d, _ := WriteOCIArchive(&again, img); d != manifestDigest || !bytes.Equal(again.Bytes(), buf.Bytes()) {
		t.Error("writing the same image twice gave different archives")
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

func TestWriteOCIArchive_RefusesANameWithoutTag(t *testing.T) {
	if _, err := WriteOCIArchive(io.Discard, Image{Name: "localhost:5000/x"}); err == nil {
		t.Error("a name without tag (the port is not a tag) was accepted")
	}
}

func TestPauseImageFiles_CarriesTheLoaderOfADynamicBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	interp, _, _, err := elfDeps(exe)
	if err != nil {
		t.Fatal(err)
	}
	img, err := PauseImageFiles(exe)
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, f := range img.Files {
		paths[f.Path] = true
	}
	if !paths["/stowage"] || img.Entrypoint[0] != "/stowage" || img.Entrypoint[1] != "pause" {
		t.Errorf("pause image: entrypoint %v, files %v", img.Entrypoint, paths)
	}
	if interp != "" && !paths[interp] {
		t.Errorf("dynamically linked (%s) but the image lacks the interpreter: %v", interp, paths)
	}
	if interp == "" && len(img.Files) != 1 {
		t.Errorf("a static binary needs nothing else, got %v", paths)
	}
}

func TestBusyboxImageFiles(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed")
	}
	img, err := BusyboxImageFiles(bb)
	if err != nil {
		if strings.Contains(err.Error(), "dynamically linked") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	links := map[string]string{}
	for _, f := range img.Files {
		links[f.Path] = f.Symlink
	}
	if links["/bin/sh"] != "/bin/busybox" {
		t.Errorf("/bin/sh -> %q, want /bin/busybox", links["/bin/sh"])
	}
	if _, ok := links["/etc/passwd"]; !ok {
		t.Error("no /etc/passwd")
	}
	if img.Name != BusyboxImage {
		t.Errorf("name %s", img.Name)
	}
}
