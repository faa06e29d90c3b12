package cluster

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// `down` stops pods through containerd's CRI service, as the kubelet would:
// StopPodSandbox stops the containers and releases the pod's network (CNI
// DEL: the veth, the host-local address, host-port rules), and
// RemovePodSandbox deletes them. The three messages involved are small, so
// they are encoded by hand rather than importing the CRI API module.

const criService = "/runtime.v1.RuntimeService/"

// rawCodec passes already-encoded protobuf messages through.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type criClient struct{ conn *grpc.ClientConn }

func dialCRI(socket string) (*criClient, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &criClient{conn: conn}, nil
}

func (c *criClient) Close() error { return c.conn.Close() }

func (c *criClient) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var resp []byte
	err := c.conn.Invoke(ctx, criService+method, &req, &resp, grpc.ForceCodec(rawCodec{}))
	return resp, err
}

// sandboxIDs lists every pod sandbox (ListPodSandboxResponse.items[].id).
func (c *criClient) sandboxIDs(ctx context.Context) ([]string, error) {
	resp, err := c.call(ctx, "ListPodSandbox", nil)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, item := range fieldBytes(resp, 1) {
		for _, id := range fieldBytes(item, 1) {
			ids = append(ids, string(id))
		}
	}
	return ids, nil
}

// stopAndRemove stops and removes one sandbox (both requests carry the id
// as field 1).
func (c *criClient) stopAndRemove(ctx context.Context, id string) error {
	req := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), id)
	if _, err := c.call(ctx, "StopPodSandbox", req); err != nil {
		return fmt.Errorf("stop pod sandbox %s: %w", id, err)
	}
	if _, err := c.call(ctx, "RemovePodSandbox", req); err != nil {
		return fmt.Errorf("remove pod sandbox %s: %w", id, err)
	}
	return nil
}

// fieldBytes returns the values of every length-delimited field num in msg.
func fieldBytes(msg []byte, num protowire.Number) [][]byte {
	var out [][]byte
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return out
		}
		msg = msg[l:]
		if typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(msg)
			if l < 0 {
				return out
			}
			if n == num {
				out = append(out, v)
			}
			msg = msg[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, msg)
		if l < 0 {
			return out
		}
		msg = msg[l:]
	}
	return out
}
