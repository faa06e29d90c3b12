package apitls

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/testutil/testcerts"
)

// serial is the serial number of the certificate a TLS server with cfg
// presents to a client trusting ca.
func serial(t *testing.T, cfg *tls.Config, caFile string) int64 {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	cc, err := ClientConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", l.Addr().String(), cc)
	if err != nil {
		t.Fatalf("TLS to the server: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// A renewed certificate is served from the next handshake on, without a
// restart; a pair that does not load keeps the last good one; a pair
// that never loaded is refused at start, naming the files.
func TestServerConfig_ServesTheRenewedCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, dir, "ca")
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, cert, key, 100, []string{"127.0.0.1"})
	cfg, err := ServerConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if got := serial(t, cfg, ca.File); got != 100 {
		t.Fatalf("serial %d, want 100", got)
	}
	time.Sleep(10 * time.Millisecond) // a later modification time
	ca.Issue(t, cert, key, 101, []string{"127.0.0.1"})
	if got := serial(t, cfg, ca.File); got != 101 {
		t.Fatalf("after the renewal: serial %d, want 101", got)
	}
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(cert, []byte("half written"), 0o644)
	if got := serial(t, cfg, ca.File); got != 101 {
		t.Fatalf("with a broken certificate file: serial %d, want the last good one, 101", got)
	}
	if _, err := ServerConfig(filepath.Join(dir, "none.crt"), key); err == nil || !strings.Contains(err.Error(), "none.crt") {
		t.Fatalf("ServerConfig with a missing certificate: %v, want an error naming it", err)
	}
}

// A client trusts only what its CA signs, and checks the address.
func TestClientConfig_TrustsOnlyItsCA(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, dir, "ca")
	other := testcerts.NewCA(t, dir, "other")
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, cert, key, 7, []string{"127.0.0.2"})
	cfg, err := ServerConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	for name, caFile := range map[string]string{"another CA": other.File, "a certificate for another address": ca.File} {
		cc, err := ClientConfig(caFile)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := tls.Dial("tcp", l.Addr().String(), cc); err == nil {
			c.Close()
			t.Errorf("%s: the client trusted the server", name)
		}
	}
	if _, err := ClientConfig(filepath.Join(dir, "tls.key")); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a CA file without a certificate: %v", err)
	}
}
