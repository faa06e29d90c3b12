// Package mlog stands in for monis.app/mlog, which the Go module proxy
// refuses to serve, so that the Secrets Store CSI driver builds here.
//
// It is Stowage's own code, not a copy of the original: it provides only
// the functions the driver v1.6.1 calls, on top of klog. What it drops:
// the JSON log format (--log-format-json logs a warning and keeps klog's
// text format) and mlog's structured logr backend.
package mlog

import (
	"context"
	"fmt"
	"os"

	"k8s.io/klog/v2"
)

// LogFormat is a log output format.
type LogFormat string

const (
	FormatText LogFormat = "text"
	FormatJSON LogFormat = "json"
)

// Setup prepares logging and returns the function that flushes it.
func Setup() func() { return klog.Flush }

// ValidateAndSetKlogLevelAndFormatGlobally checks the verbosity the
// driver's -v flag set and the format. klog's flags are already parsed by
// the driver, so the level is in effect; JSON falls back to text.
func ValidateAndSetKlogLevelAndFormatGlobally(_ context.Context, level klog.Level, format LogFormat) error {
	if level < 0 {
		return fmt.Errorf("log level %d is negative", level)
	}
	switch format {
	case FormatText:
	case FormatJSON:
		klog.Warning("--log-format-json is not supported by this build (monis.app/mlog is replaced by a shim); logging text")
	default:
		return fmt.Errorf("unknown log format %q (want %q or %q)", format, FormatText, FormatJSON)
	}
	return nil
}

// Error logs err with msg and key/value pairs.
func Error(msg string, err error, keysAndValues ...any) {
	klog.ErrorSDepth(1, err, msg, keysAndValues...)
}

// Fatal logs err and exits with status 1.
func Fatal(err error, keysAndValues ...any) {
	klog.ErrorSDepth(1, err, "fatal error", keysAndValues...)
	klog.Flush()
	os.Exit(1)
}
