package runner

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stowage-io/stowage/internal/auth"
)

// maxSpec bounds a request: a command line and a secret.
const maxSpec = 64 << 10

// Server runs clients for node plugins that ask over a unix socket.
type Server struct {
	// Binary is the program every client runs (this stowage binary).
	Binary string
	// Allowed are the first arguments (the stowage commands) it runs;
	// anything else is refused.
	Allowed []string
	// PeerUID is the only user whose processes may ask (SO_PEERCRED).
	PeerUID int
	Logger  *slog.Logger

	wg sync.WaitGroup
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// Listen makes the socket at path (replacing a stale one), readable and
// writable by its owner only.
func Listen(path string) (*net.UnixListener, error) {
	l, err := auth.ListenOwnerOnly(path, 0o700)
	if err != nil {
		return nil, fmt.Errorf("node runner: %w", err)
	}
	return l, nil
}

// Serve answers connections on l until it is closed. The processes it
// started run on; Wait waits for them.
func (s *Server) Serve(l *net.UnixListener) error { return auth.ServeUnix(l, s.serve) }

// Wait waits for every process the server started to end and for its
// exit to be logged.
func (s *Server) Wait() { s.wg.Wait() }

func (s *Server) serve(c *net.UnixConn) {
	defer c.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(c)
	send := func(m message) error {
		mu.Lock()
		defer mu.Unlock()
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return enc.Encode(m)
	}
	cred, err := auth.UnixPeer(c)
	if err != nil {
		send(message{Error: "node runner: cannot tell who is asking: " + err.Error()})
		return
	}
	// Read the request before any answer, even a refusal: an answer and a
	// close before the client has written would fail its write (EPIPE)
	// instead of carrying the refusal.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var sp Spec
	derr := json.NewDecoder(io.LimitReader(c, maxSpec)).Decode(&sp)
	c.SetReadDeadline(time.Time{})
	if int(cred.Uid) != s.PeerUID {
		s.log().Warn("node runner: request refused", "peerPID", cred.Pid, "peerUID", cred.Uid, "reason", "not the node plugin's user")
		send(message{Error: fmt.Sprintf("node runner: only uid %d (the node plugin) may ask; this process runs as uid %d", s.PeerUID, cred.Uid)})
		return
	}
	if derr != nil {
		send(message{Error: "node runner: the request is not one JSON object: " + derr.Error()})
		return
	}
	if len(sp.Command) < 2 || !slices.Contains(s.Allowed, sp.Command[1]) {
		what := "nothing"
		if len(sp.Command) >= 2 {
			what = fmt.Sprintf("%q", sp.Command[1])
		}
		s.log().Warn("node runner: request refused", "peerPID", cred.Pid, "reason", "command not allowed", "command", what)
		send(message{Error: fmt.Sprintf("node runner: runs only the stowage commands %v, not %s", s.Allowed, what)})
		return
	}
	// The runner's own binary, whatever the plugin's is called.
	sp.Command = append([]string{s.Binary}, sp.Command[1:]...)
	p, err := Local{}.Start(context.Background(), sp)
	if err != nil {
		s.log().Error("node runner: client not started", "command", sp.Command[1], "log", sp.Log, "err", err)
		send(message{Error: err.Error()})
		return
	}
	s.wg.Add(1)
	log := s.log().With("command", sp.Command[1], "pid", p.PID, "log", sp.Log)
	log.Info("node runner: client started", "peerPID", cred.Pid)
	following := send(message{PID: p.PID}) == nil
	// The caller hanging up ends the following, not the process.
	hungUp := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(hungUp)
	}()
	// The client's last lines go out before its exit is reported.
	linesSent := make(chan struct{})
	if p.Stdout == nil {
		close(linesSent)
	} else {
		go func() {
			defer close(linesSent)
			lines(p.Stdout, func(m message) error {
				if !following {
					return errors.New("not following")
				}
				return send(m)
			})
		}()
	}
	go func() {
		<-hungUp
		p.Release()
	}()
	err = <-p.Exited
	select {
	case <-linesSent:
	case <-hungUp:
	}
	if err != nil {
		log.Warn("node runner: client exited", "err", err)
	} else {
		log.Info("node runner: client exited")
	}
	// Wait returns only once the exit is logged.
	s.wg.Done()
	select {
	case <-hungUp:
	default:
		exit := "" // exit status 0
		if err != nil {
			exit = err.Error()
		}
		send(message{Exit: &exit})
	}
}

// Remote starts clients through the node runner at Socket.
type Remote struct{ Socket string }

// Start implements Starter. The process is the runner's child, so its
// pid is the runner's view: callers that check it by pid must share the
// runner's pid namespace (the chart gives both pods hostPID).
func (r Remote) Start(ctx context.Context, s Spec) (*Proc, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := d.DialContext(dctx, "unix", r.Socket)
	if err != nil {
		return nil, fmt.Errorf("the node runner at %s does not answer (%v): is the node-runner pod of this node running?", r.Socket, err)
	}
	c := nc.(*net.UnixConn)
	werr := json.NewEncoder(c).Encode(s)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var first message
	line, err := br.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &first)
	}
	if err != nil {
		c.Close()
		if werr != nil {
			return nil, fmt.Errorf("node runner at %s: send the request: %w", r.Socket, werr)
		}
		return nil, fmt.Errorf("node runner at %s: read the answer: %w", r.Socket, err)
	}
	if first.Error != "" {
		c.Close()
		return nil, errors.New(first.Error)
	}
	c.SetReadDeadline(time.Time{})
	exited := make(chan error, 1)
	p := &Proc{PID: first.PID, Exited: exited}
	var out *io.PipeWriter
	if s.PipeStdout {
		pr, pw := io.Pipe()
		p.Stdout, out = pr, pw
	}
	var released atomic.Bool
	p.release = func() {
		if !released.Swap(true) {
			c.Close()
		}
	}
	go func() {
		defer close(exited)
		for {
			line, err := br.ReadBytes('\n')
			var m message
			if err == nil {
				err = json.Unmarshal(line, &m)
			}
			if err != nil {
				if out != nil {
					out.CloseWithError(io.EOF)
				}
				if released.Load() {
					return
				}
				// A runner gone takes its children with it.
				exited <- fmt.Errorf("lost the node runner at %s: %w", r.Socket, err)
				return
			}
			switch {
			case m.Out != nil && out != nil:
				out.Write([]byte(*m.Out + "\n"))
			case m.Exit != nil:
				if out != nil {
					out.CloseWithError(io.EOF)
				}
				if *m.Exit != "" {
					exited <- errors.New(*m.Exit)
				} else {
					exited <- nil
				}
				c.Close()
				return
			}
		}
	}()
	return p, nil
}
