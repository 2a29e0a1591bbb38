package main

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEQuotesThisProgram keeps the README's Go example of simulation
// mode true: it must be a verbatim excerpt of run, which the compiler
// checks and the integration tests run against vpnd --sim.
func TestREADMEQuotesThisProgram(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "(examples/simping/main.go)"
	_, after, ok := strings.Cut(string(readme), marker)
	if !ok {
		t.Fatalf("README.md no longer links %s", marker)
	}
	_, block, ok := strings.Cut(after, "```go\n")
	if !ok {
		t.Fatal("no Go block after the link in README.md")
	}
	block, _, _ = strings.Cut(block, "```")
	// main.go indents run's body with one tab.
	var dedented strings.Builder
	for _, line := range strings.SplitAfter(string(src), "\n") {
		dedented.WriteString(strings.TrimPrefix(line, "\t"))
	}
	if !strings.Contains(dedented.String(), block) {
		t.Errorf("README.md's example is not an excerpt of examples/simping/main.go:\n%s", block)
	}
}
