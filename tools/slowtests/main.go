// Command slowtests reads `go test -json` output on stdin and prints the
// slowest tests, to find the ones that wait instead of polling:
//
//	go test -json -count=1 ./test/ | go run -C tools ./slowtests -n 15
//
// Times are the test's own (go test stops a parallel test's clock while it
// waits for its turn). Subtests are listed under their own names with -sub.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
}

type result struct {
	pkg, test, action string
	secs              float64
}

func main() {
	n := flag.Int("n", 15, "how many tests to list")
	sub := flag.Bool("sub", false, "list subtests too")
	flag.Parse()
	results, err := read(os.Stdin, *sub)
	if err != nil {
		fmt.Fprintln(os.Stderr, "slowtests:", err)
		os.Exit(1)
	}
	write(os.Stdout, results, *n)
}

// read collects the passed, failed and skipped tests' times.
func read(r io.Reader, sub bool) ([]result, error) {
	var results []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Test == "" {
			continue // a build line, or a package's own result
		}
		if !sub && strings.Contains(e.Test, "/") {
			continue
		}
		switch e.Action {
		case "pass", "fail", "skip":
			results = append(results, result{e.Package, e.Test, e.Action, e.Elapsed})
		}
	}
	return results, sc.Err()
}

// write prints the n slowest, slowest first, and the total of them all.
func write(w io.Writer, results []result, n int) {
	slices.SortStableFunc(results, func(a, b result) int {
		switch {
		case a.secs > b.secs:
			return -1
		case a.secs < b.secs:
			return 1
		}
		return strings.Compare(a.test, b.test)
	})
	var total float64
	for _, r := range results {
		total += r.secs
	}
	for i, r := range results[:min(n, len(results))] {
		mark := ""
		if r.action != "pass" {
			mark = " (" + r.action + ")"
		}
		fmt.Fprintf(w, "%3d %7.2fs  %s %s%s\n", i+1, r.secs, strings.TrimPrefix(r.pkg, "github.com/vpnd/vpnd/"), r.test, mark)
	}
	fmt.Fprintf(w, "    %7.2fs  in all, %d tests\n", total, len(results))
}
