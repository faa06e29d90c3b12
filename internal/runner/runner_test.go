package runner

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stowage-io/stowage/internal/testutil/logbuf"
)

// The test binary is also the client the runner starts: `helper MODE`
// reads its standard input, says what it got on standard output, writes
// a line to standard error and then, by MODE, exits 3 or waits for
// SIGTERM.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "helper" {
		in, _ := io.ReadAll(os.Stdin)
		fmt.Printf("ready %d\n", len(in))
		fmt.Fprintln(os.Stderr, "helper: a line for the log")
		if os.Args[2] == "exit3" {
			os.Exit(3)
		}
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		<-c
		fmt.Println("stopping")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const secret = "the-attachment-secret"

func serve(t *testing.T, peerUID int) (string, *Server, *logbuf.Buffer) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "runner.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	s := &Server{Binary: os.Args[0], Allowed: []string{"helper"}, PeerUID: peerUID, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { l.Close(); <-done })
	return sock, s, logs
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && b[i+2] != 'Z'
}

func readLine(t *testing.T, r io.Reader) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(r).ReadString('\n')
		got <- strings.TrimSpace(l)
	}()
	select {
	case l := <-got:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no line from the client within 10 s")
		return ""
	}
}

func TestRemote_ClientRunsOnAfterTheCallerHangsUp(t *testing.T) {
	sock, srv, logs := serve(t, os.Getuid())
	log := filepath.Join(t.TempDir(), "client.log")
	p, err := Remote{Socket: sock}.Start(context.Background(), Spec{
		Command: []string{"/the/plugin's/stowage", "helper", "wait"}, Stdin: secret, Log: log, PipeStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(p.PID, syscall.SIGKILL); srv.Wait() })
	if l := readLine(t, p.Stdout); l != fmt.Sprintf("ready %d", len(secret)) {
		t.Fatalf("first line %q, want the client to have read the %d bytes of its stdin", l, len(secret))
	}
	p.Release()
	time.Sleep(200 * time.Millisecond)
	if !alive(p.PID) {
		t.Fatalf("client %d ended when its caller hung up", p.PID)
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { srv.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the runner did not reap its client within 10 s of SIGTERM")
	}
	b, _ := os.ReadFile(log)
	if !strings.Contains(string(b), "helper: a line for the log") {
		t.Errorf("client log %q lacks the client's standard error", b)
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(string(b), secret) {
		t.Errorf("the secret given on stdin is in a log:\nrunner: %s\nclient: %s", logs, b)
	}
	if !strings.Contains(logs.String(), "client started") || !strings.Contains(logs.String(), "client exited") {
		t.Errorf("runner log %q does not say it started and reaped the client", logs)
	}
}

func TestRemote_ExitIsReported(t *testing.T) {
	sock, srv, _ := serve(t, os.Getuid())
	p, err := Remote{Socket: sock}.Start(context.Background(), Spec{
		Command: []string{"stowage", "helper", "exit3"}, Log: filepath.Join(t.TempDir(), "log"), PipeStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	if l := readLine(t, p.Stdout); l != "ready 0" {
		t.Fatalf("first line %q", l)
	}
	select {
	case err := <-p.Exited:
		if err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Fatalf("exit reported as %v, want exit status 3", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10 s")
	}
}

func TestRemote_CommandNotAllowed_RefusedNamingTheAllowed(t *testing.T) {
	sock, _, logs := serve(t, os.Getuid())
	_, err := Remote{Socket: sock}.Start(context.Background(), Spec{Command: []string{"stowage", "server"}, Log: filepath.Join(t.TempDir(), "log")})
	if err == nil || !strings.Contains(err.Error(), `runs only the stowage commands [helper], not "server"`) {
		t.Fatalf("err = %v, want a refusal naming the allowed commands", err)
	}
	if !strings.Contains(logs.String(), "command not allowed") {
		t.Errorf("runner log %q does not record the refusal", logs)
	}
}

func TestRemote_OtherUser_Refused(t *testing.T) {
	sock, _, logs := serve(t, os.Getuid()+1)
	_, err := Remote{Socket: sock}.Start(context.Background(), Spec{Command: []string{"stowage", "helper", "exit3"}, Stdin: secret, Log: filepath.Join(t.TempDir(), "log")})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("only uid %d (the node plugin) may ask; this process runs as uid %d", os.Getuid()+1, os.Getuid())) {
		t.Fatalf("err = %v, want a refusal naming both users", err)
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("runner log holds the secret: %s", logs)
	}
}

func TestRemote_NoRunner_ErrorSaysWhatToCheck(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	_, err := Remote{Socket: sock}.Start(context.Background(), Spec{Command: []string{"stowage", "helper", "exit3"}})
	if err == nil || !strings.Contains(err.Error(), "the node runner at "+sock+" does not answer") || !strings.Contains(err.Error(), "node-runner pod") {
		t.Fatalf("err = %v, want one naming the socket and the runner's pod", err)
	}
}

func TestLocal_StdoutToTheLogUnlessPiped(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	p, err := Local{}.Start(context.Background(), Spec{Command: []string{os.Args[0], "helper", "exit3"}, Stdin: "abc", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if p.Stdout != nil {
		t.Fatal("Stdout is set although the spec did not pipe it")
	}
	if err := <-p.Exited; err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("exit = %v", err)
	}
	b, _ := os.ReadFile(log)
	if !strings.Contains(string(b), "ready 3") || !strings.Contains(string(b), "a line for the log") {
		t.Fatalf("log %q lacks the client's output", b)
	}
}
