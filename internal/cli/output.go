package cli

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// printer writes API objects as a human table, JSON or YAML.
type printer struct {
	format string
	out    io.Writer
}

func (p printer) validate() error {
	switch p.format {
	case "table", "json", "yaml":
		return nil
	}
	return usageErrorf("output format %q is not one of table, json, yaml", p.format)
}

// structured writes msg as JSON or YAML and reports whether it did.
func (p printer) structured(msg proto.Message) (bool, error) {
	if p.format == "table" {
		return false, nil
	}
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: false}.Marshal(msg)
	if err != nil {
		return true, err
	}
	b = stateWords(b)
	if p.format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return true, err
		}
	}
	_, err = fmt.Fprintln(p.out, strings.TrimRight(string(b), "\n"))
	return true, err
}

func (p printer) table(header []string, rows [][]string) error {
	w := tabwriter.NewWriter(p.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

func formatTags(tags map[string]string) string {
	if len(tags) == 0 {
		return "-"
	}
	ks := make([]string, 0, len(tags))
	for k := range tags {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = k + "=" + tags[k]
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// stateEnum is a state's enum value name as protojson writes it.
var stateEnum = regexp.MustCompile(`"state":\s*"((?:VOLUME|SNAPSHOT|ATTACHMENT|FILE_SYSTEM|ACCESS_POINT)_STATE_[A-Z_]+)"`)

// stateWords writes the states in JSON output as the words the tables show
// ("in-use", not VOLUME_STATE_IN_USE), so scripts see the same words in
// every output format.
func stateWords(b []byte) []byte {
	return stateEnum.ReplaceAllFunc(b, func(m []byte) []byte {
		name := stateEnum.FindSubmatch(m)[1]
		return []byte(`"state": "` + pb.StateWord(string(name)) + `"`)
	})
}

// describeCmd is the `describe ID...` command of one kind of object: it
// fetches each id with get and prints them with print; a single object in
// table format is shown as YAML, which has room for every field.
func describeCmd[T any](g *globals, use, short string, get func(context.Context, *client, string) (T, error), print func(printer, ...T) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd, func(ctx context.Context, c *client, p printer) error {
				var objs []T
				for _, id := range args {
					o, err := get(ctx, c, id)
					if err != nil {
						return err
					}
					objs = append(objs, o)
				}
				if p.format == "table" && len(objs) == 1 {
					p.format = "yaml"
				}
				return print(p, objs...)
			})
		},
	}
}
