package cluster

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"testing"
)

// layerEntries returns the type and link target of each entry of a layer.
func layerEntries(t *testing.T, files []ImageFile) map[string]*tar.Header {
	t.Helper()
	layer, err := layerTar(files)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return entries
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[h.Name] = h
	}
}

func TestE2EImages_NamesAndWhatTheSuitesNeed(t *testing.T) {
	for _, p := range []string{"/bin/busybox", "/bin/dd", "/bin/dash"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s: %v (needs busybox-static, coreutils and dash)", p, err)
		}
	}
	// busybox-static stands in for agnhost: any static binary will do.
	imgs, err := E2EImages(E2EImageSources{Busybox: "/bin/busybox", Agnhost: "/bin/busybox", DD: "/bin/dd", Dash: "/bin/dash"})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Image{}
	for _, img := range imgs {
		byName[img.Name] = img
	}
	for _, name := range []string{E2EBusyboxImage, E2EAgnhostImage, E2ENginxImage, E2EJessieDnsutilsImage} {
		if _, ok := byName[name]; !ok {
			t.Fatalf("no image %s among %d", name, len(imgs))
		}
	}

	agn := byName[E2EAgnhostImage]
	if len(agn.Entrypoint) != 1 || agn.Entrypoint[0] != "/agnhost" || len(agn.Cmd) != 1 || agn.Cmd[0] != "pause" {
		t.Errorf("agnhost entrypoint %q cmd %q, want [/agnhost] [pause]", agn.Entrypoint, agn.Cmd)
	}
	if e := layerEntries(t, agn.Files); e["agnhost"] == nil || e["agnhost"].Typeflag != tar.TypeReg || e["bin/sh"] == nil {
		t.Errorf("agnhost image lacks /agnhost or a shell")
	}

	// jessie-dnsutils: GNU dd and a shell that is not busybox (busybox sh
	// would run its own dd), both regular files replacing busybox's links.
	e := layerEntries(t, byName[E2EJessieDnsutilsImage].Files)
	for _, p := range []string{"bin/dd", "bin/sh"} {
		if e[p] == nil || e[p].Typeflag != tar.TypeReg {
			t.Errorf("jessie-dnsutils: %s is not a regular file: %+v", p, e[p])
		}
	}
	if e["usr/bin/sha256sum"] == nil || e["sbin/blockdev"] == nil {
		t.Errorf("jessie-dnsutils lacks busybox's sha256sum or blockdev")
	}
	// The busybox image keeps busybox's own dd.
	if e := layerEntries(t, byName[E2EBusyboxImage].Files); e["bin/dd"] == nil || e["bin/dd"].Typeflag != tar.TypeSymlink {
		t.Errorf("busybox image: bin/dd should be busybox's applet link")
	}
}

func TestImportImage_RefusesAnUntaggedName(t *testing.T) {
	if _, err := ImportImage(t.Context(), "ctr", "/nonexistent.sock", t.TempDir(), Image{Name: "busybox"}); err == nil {
		t.Fatal("ImportImage accepted an image name without a tag")
	}
}
