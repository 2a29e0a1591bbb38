package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// scripts/test says which stage starts before it runs it (the tests print
// nothing for minutes), and how long each took. A go that only says how
// it was called stands in for the real one.
func TestScriptsTestSaysItsStages(t *testing.T) {
	t.Parallel()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	stubs := t.TempDir()
	if err := os.WriteFile(filepath.Join(stubs, "go"), []byte("#!/bin/sh\necho \"GO $*\" >&2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "test"), "-run", "TestNothing")
	cmd.Env = append(os.Environ(), "PATH="+stubs+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/test: %v\n%s", err, out)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(l, "scripts/test: [") || strings.HasPrefix(l, "GO ") {
			l, _, _ = strings.Cut(l, ":") // the stage's number, not its words
			got = append(got, l)
		}
	}
	want := "scripts/test,scripts/test,GO vet ./...,GO -C bench vet ./...,scripts/test,GO test -race -count=1 -timeout 30m -run TestNothing ./...," +
		"scripts/test,GO test -race -count=1 -run TestNothing ./test/,GO test -race -count=1 -run TestNothing ./examples/...," +
		"GO test -count=1 -run ^TestReconcilerConvergesUnderFaults$ ./internal/manager/,GO -C bench test -race -count=1 -run TestNothing ./..."
	if strings.Join(got, ",") != want {
		t.Errorf("stages and commands in this order:\n%s\nwant %s", out, want)
	}
	for i, stage := range []string{"[1/4]", "[2/4]", "[3/4]", "[4/4]"} {
		if n := strings.Index(string(out), "scripts/test: "+stage); n < 0 {
			t.Errorf("stage %d is not announced:\n%s", i+1, out)
		}
	}
	if !regexp.MustCompile(`scripts/test: done in \dm\d+s \(setup \d+s, vet \d+s, tests \d+s, sim \d+s\)\n$`).Match(out) {
		t.Errorf("no summary of the stages' times at the end:\n%s", out)
	}
}
