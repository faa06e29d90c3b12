package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const testSize = 16 << 20

type testServer struct {
	srv  *Server
	addr string
	file *os.File
	gone chan struct{}
}

// startServer serves one export "vol" on a file of testSize on addr
// ("127.0.0.1:0" for any port). The export needs auth secret "s3cret"
// at generation 1 when withAuth.
func startServer(t testing.TB, addr string, file string, withAuth bool) *testServer {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testSize); err != nil {
		t.Fatal(err)
	}
	ts := &testServer{file: f, gone: make(chan struct{})}
	exp := &Export{Name: "vol", Size: testSize, Backend: FileBackend{F: f}, Gone: ts.gone}
	ts.srv = &Server{Lookup: func(_ context.Context, name string, a *Auth) (*Export, error) {
		if name != "vol" {
			return nil, ErrUnknownExport
		}
		if withAuth && (a == nil || a.Export != name) {
			return nil, fmt.Errorf("%w: authenticate first", ErrRefused)
		}
		return exp, nil
	}}
	if withAuth {
		ts.srv.Authenticate = func(_ context.Context, a Auth, _ net.Addr) error {
			if a.Generation != 1 || string(a.Secret) != "s3cret" {
				return fmt.Errorf("%w: wrong secret or generation", ErrRefused)
			}
			return nil
		}
	}
	var l net.Listener
	for i := 0; ; i++ {
		l, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond) // the old server's port
	}
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = l.Addr().String()
	go ts.srv.Serve(l)
	t.Cleanup(func() { ts.srv.Close(); f.Close() })
	return ts
}

func TestClient_ConcurrentWritesOnFourConnections_ReadBackEqual(t *testing.T) {
	ts := startServer(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "img"), false)
	c, err := Dial(context.Background(), ClientOptions{Addr: ts.addr, Export: "vol", Connections: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != testSize {
		t.Fatalf("size %d", c.Size())
	}
	want := make([]byte, testSize)
	rand.Read(want)
	var wg sync.WaitGroup
	const chunk = 64 << 10
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := w * chunk; off < testSize; off += 32 * chunk {
				if _, err := c.WriteAt(want[off:off+chunk], int64(off)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, testSize)
	for off := 0; off < testSize; off += 1 << 20 {
		if _, err := c.ReadAt(got[off:off+1<<20], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from what was written")
	}
	disk := make([]byte, testSize)
	ts.file.ReadAt(disk, 0)
	if !bytes.Equal(disk, want) {
		t.Fatal("image file differs from what was written")
	}
	if err := c.Trim(0, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAtFUA(want[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(got[:8192], testSize-4096); !errors.Is(err, EINVAL) {
		t.Fatalf("read past the end: %v, want EINVAL", err)
	}
}

func TestHandshake_WrongSecret_Refused(t *testing.T) {
	ts := startServer(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "img"), true)
	for _, tc := range []struct {
		name string
		auth *Auth
		want error
	}{
		{"no auth", nil, ErrRefused},
		{"wrong secret", &Auth{Export: "vol", Generation: 1, Secret: []byte("guess")}, ErrRefused},
		{"old generation", &Auth{Export: "vol", Generation: 0, Secret: []byte("s3cret")}, ErrRefused},
		{"right", &Auth{Export: "vol", Generation: 1, Secret: []byte("s3cret")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(context.Background(), ClientOptions{Addr: ts.addr, Export: "vol", Auth: tc.auth, Connections: 1})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if err == nil {
				c.Close()
			} else if bytes.Contains([]byte(err.Error()), []byte("guess")) {
				t.Fatalf("error shows the secret: %v", err)
			}
		})
	}
}

func TestServer_ExportGone_RequestsFailWithESHUTDOWN(t *testing.T) {
	ts := startServer(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "img"), false)
	c, err := Dial(context.Background(), ClientOptions{Addr: ts.addr, Export: "vol", Connections: 2, Reconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	close(ts.gone)
	if _, err := c.WriteAt([]byte("late"), 4096); !errors.Is(err, ESHUTDOWN) {
		t.Fatalf("write after the export went: %v, want ESHUTDOWN", err)
	}
	if _, err := c.ReadAt(make([]byte, 4), 0); !errors.Is(err, ESHUTDOWN) {
		t.Fatalf("read after the export went: %v, want ESHUTDOWN", err)
	}
}

func TestClient_ServerRestarts_RequestsWaitAndComplete(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	ts := startServer(t, "127.0.0.1:0", img, false)
	c, err := Dial(context.Background(), ClientOptions{Addr: ts.addr, Export: "vol", Connections: 2, Reconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ts.srv.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt([]byte("written while the server was down"), 8192)
		if err == nil {
			err = c.Flush()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("write finished with the server down: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	ts2 := startServer(t, ts.addr, img, false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write did not complete after the server came back")
	}
	got := make([]byte, 33)
	ts2.file.ReadAt(got, 8192)
	if string(got) != "written while the server was down" {
		t.Fatalf("image has %q", got)
	}
}

func TestAuth_MarshalRoundTrip_StringHidesSecret(t *testing.T) {
	a := Auth{Export: "att-1", Generation: 7, Secret: []byte("topsecret")}
	b, err := unmarshalAuth(a.marshal())
	if err != nil || b.Export != a.Export || b.Generation != 7 || string(b.Secret) != "topsecret" {
		t.Fatalf("round trip: %+v %v", b, err)
	}
	if bytes.Contains([]byte(a.String()), a.Secret) {
		t.Fatal("String shows the secret")
	}
	if _, err := unmarshalAuth(a.marshal()[:10]); err == nil {
		t.Fatal("truncated auth option accepted")
	}
}
