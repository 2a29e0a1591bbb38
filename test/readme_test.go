package test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readme(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The README starts with the two commands, and says next to the first
// that it runs vpnd on this host, where its start-up sweep runs, until it
// is stopped, and that scripts/try is the safe first step.
func TestREADMEStartsWithTheTwoCommands(t *testing.T) {
	r := readme(t)
	head := "# vpnd\n\n```sh\ngo build -o bin/ ./cmd/... && ./bin/vpnd    # "
	if !strings.HasPrefix(r, head) {
		t.Fatalf("README does not start with %q", head)
	}
	block, after, _ := strings.Cut(strings.TrimPrefix(r, "# vpnd\n\n```sh\n"), "```\n")
	if lines := strings.Split(strings.TrimSpace(block), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "scripts/test ") {
		t.Errorf("the first block is not the two commands:\n%s", block)
	}
	note, _, _ := strings.Cut(strings.TrimLeft(after, "\n"), "\n\n")
	note = strings.Join(strings.Fields(note), " ")
	for _, want := range []string{"this host's own network namespace", "start-up sweep", "stop it before you run the tests", "sudo scripts/try"} {
		if !strings.Contains(note, want) {
			t.Errorf("the note after the first commands does not say %q:\n%s", want, note)
		}
	}
}

// Outside the sections about an installed vpnd, the README's examples run
// the commands from ./bin, where its first command builds them, not from
// a PATH that only go install or a package fills.
func TestREADMERunsTheBuiltCommands(t *testing.T) {
	installed := map[string]bool{"## Install": true, "## Run under systemd": true, "## vpnctl": true}
	bare := regexp.MustCompile(`(^|[;&|(]\s*|sudo |=\S* )(vpnd|vpnctl|vpnd-wg)( |$)`)
	section, inBlock := "", false
	for i, line := range strings.Split(readme(t), "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inBlock = !inBlock
		case !inBlock && strings.HasPrefix(line, "## "):
			section = line
		case inBlock && !installed[section] && bare.MatchString(line):
			t.Errorf("README.md:%d (%s) runs a command that is not in ./bin: %s", i+1, section, line)
		}
	}
}
