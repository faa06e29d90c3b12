package cluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// OCI media types and annotations (image-spec v1.1; containerd's name
// annotation is what `ctr images import` names the image by).
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"

	annotationRefName       = "org.opencontainers.image.ref.name"
	annotationContainerdRef = "io.containerd.image.name"
)

// ImageFile is one entry of an image's only layer.
type ImageFile struct {
	Path    string // absolute, in the image
	Mode    int64  // permission bits
	Data    []byte // regular file content
	Symlink string // when set, a symlink to this target
	Dir     bool
}

// Image is a single-layer image built from files: enough for a pause
// process and a busybox, which no registry can serve here.
type Image struct {
	Name       string // full reference: docker.io/library/busybox:1.36
	Entrypoint []string
	Cmd        []string
	Env        []string
	Files      []ImageFile
}

// epoch is every timestamp in our images, so that the same files always
// give the same digests and `up` can tell an image is already imported.
var epoch = time.Unix(0, 0).UTC()

// layerTar writes the files as a tar with their parent directories, in
// name order, with fixed owners and times.
func layerTar(files []ImageFile) ([]byte, error) {
	entries := map[string]ImageFile{}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" {
			continue
		}
		f.Path = p
		entries[p] = f
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = ImageFile{Path: d, Dir: true, Mode: 0o755}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		f := entries[n]
		h := &tar.Header{Name: n, Mode: f.Mode, ModTime: epoch, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, n+"/"
		case f.Symlink != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Symlink
			if h.Mode == 0 {
				h.Mode = 0o777
			}
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// blob is content addressed by its digest.
type blob struct {
	digest string
	data   []byte
}

// WriteOCIArchive writes img as a tar of an OCI image layout (oci-layout,
// index.json, blobs/sha256/…), which `ctr images import` reads, and returns
// the manifest digest.
func WriteOCIArchive(w io.Writer, img Image) (string, error) {
	_, tag, ok := splitRef(img.Name)
	if !ok {
		return "", fmt.Errorf("image name %q has no tag", img.Name)
	}
	layer, err := layerTar(img.Files)
	if err != nil {
		return "", err
	}
	layerDigest := digestOf(layer)
	config := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"Env":        img.Env,
			"Entrypoint": img.Entrypoint,
			"Cmd":        img.Cmd,
			"WorkingDir": "/",
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		"history": []any{map[string]any{"created": epoch.Format(time.RFC3339), "created_by": "stowage up"}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return "", err
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        descriptor{MediaType: mediaTypeConfig, Digest: digestOf(configJSON), Size: int64(len(configJSON))},
		"layers":        []descriptor{{MediaType: mediaTypeLayer, Digest: layerDigest, Size: int64(len(layer))}},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return "", err
	}
	manifestDigest := digestOf(manifestJSON)
	index := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeIndex,
		"manifests": []descriptor{{
			MediaType: mediaTypeManifest, Digest: manifestDigest, Size: int64(len(manifestJSON)),
			Platform:    &platform{Architecture: runtime.GOARCH, OS: "linux"},
			Annotations: map[string]string{annotationContainerdRef: img.Name, annotationRefName: tag},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return "", err
	}

	tw := tar.NewWriter(w)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return "", err
	}
	if err := add("index.json", indexJSON); err != nil {
		return "", err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
			return "", err
		}
	}
	for _, b := range []blob{{layerDigest, layer}, {digestOf(configJSON), configJSON}, {manifestDigest, manifestJSON}} {
		if err := add("blobs/sha256/"+strings.TrimPrefix(b.digest, "sha256:"), b.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return manifestDigest, nil
}

// splitRef splits name:tag (the tag after the last colon that follows the
// last slash, so registry ports are not taken for tags).
func splitRef(name string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(name, ':')
	if i < 0 || i < strings.LastIndexByte(name, '/') {
		return name, "", false
	}
	return name[:i], name[i+1:], name[i+1:] != ""
}
