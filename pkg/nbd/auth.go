package nbd

import (
	"encoding/binary"
	"fmt"
)

// OptAuth is Stowage's own option, sent before NBD_OPT_GO (or INFO or
// EXPORT_NAME): it names the export, the generation the client was given
// and the secret of that attachment. The server answers NBD_REP_ACK or
// NBD_REP_ERR_POLICY; an export whose Server.Authenticate is set can only
// be opened on a connection that authenticated for it. The value lies far
// outside the range the protocol has assigned (1–10), so a standard
// server answers NBD_REP_ERR_UNSUP instead of misreading it.
//
// Payload, big-endian like the rest of NBD:
//
//	u32 export name length, name
//	u64 generation
//	u16 secret length, secret
const OptAuth uint32 = 0x53544f57 // "STOW"

// Auth is the payload of OptAuth.
type Auth struct {
	Export     string
	Generation uint64
	Secret     []byte
}

// String never shows the secret, so an Auth can be logged.
func (a Auth) String() string {
	return fmt.Sprintf("export %q generation %d", a.Export, a.Generation)
}

func (a Auth) marshal() []byte {
	b := make([]byte, 0, 4+len(a.Export)+8+2+len(a.Secret))
	b = binary.BigEndian.AppendUint32(b, uint32(len(a.Export)))
	b = append(b, a.Export...)
	b = binary.BigEndian.AppendUint64(b, a.Generation)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.Secret)))
	return append(b, a.Secret...)
}

func unmarshalAuth(b []byte) (Auth, error) {
	var a Auth
	if len(b) < 4 {
		return a, fmt.Errorf("auth option: %d bytes, too short", len(b))
	}
	n := int(binary.BigEndian.Uint32(b))
	b = b[4:]
	if n > len(b) || len(b)-n < 10 {
		return a, fmt.Errorf("auth option: name length %d does not fit", n)
	}
	a.Export, b = string(b[:n]), b[n:]
	a.Generation, b = binary.BigEndian.Uint64(b), b[8:]
	s := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if s != len(b) {
		return a, fmt.Errorf("auth option: secret length %d, %d bytes left", s, len(b))
	}
	a.Secret = append([]byte(nil), b...)
	return a, nil
}
