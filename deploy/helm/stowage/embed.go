// Package stowage embeds the Helm chart in this directory, so that
// `stowage up --install=chart` installs the chart of its own build. helm
// ignores this file (.helmignore).
package stowage

import "embed"

// Chart is the chart's files, rooted at the chart directory.
//
//go:embed Chart.yaml values.yaml values.schema.json README.md all:templates all:crds
var Chart embed.FS
