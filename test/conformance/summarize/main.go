// Command summarize turns the ginkgo JSON report of an external storage
// suite run (test/conformance/run.sh) into a Markdown summary: passed, failed
// and skipped specs per test suite, why each group of specs was skipped, and
// each failure with its message.
//
//	summarize --report report.json --skips skips.tsv [--driver block.csi.stowage.io]
//
// skips.tsv has one "REASON<TAB>REGEX" per line: the --skip rules run.sh gave
// ginkgo. A spec the run skipped is attributed to the first rule whose regex
// matches its full text; a spec a test suite skipped itself carries the
// suite's own message (e2eskipper.Skipf).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

type location struct {
	FileName   string
	LineNumber int
}

type specReport struct {
	ContainerHierarchyTexts []string
	LeafNodeText            string
	LeafNodeType            string
	State                   string
	RunTime                 time.Duration
	Failure                 *struct {
		Message  string
		Location location
	}
}

type suiteReport struct {
	SuiteDescription string
	RunTime          time.Duration
	StartTime        time.Time
	SpecReports      []specReport
}

type skipRule struct {
	reason string
	re     *regexp.Regexp
}

type counts struct{ passed, failed, skipped int }

func main() {
	reportPath := flag.String("report", "", "ginkgo --json-report file")
	skipsPath := flag.String("skips", "", "REASON<TAB>REGEX lines: the --skip rules of the run")
	driver := flag.String("driver", "block.csi.stowage.io", "the driver whose External Storage specs to count")
	flag.Parse()
	if *reportPath == "" {
		fmt.Fprintln(os.Stderr, "usage: summarize --report report.json [--skips skips.tsv] [--driver NAME]")
		os.Exit(2)
	}
	if err := run(os.Stdout, *reportPath, *skipsPath, *driver); err != nil {
		fmt.Fprintln(os.Stderr, "summarize:", err)
		os.Exit(1)
	}
}

func readRules(path string) ([]skipRule, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rules []skipRule
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		reason, expr, ok := strings.Cut(line, "\t")
		if !ok {
			return nil, fmt.Errorf("%s: no tab in %q", path, line)
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		rules = append(rules, skipRule{reason: reason, re: re})
	}
	return rules, sc.Err()
}

// suiteOf returns the test suite of an External Storage spec: the first word
// after "[Testpattern: ...]" that is not a [tag].
func suiteOf(s specReport) string {
	if len(s.ContainerHierarchyTexts) < 2 {
		return "?"
	}
	t := s.ContainerHierarchyTexts[1]
	if i := strings.Index(t, "]"); strings.HasPrefix(t, "[Testpattern:") && i >= 0 {
		t = t[i+1:]
	}
	for _, w := range strings.Fields(t) {
		if !strings.HasPrefix(w, "[") {
			return w
		}
	}
	return "?"
}

func fullText(s specReport) string {
	return strings.Join(append(append([]string(nil), s.ContainerHierarchyTexts...), s.LeafNodeText), " ")
}

// firstLine shortens a skip or failure message to its first line.
func firstLine(m string) string {
	m = strings.TrimSpace(m)
	if i := strings.IndexByte(m, '\n'); i >= 0 {
		m = m[:i]
	}
	return m
}

var volatile = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|e2e-[a-z0-9-]+-[0-9]+`)

func run(w io.Writer, reportPath, skipsPath, driver string) error {
	data, err := os.ReadFile(reportPath)
	if err != nil {
		return err
	}
	var reports []suiteReport
	if err := json.Unmarshal(data, &reports); err != nil {
		return fmt.Errorf("%s: %w", reportPath, err)
	}
	rules, err := readRules(skipsPath)
	if err != nil {
		return err
	}
	prefix := "External Storage [Driver: " + driver + "]"
	perSuite := map[string]*counts{}
	skipReasons := map[string]map[string]int{} // reason -> suite -> specs
	var failures []specReport
	var total counts
	var runTime time.Duration
	var start time.Time
	for _, r := range reports {
		runTime += r.RunTime
		if start.IsZero() {
			start = r.StartTime
		}
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" || len(s.ContainerHierarchyTexts) == 0 || s.ContainerHierarchyTexts[0] != prefix {
				continue
			}
			suite := suiteOf(s)
			c := perSuite[suite]
			if c == nil {
				c = &counts{}
				perSuite[suite] = c
			}
			switch s.State {
			case "passed":
				c.passed++
				total.passed++
			case "skipped", "pending":
				c.skipped++
				total.skipped++
				reason := "not selected by --focus"
				if s.Failure != nil && s.Failure.Message != "" {
					reason = "suite: " + volatile.ReplaceAllString(firstLine(s.Failure.Message), "…")
				} else {
					ft := fullText(s)
					for _, rule := range rules {
						if rule.re.MatchString(ft) {
							reason = "run.sh: " + rule.reason
							break
						}
					}
				}
				if skipReasons[reason] == nil {
					skipReasons[reason] = map[string]int{}
				}
				skipReasons[reason][suite]++
			default: // failed, panicked, timedout, interrupted, aborted
				c.failed++
				total.failed++
				failures = append(failures, s)
			}
		}
	}

	fmt.Fprintf(w, "Run of %s, %s (ginkgo run time %s).\n\n", start.UTC().Format("2006-01-02 15:04 MST"), prefix, runTime.Round(time.Second))
	suites := make([]string, 0, len(perSuite))
	for s := range perSuite {
		suites = append(suites, s)
	}
	sort.Strings(suites)
	fmt.Fprintln(w, "| test suite | passed | failed | skipped |")
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	for _, s := range suites {
		c := perSuite[s]
		fmt.Fprintf(w, "| %s | %d | %d | %d |\n", s, c.passed, c.failed, c.skipped)
	}
	fmt.Fprintf(w, "| **total** | **%d** | **%d** | **%d** |\n\n", total.passed, total.failed, total.skipped)

	fmt.Fprintln(w, "Skipped, by reason (specs per suite):")
	fmt.Fprintln(w)
	reasons := make([]string, 0, len(skipReasons))
	for r := range skipReasons {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		return sum(skipReasons[reasons[i]]) > sum(skipReasons[reasons[j]]) || sum(skipReasons[reasons[i]]) == sum(skipReasons[reasons[j]]) && reasons[i] < reasons[j]
	})
	for _, r := range reasons {
		var parts []string
		for _, s := range slices.Sorted(maps.Keys(skipReasons[r])) {
			parts = append(parts, fmt.Sprintf("%s %d", s, skipReasons[r][s]))
		}
		fmt.Fprintf(w, "- %d — %s (%s)\n", sum(skipReasons[r]), r, strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)

	if len(failures) == 0 {
		fmt.Fprintln(w, "Failures: none.")
		return nil
	}
	fmt.Fprintln(w, "Failures:")
	fmt.Fprintln(w)
	for _, s := range failures {
		fmt.Fprintf(w, "- `%s` (%s, %s)\n", strings.TrimPrefix(fullText(s), prefix+" "), s.State, s.RunTime.Round(time.Second))
		if s.Failure != nil {
			msg := strings.TrimSpace(s.Failure.Message)
			if len(msg) > 600 {
				msg = msg[:600] + " …"
			}
			fmt.Fprintf(w, "  at %s:%d\n\n  ```\n  %s\n  ```\n", s.Failure.Location.FileName, s.Failure.Location.LineNumber, strings.ReplaceAll(msg, "\n", "\n  "))
		}
	}
	return nil
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
