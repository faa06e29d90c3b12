package cluster

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// The images the Kubernetes external storage suite (e2e.test of Kubernetes
// v1.33.13) runs its pods from, under the exact names it asks for
// (k8s.io/kubernetes/test/utils/image, manifest.go). No registry is
// reachable, so each is built from files on this machine; test/conformance
// builds and imports them (hack/e2e-images.sh).
const (
	// E2EBusyboxImage is the suites' default test image (shell, dd,
	// sha256sum, stat, chgrp, ...).
	E2EBusyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
	// E2EAgnhostImage runs `agnhost mounttest` in the subPath suite.
	E2EAgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.53"
	// E2ENginxImage is used by the volumes suite's "should allow exec of
	// files on the volume" only for its shell (the test gives the command).
	E2ENginxImage = "registry.k8s.io/e2e-test-images/nginx:1.14-4"
	// E2EJessieDnsutilsImage is the multiVolume suite's image for concurrent
	// access to one volume; on block volumes it writes with GNU dd's
	// oflag=nocache, which busybox dd lacks (and busybox sh runs its own
	// applets before anything on PATH, so the image's shell is dash).
	E2EJessieDnsutilsImage = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7"
)

// E2EImageSources are the host files the e2e images are made of.
type E2EImageSources struct {
	Busybox string // a static busybox (Debian's busybox-static: /bin/busybox)
	Agnhost string // a static agnhost binary (k8s.io/kubernetes/test/images/agnhost)
	DD      string // GNU coreutils dd (/bin/dd), copied with its ELF loader and libraries
	Dash    string // dash (/bin/dash), likewise: the jessie-dnsutils image's /bin/sh
}

// E2EImages builds the four images. Each is one layer on busybox's files:
//   - busybox: busybox-static 1.35 with a symlink per applet (the upstream
//     image is busybox 1.36.1; the suites use only common applets);
//   - agnhost: busybox plus /agnhost (and the /agnhost-2 link, the uploads
//     directory and the user and group the upstream image defines),
//     entrypoint /agnhost, command pause, as upstream;
//   - nginx: busybox whose default command serves /usr/share/nginx/html on
//     port 80 with busybox httpd, the role nginx has in the upstream image;
//   - jessie-dnsutils: busybox with GNU dd in place of busybox's dd (the
//     suite needs oflag=nocache) and dash as /bin/sh, as on Debian (busybox
//     sh would run its own dd whatever PATH says); no dig/nslookup (no
//     storage test uses them).
func E2EImages(src E2EImageSources) ([]Image, error) {
	base, err := BusyboxImageFiles(src.Busybox)
	if err != nil {
		return nil, err
	}
	with := func(name string, extra []ImageFile) Image {
		img := base
		img.Name = name
		img.Files = append(append([]ImageFile(nil), base.Files...), extra...)
		return img
	}

	busybox := with(E2EBusyboxImage, nil)

	agnhost, err := os.ReadFile(src.Agnhost)
	if err != nil {
		return nil, err
	}
	if interp, _, _, err := elfDeps(src.Agnhost); err != nil {
		return nil, err
	} else if interp != "" {
		return nil, fmt.Errorf("%s is dynamically linked; build agnhost with CGO_ENABLED=0", src.Agnhost)
	}
	agn := with(E2EAgnhostImage, []ImageFile{
		{Path: "/agnhost", Mode: 0o755, Data: agnhost},
		{Path: "/agnhost-2", Symlink: "agnhost"},
		{Path: "/uploads", Mode: 0o755, Dir: true},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n" +
			"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nuser-defined-in-image:x:1000:\n" +
			"group-defined-in-image:x:50000:user-defined-in-image\nnogroup:x:65534:\n")},
		{Path: "/home/user-defined-in-image", Mode: 0o755, Dir: true},
	})
	agn.Entrypoint, agn.Cmd = []string{"/agnhost"}, []string{"pause"}

	nginx := with(E2ENginxImage, []ImageFile{
		{Path: "/usr/share/nginx/html/index.html", Mode: 0o644, Data: []byte("<!DOCTYPE html>\n<title>Welcome</title>\n<p>busybox httpd standing in for nginx</p>\n")},
	})
	nginx.Cmd = []string{"httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"}

	dd, err := elfWithLibraries(src.DD, "/bin/dd")
	if err != nil {
		return nil, err
	}
	dash, err := elfWithLibraries(src.Dash, "/bin/sh")
	if err != nil {
		return nil, err
	}
	jessie := with(E2EJessieDnsutilsImage, append(dd, dash...))

	return []Image{busybox, agn, nginx, jessie}, nil
}

// ImportImage writes img as an OCI archive under dir and imports it into the
// k8s.io namespace of the containerd at socket with ctr, unless that exact
// manifest is there already under img.Name; it reports whether it imported.
// It is what `stowage up` does with its own images.
func ImportImage(ctx context.Context, ctr, socket, dir string, img Image) (bool, error) {
	if !strings.Contains(img.Name, ":") {
		return false, fmt.Errorf("image name %q has no tag", img.Name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	return importImage(ctx, ctr, socket, dir, img)
}
