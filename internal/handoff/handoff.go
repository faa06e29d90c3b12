// Package handoff is the local image handoff: on the machine of a storage
// host, the node plugin asks for the image of one of its local attachments
// (the pod runs on the node that holds the volume's pool) over a unix
// socket, and is given an open file descriptor of the image (SCM_RIGHTS),
// never a path. Nothing of it crosses the network or the Stowage API: the
// node finds the socket by its own configuration.
//
// The protocol is one exchange per connection: the client sends a Request
// as one JSON object; the server answers one JSON object (a reply with a
// gRPC code and message) and, when the code is OK, the descriptor in the
// same message.
package handoff

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stowage-io/stowage/internal/auth"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Request asks for the image of a local attachment.
type Request struct {
	VolumeID string `json:"volumeId"`
	NodeID   string `json:"nodeId"`
	// Target is the attachment's opaque local target (Attachment.local_target).
	Target string `json:"target"`
	// Secret is the attachment's secret (GetAttachmentSecret); never logged.
	Secret string `json:"secret"`
}

// Opener authorizes r and opens its image: read-only for a read-only
// attachment. Its errors are gRPC statuses (the code and message go back
// to the node).
type Opener func(ctx context.Context, r Request) (image *os.File, readOnly bool, err error)

// Server serves the handoff on a unix socket.
type Server struct {
	Open Opener
	// PeerUID is the only user whose processes may ask (SO_PEERCRED): 0,
	// the node plugin, in production.
	PeerUID int
	Logger  *slog.Logger
}

type reply struct {
	Code     codes.Code `json:"code"`
	Message  string     `json:"message,omitempty"`
	ReadOnly bool       `json:"readOnly,omitempty"`
}

// maxRequest bounds what a client may send.
const maxRequest = 4096

// exchangeTimeout bounds one exchange, on both sides.
const exchangeTimeout = 10 * time.Second

// Listen makes the socket at path (a stale one is removed), mode 0600:
// only root reaches it at all, and Serve checks the peer again.
func Listen(path string) (*net.UnixListener, error) {
	l, err := auth.ListenOwnerOnly(path, 0o750)
	if err != nil {
		return nil, fmt.Errorf("local handoff: %w", err)
	}
	return l, nil
}

// Start serves the handoff for root's processes (the node plugin) at
// path with open until stop is called; stop waits for the listener.
func Start(path string, open Opener, logger *slog.Logger) (stop func(), err error) {
	l, err := Listen(path)
	if err != nil {
		return nil, err
	}
	s := &Server{Open: open, PeerUID: 0, Logger: logger}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Serve(l); err != nil {
			s.log().Error("local handoff stopped", "socket", path, "err", err)
		}
	}()
	return func() { l.Close(); <-done }, nil
}

// Serve answers connections on l until it is closed.
func (s *Server) Serve(l *net.UnixListener) error { return auth.ServeUnix(l, s.serve) }

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

func (s *Server) serve(c *net.UnixConn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), exchangeTimeout)
	defer cancel()
	c.SetDeadline(time.Now().Add(exchangeTimeout))
	cred, err := auth.UnixPeer(c)
	if err != nil {
		s.answer(c, nil, reply{Code: codes.Internal, Message: "local handoff: cannot tell who is asking: " + err.Error()})
		return
	}
	// The request is read before any answer, even one to a peer that is
	// refused: an answer and a close before the client has written would
	// make its write fail (EPIPE) instead of carrying the refusal.
	var r Request
	derr := json.NewDecoder(io.LimitReader(c, maxRequest)).Decode(&r)
	if int(cred.Uid) != s.PeerUID {
		s.log().Warn("local handoff refused", "peerPID", cred.Pid, "peerUID", cred.Uid, "reason", "not the node plugin's user")
		s.answer(c, nil, reply{Code: codes.PermissionDenied, Message: fmt.Sprintf("local handoff: only uid %d (the node plugin) may ask; this process runs as uid %d", s.PeerUID, cred.Uid)})
		return
	}
	if derr != nil {
		s.answer(c, nil, reply{Code: codes.InvalidArgument, Message: "local handoff: the request is not one JSON object: " + derr.Error()})
		return
	}
	f, ro, err := s.Open(ctx, r)
	if err != nil {
		st := status.Convert(err)
		s.log().Warn("local handoff refused", "volume", r.VolumeID, "node", r.NodeID, "target", r.Target, "peerPID", cred.Pid, "code", st.Code(), "reason", st.Message())
		s.answer(c, nil, reply{Code: st.Code(), Message: st.Message()})
		return
	}
	defer f.Close()
	if s.answer(c, f, reply{Code: codes.OK, ReadOnly: ro}) {
		s.log().Info("local handoff: image handed to the node", "volume", r.VolumeID, "node", r.NodeID, "target", r.Target, "readOnly", ro, "peerPID", cred.Pid)
	}
}

// answer sends rep, with f's descriptor if f is not nil, and reports
// whether it went out.
func (s *Server) answer(c *net.UnixConn, f *os.File, rep reply) bool {
	b, _ := json.Marshal(rep)
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		s.log().Warn("local handoff: answer not sent", "err", err)
		return false
	}
	return true
}

// Open asks the handoff at socket for r's image and returns it, open
// read-only for a read-only attachment (readOnly). Errors are gRPC
// statuses: the server's refusal with its code, Unavailable when the
// socket does not answer.
func Open(ctx context.Context, socket string, r Request) (image *os.File, readOnly bool, err error) {
	if socket == "" {
		return nil, false, status.Error(codes.FailedPrecondition, "no local handoff socket is configured on this node (the node plugin's --local-handoff, which the Stowage server of this machine's pools serves)")
	}
	ctx, cancel := context.WithTimeout(ctx, exchangeTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, false, status.Errorf(codes.Unavailable, "local handoff at %s: %v (is the Stowage server that holds this machine's pools running with --local-handoff %s?)", socket, err, socket)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// A failed write is reported only if no answer comes: a server that
	// refused at once may have answered and closed already.
	werr := json.NewEncoder(c).Encode(r)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		if werr != nil {
			return nil, false, status.Errorf(codes.Unavailable, "local handoff at %s: send the request: %v", socket, werr)
		}
		return nil, false, status.Errorf(codes.Unavailable, "local handoff at %s: read the answer: %v", socket, err)
	}
	fds := receivedFDs(oob[:oobn])
	var rep reply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		closeFDs(fds)
		return nil, false, status.Errorf(codes.Internal, "local handoff at %s: the answer is not JSON: %v", socket, err)
	}
	if rep.Code != codes.OK {
		closeFDs(fds)
		return nil, false, status.Error(rep.Code, rep.Message)
	}
	if len(fds) != 1 {
		closeFDs(fds)
		return nil, false, status.Errorf(codes.Internal, "local handoff at %s: the answer carries %d descriptors, want 1", socket, len(fds))
	}
	unix.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), "image of local attachment "+r.Target), rep.ReadOnly, nil
}

func receivedFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
