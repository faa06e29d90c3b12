package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// PeerCredInfo is the AuthInfo of a connection over a unix socket: the
// kernel's word (SO_PEERCRED) for who the client process runs as.
type PeerCredInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerCredInfo) AuthType() string { return "peercred" }

type noAuthInfo struct{ credentials.CommonAuthInfo }

func (noAuthInfo) AuthType() string { return "none" }

// PeerCredentials is server-side transport credentials that do no
// handshake (the transport is as plain as insecure credentials, so any
// insecure client connects) and record the unix peer's uid; TCP
// connections carry no identity and must send a token.
func PeerCredentials() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

func (peerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, noAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	none := noAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, none, nil
	}
	cred, err := UnixPeer(uc)
	if err != nil {
		return c, none, nil
	}
	return c, PeerCredInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }

// TokenCredentials sends a Stowage API token on every call. Transport
// security is not required: the API is reached over a unix socket or
// loopback (TLS is not built yet).
type TokenCredentials struct{ Token string }

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t TokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.Token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (TokenCredentials) RequireTransportSecurity() bool { return false }

// UnixPeer is the kernel's word (SO_PEERCRED) for the process at the
// other end of c.
func UnixPeer(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) { cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	return cred, serr
}

// ListenOwnerOnly makes a unix socket at path (a stale one is removed) of
// mode 0600, in a directory it makes if missing (dirMode): only its owner
// reaches it at all, and the server checks the peer again (UnixPeer).
func ListenOwnerOnly(path string, dirMode os.FileMode) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// ServeUnix hands each connection on l to serve, in a goroutine of its
// own, until l is closed.
func ServeUnix(l *net.UnixListener, serve func(*net.UnixConn)) error {
	for {
		c, err := l.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		go serve(c)
	}
}
