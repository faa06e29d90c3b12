package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// chunkReader returns its data in reads of random sizes, as a socket
// does, and counts the bytes it read straight into dst.
type chunkReader struct {
	data   []byte
	rnd    *rand.Rand
	dst    []byte
	direct int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), 1+r.rnd.IntN(512<<10))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	if len(r.dst) > 0 && len(p) > 0 {
		lo, hi := uintptr(unsafe.Pointer(&r.dst[0])), uintptr(unsafe.Pointer(&r.dst[len(r.dst)-1]))
		if a := uintptr(unsafe.Pointer(&p[0])); a >= lo && a <= hi {
			r.direct += n
		}
	}
	return n, nil
}

func TestReadPayload_FramesOfEverySize_ReadWhole_LargeOnesStraightIntoTheirBuffer(t *testing.T) {
	sizes := []int{0, 1, 4096, 60 << 10, 64 << 10, 100 << 10, 255 << 10, 256 << 10, 300 << 10, 1 << 20, 4096, 3 << 20, 17}
	var stream bytes.Buffer
	for i, n := range sizes {
		var h [8]byte
		binary.BigEndian.PutUint64(h[:], uint64(n))
		stream.Write(h[:])
		for j := range n {
			stream.WriteByte(byte(i*31 + j*7))
		}
	}
	for seed := range uint64(20) {
		cr := &chunkReader{data: bytes.Clone(stream.Bytes()), rnd: rand.New(rand.NewPCG(seed, 1))}
		br := bufio.NewReaderSize(cr, 256<<10)
		for i, want := range sizes {
			var h [8]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				t.Fatalf("seed %d, frame %d: header: %v", seed, i, err)
			}
			if n := int(binary.BigEndian.Uint64(h[:])); n != want {
				t.Fatalf("seed %d, frame %d: header says %d bytes, want %d: the stream lost its framing", seed, i, n, want)
			}
			p := make([]byte, want)
			cr.dst, cr.direct = p, 0
			buffered := br.Buffered()
			if err := readPayload(br, cr, p); err != nil {
				t.Fatalf("seed %d, frame %d (%d bytes): %v", seed, i, want, err)
			}
			for j := range p {
				if p[j] != byte(i*31+j*7) {
					t.Fatalf("seed %d, frame %d: byte %d is %d, want %d", seed, i, j, p[j], byte(i*31+j*7))
				}
			}
			if rest := want - buffered; rest >= readDirectMin && cr.direct != rest {
				t.Errorf("seed %d, frame %d: %d of the %d bytes not yet buffered were read straight into the payload, want all", seed, i, cr.direct, rest)
			}
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("seed %d: bytes left after the last frame (%v)", seed, err)
		}
	}
}
