// Package httpapi serves the Stowage API as HTTP/JSON beside gRPC, for
// scripts and languages without generated clients. It speaks the Connect
// protocol (connectrpc.com): a call is `POST /<package>.<Service>/<Method>`
// with a JSON body and `Content-Type: application/json`; the answer is
// the response message as JSON, or an error object {"code", "message"}
// with the HTTP status Connect maps the gRPC code to. gRPC-Web works on
// the same port.
//
// Calls are transcoded onto the server's own grpc.Server
// (connectrpc.com/vanguard), so they pass through the same interceptors
// as gRPC: authentication, authorisation, the standby's refusal, metrics.
// Over HTTP a caller always authenticates with a bearer token
// (`Authorization: Bearer <token>`): there are no unix-socket peer
// credentials, so root on the machine is not the admin here.
package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/vanguard/vanguardgrpc"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
)

// Handler is the HTTP/JSON API over g's services. Register every service
// on g before calling it: the services are read once.
func Handler(g *grpc.Server) (http.Handler, error) {
	tc, err := vanguardgrpc.NewTranscoder(g)
	if err != nil {
		return nil, fmt.Errorf("HTTP/JSON API: %w", err)
	}
	// h2c: HTTP/2 without TLS as well as HTTP/1.1, for Connect clients that
	// stream.
	return h2c.NewHandler(connectByDefault(tc), &http2.Server{}), nil
}

// connectByDefault marks a POST of JSON or proto without the
// Connect-Protocol-Version header as a Connect call, so that a plain
// `curl -d '{...}' -H 'Content-Type: application/json'` works: the
// transcoder otherwise takes it for a REST call and answers 404.
func connectByDefault(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.Header.Get("Connect-Protocol-Version") == "" {
			switch r.Header.Get("Content-Type") {
			case "application/json", "application/proto":
				r.Header.Set("Connect-Protocol-Version", "1")
			}
		}
		h.ServeHTTP(w, r)
	})
}

// Serve listens on addr (host:port) and serves h until ctx ends; it
// returns the address it listens on (addr with port 0 picks one).
func Serve(ctx context.Context, addr string, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) (net.Addr, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("HTTP/JSON API: listen on %s: %w", addr, err)
	}
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP/JSON API stopped", "listen", l.Addr().String(), "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return l.Addr(), nil
}
