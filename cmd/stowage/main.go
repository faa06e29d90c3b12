// Command stowage is the multi-call binary of Stowage: server, drivers and CLI.
package main

import (
	"os"

	"github.com/stowage-io/stowage/internal/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
