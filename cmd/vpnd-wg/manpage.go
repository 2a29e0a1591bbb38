package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vpnd/vpnd/internal/roff"
)

// writeManPage writes vpnd-wg.1 into dir from the same text as --help and
// the commands' own flag lists (what `vpnd-wg up -h` prints), so that the
// page cannot drift from them.
func writeManPage(ctx context.Context, dir string) error {
	// The flags' defaults come from the environment; the page shows the
	// defaults as --help explains them, not the builder's.
	for _, v := range []string{"VPND_SOCKET", "XDG_RUNTIME_DIR"} {
		os.Unsetenv(v)
	}
	var b strings.Builder
	b.WriteString(roff.TH("vpnd-wg", "1"))
	b.WriteString(".SH NAME\nvpnd-wg \\- a WireGuard client for normal users, on top of vpnd\n")
	b.WriteString(".SH SYNOPSIS\n")
	b.WriteString(roff.Verbatim(strings.TrimPrefix(usage, "usage:\n")))
	b.WriteString(".SH DESCRIPTION\n")
	for _, para := range strings.Split(strings.TrimSpace(description), "\n\n") {
		b.WriteString(".PP\n" + roff.Line(strings.ReplaceAll(para, "\n", " ")) + "\n")
	}
	for _, cmd := range []string{"up", "show"} {
		var help bytes.Buffer
		if code := run(ctx, []string{cmd, "-h"}, strings.NewReader(""), &help, &help); code != 2 {
			return fmt.Errorf("man: %s -h: exit %d", cmd, code)
		}
		_, flags, _ := strings.Cut(help.String(), "\n") // after "Usage of vpnd-wg up:"
		fmt.Fprintf(&b, ".SH OPTIONS OF %s\n", strings.ToUpper(cmd))
		b.WriteString(roff.Verbatim(flags))
	}
	b.WriteString(".SH ENVIRONMENT\n.TP\n\\fBVPND_SOCKET\\fP\nvpnd's socket, when up has no \\fB--socket\\fP (default /run/vpnd/vpnd.sock).\n")
	b.WriteString(".TP\n\\fBXDG_RUNTIME_DIR\\fP, \\fBTMPDIR\\fP\nwhere tunnels serve their state (see DESCRIPTION).\n")
	b.WriteString(".SH SEE ALSO\n\\fBvpnd\\fP(8), \\fBvpnctl\\fP(1), \\fBwg\\fP(8), \\fBwg-quick\\fP(8)\n")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vpnd-wg.1"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("man: %w", err)
	}
	return nil
}
