package attach

import (
	"context"
	"os/signal"
	"syscall"
)

func signalCtx() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}
