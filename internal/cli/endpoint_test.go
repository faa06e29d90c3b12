package cli

import (
	"strings"
	"testing"
)

func TestResolveEndpoint_Order(t *testing.T) {
	const defaultSock = "/var/lib/stowage/run/stowage-api.sock"
	for _, tc := range []struct {
		name       string
		flag       string
		env        map[string]string
		sockets    []string
		want       string
		wantSource string
	}{
		{name: "flag wins", flag: "10.0.0.1:1", env: map[string]string{"STOWAGE_ENDPOINT": "unix:///e"}, sockets: []string{defaultSock},
			want: "10.0.0.1:1", wantSource: "--endpoint"},
		{name: "env before the local cluster", env: map[string]string{"STOWAGE_ENDPOINT": "unix:///e"}, sockets: []string{defaultSock},
			want: "unix:///e", wantSource: "STOWAGE_ENDPOINT"},
		{name: "local cluster at the default data dir", sockets: []string{defaultSock},
			want: "unix://" + defaultSock, wantSource: "local cluster"},
		{name: "local cluster at STOWAGE_DATA_DIR", env: map[string]string{"STOWAGE_DATA_DIR": "/d"}, sockets: []string{"/d/run/stowage-api.sock", defaultSock},
			want: "unix:///d/run/stowage-api.sock", wantSource: "STOWAGE_DATA_DIR"},
		{name: "nothing: the server's default address", want: DefaultEndpoint, wantSource: "default address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exists := func(p string) bool {
				for _, s := range tc.sockets {
					if s == p {
						return true
					}
				}
				return false
			}
			got := resolveEndpoint(tc.flag, func(k string) string { return tc.env[k] }, exists)
			if got.endpoint != tc.want || !strings.Contains(got.source, tc.wantSource) {
				t.Errorf("resolveEndpoint = %q from %q; want %q from something with %q", got.endpoint, got.source, tc.want, tc.wantSource)
			}
		})
	}
}

// When nothing answers, the message says where the CLI looked and how to
// point it elsewhere.
func TestResolveEndpoint_UnreachableSaysWhereItLooked(t *testing.T) {
	e := resolveEndpoint("", func(string) string { return "" }, func(string) bool { return false })
	msg := e.unreachable("connection refused")
	for _, want := range []string{DefaultEndpoint, "STOWAGE_ENDPOINT is not set", "/var/lib/stowage/run/stowage-api.sock", "--endpoint", "stowage up", "connection refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
}
