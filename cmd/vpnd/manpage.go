package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	flag "github.com/spf13/pflag"

	"github.com/vpnd/vpnd/internal/roff"
)

// writeManPage writes vpnd.8 into dir, from fs's flag definitions and the
// description that --help prints, so that the page cannot drift from
// them. The roff is written here rather than by a documentation library:
// the daemon should not carry one in its binary for a hidden flag.
func writeManPage(fs *flag.FlagSet, dir string) error {
	var help bytes.Buffer
	out := fs.Output()
	fs.SetOutput(&help)
	fs.Usage()
	fs.SetOutput(out)
	description, _, _ := strings.Cut(strings.TrimPrefix(help.String(), "Usage: vpnd [flags]\n\n"), "\nFlags:\n")

	var b strings.Builder
	b.WriteString(roff.TH("vpnd", "8"))
	b.WriteString(".SH NAME\nvpnd \\- the VPN manager daemon\n")
	b.WriteString(".SH SYNOPSIS\n\\fBvpnd [flags]\\fP\n")
	b.WriteString(".SH DESCRIPTION\n")
	writeDescription(&b, description)
	b.WriteString(".SH OPTIONS\n")
	fs.VisitAll(func(f *flag.Flag) {
		if f.Hidden {
			return
		}
		b.WriteString(".TP\n")
		if f.Shorthand != "" {
			fmt.Fprintf(&b, "\\fB-%s\\fP, ", f.Shorthand)
		}
		fmt.Fprintf(&b, "\\fB--%s\\fP", f.Name)
		switch {
		case f.Value.Type() == "bool":
		case f.Value.Type() == "string":
			fmt.Fprintf(&b, "=%q", f.DefValue)
		default:
			fmt.Fprintf(&b, "=%s", f.DefValue)
		}
		b.WriteString("\n")
		// The usage's `NAME` of the value, in bold as in a synopsis.
		usage := roff.Line(f.Usage)
		if varname, _ := flag.UnquoteUsage(f); varname != "" {
			usage = strings.Replace(usage, "`"+varname+"`", "\\fB"+varname+"\\fR", 1)
		}
		b.WriteString(usage + "\n")
	})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("--man: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vpnd.8"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("--man: %w", err)
	}
	return nil
}

// writeDescription writes the help's description as roff: blank lines
// start paragraphs, and a numbered item ("  1. ...", continued on
// indented lines) becomes one .IP item.
func writeDescription(b *strings.Builder, text string) {
	inItem := false
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
			inItem = false
			b.WriteString(".PP\n")
		case len(trimmed) > 2 && trimmed[0] >= '1' && trimmed[0] <= '9' && strings.HasPrefix(trimmed[1:], ". "):
			inItem = true
			fmt.Fprintf(b, ".IP \"%s\" 4\n%s\n", trimmed[:2], roff.Line(trimmed[3:]))
		case inItem && line != trimmed:
			b.WriteString(roff.Line(trimmed) + "\n")
		default:
			if inItem {
				// Back at the margin after an item.
				b.WriteString(".PP\n")
				inItem = false
			}
			b.WriteString(roff.Line(line) + "\n")
		}
	}
}
