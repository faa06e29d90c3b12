// Package apitls is TLS for the Stowage API's TCP endpoints: the server's
// certificate, read again when its files change (a certificate renewed on
// disk is served without a restart), and the clients' trust in it. Unix
// sockets stay in clear: the kernel vouches for their peers.
package apitls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// ServerConfig serves the certificate and key of the PEM files certFile
// and keyFile, both HTTP/2 (gRPC) and HTTP/1.1 (the HTTP/JSON API). A
// pair that does not load is an error now; one that stops loading later
// keeps the last good certificate in use, and is logged by the caller's
// next handshake error.
func ServerConfig(certFile, keyFile string) (*tls.Config, error) {
	r := &reloader{certFile: certFile, keyFile: keyFile}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() },
	}, nil
}

type reloader struct {
	certFile, keyFile string

	mu              sync.Mutex
	cur             *tls.Certificate
	certMod, keyMod time.Time
}

// get is the certificate, loaded again when either file's modification
// time changed since the last load.
func (r *reloader) get() (*tls.Certificate, error) {
	cs, cerr := os.Stat(r.certFile)
	ks, kerr := os.Stat(r.keyFile)
	r.mu.Lock()
	defer r.mu.Unlock()
	if cerr == nil && kerr == nil && r.cur != nil && cs.ModTime().Equal(r.certMod) && ks.ModTime().Equal(r.keyMod) {
		return r.cur, nil
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cur != nil {
			// Mid-renewal (one file written, not the other): the last
			// good one.
			return r.cur, nil
		}
		return nil, fmt.Errorf("TLS certificate %s with key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cur = &c
	if cerr == nil && kerr == nil {
		r.certMod, r.keyMod = cs.ModTime(), ks.ModTime()
	}
	return r.cur, nil
}

// ClientCredentials trusts the server certificates that the PEM bundle
// caFile signs (and no other), checking the name or address dialled
// against the certificate's.
func ClientCredentials(caFile string) (credentials.TransportCredentials, error) {
	c, err := ClientConfig(caFile)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(c), nil
}

// ClientConfig is ClientCredentials' tls.Config, for HTTP clients.
func ClientConfig(caFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("the Stowage API's CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the Stowage API's CA file %s holds no PEM certificate", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}
