package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/stowage-io/stowage/internal/apitls"
	"github.com/stowage-io/stowage/internal/auth"
)

// dial connects to the Stowage API, sending the token in tokenFile (if
// any) with every call. The token goes in call metadata only: never in
// an argument list, a log line or an error.
//
// endpoint may list several servers separated by commas (host:port,
// tcp://host:port or unix:///path): servers sharing an etcd store, of which
// one leads and the others answer UNAVAILABLE. A call then goes to the
// server that answered last and, on UNAVAILABLE, to the next one in turn;
// while none serves (a failover under way) it tries them again for up to
// failoverWait, within the call's deadline.
func dial(endpoint, tokenFile string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if tokenFile != "" {
		token, err := auth.ReadTokenFile(tokenFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: token}))
	}
	var eps []string
	for ep := range strings.SplitSeq(endpoint, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return nil, usageErrorf("no Stowage API address given")
	}
	if len(eps) == 1 {
		return newConn(eps[0], opts...)
	}
	f := &failover{endpoints: eps, conns: make([]*grpc.ClientConn, len(eps))}
	for i := 1; i < len(eps); i++ {
		c, err := newConn(eps[i], opts...)
		if err != nil {
			f.closeOthers()
			return nil, err
		}
		f.conns[i] = c
	}
	// The first connection is the one callers hold; its interceptor sends
	// each call to the server that serves, and closing it closes the others.
	first, err := newConn(eps[0], append(opts, grpc.WithChainUnaryInterceptor(f.intercept))...)
	if err != nil {
		f.closeOthers()
		return nil, err
	}
	f.conns[0] = first
	go f.closeWith(first)
	return first, nil
}

// apiCAFile is the root flag --ca-file: with it (or env STOWAGE_CA_FILE),
// TCP endpoints are dialled with TLS, trusting the certificates it signs.
var apiCAFile string

// caFileInUse is --ca-file, else env STOWAGE_CA_FILE ("": none).
func caFileInUse() string {
	if apiCAFile != "" {
		return apiCAFile
	}
	return os.Getenv("STOWAGE_CA_FILE")
}

// transport is endpoint's transport security: TLS for a TCP endpoint when
// a CA file is given, else none (a unix socket always: its peer is the
// kernel's to vouch for).
func transport(endpoint string) (grpc.DialOption, error) {
	ca := caFileInUse()
	if ca == "" || strings.HasPrefix(endpoint, "unix:") {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	creds, err := apitls.ClientCredentials(ca)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(creds), nil
}

func newConn(endpoint string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	tr, err := transport(endpoint)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(endpoint, "tcp://"), append(opts, tr)...)
	if err != nil {
		return nil, fmt.Errorf("connect to the Stowage API at %s: %w", endpoint, err)
	}
	return conn, nil
}

// failoverWait is how long a call keeps trying servers that all answer
// UNAVAILABLE: longer than a standby needs to take over (the leader's
// lease, 5 s, and the takeover).
const failoverWait = 15 * time.Second

// failover spreads one connection's calls over several servers.
type failover struct {
	endpoints []string
	conns     []*grpc.ClientConn
	mu        sync.Mutex
	current   int
}

func (f *failover) intercept(ctx context.Context, method string, req, reply any, _ *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	f.mu.Lock()
	start := f.current
	f.mu.Unlock()
	give := time.Now().Add(failoverWait)
	backoff := 100 * time.Millisecond
	for {
		var refusals []string
		for i := range f.conns {
			idx := (start + i) % len(f.conns)
			var err error
			if idx == 0 {
				err = invoker(ctx, method, req, reply, f.conns[0], opts...)
			} else {
				err = f.conns[idx].Invoke(ctx, method, req, reply, opts...)
			}
			if status.Code(err) != codes.Unavailable {
				f.mu.Lock()
				f.current = idx
				f.mu.Unlock()
				return err
			}
			refusals = append(refusals, f.endpoints[idx]+": "+status.Convert(err).Message())
		}
		if time.Now().Add(backoff).After(give) {
			return status.Errorf(codes.Unavailable, "no Stowage server serves (tried for %s): %s", failoverWait, strings.Join(refusals, "; "))
		}
		select {
		case <-ctx.Done():
			return status.Errorf(status.FromContextError(ctx.Err()).Code(), "no Stowage server served before the call ended: %s", strings.Join(refusals, "; "))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// closeWith closes the other connections once first is closed.
func (f *failover) closeWith(first *grpc.ClientConn) {
	for s := first.GetState(); s != connectivity.Shutdown; s = first.GetState() {
		first.WaitForStateChange(context.Background(), s)
	}
	f.closeOthers()
}

func (f *failover) closeOthers() {
	for _, c := range f.conns[1:] {
		if c != nil {
			c.Close()
		}
	}
}

const apiUsage = "Stowage API address: host:port, tcp://host:port or unix:///path; several separated by commas when servers share an etcd store (calls go to the one that leads)"
