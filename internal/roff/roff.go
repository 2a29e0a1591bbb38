// Package roff writes the little of man(7) that vpnd's and vpnd-wg's man
// pages need. Their pages are generated from the programs' own --help
// text and flag definitions, so that they cannot drift from them; the
// daemon should not carry a documentation library in its binary for that.
package roff

import (
	"fmt"
	"strings"
	"time"

	"github.com/vpnd/vpnd/internal/version"
)

// TH is a page's title line: name in capitals, the section, the month of
// the build, and the version of vpnd that the page describes.
func TH(name, section string) string {
	return fmt.Sprintf(".nh\n.TH \"%s\" \"%s\" \"%s\" \"vpnd %s\" \"vpnd manual\"\n",
		Quote(strings.ToUpper(name)), section, time.Now().Format("Jan 2006"), Quote(version.String()))
}

// Line escapes a line of text: backslashes, and a leading dot or quote
// that would make it a request.
func Line(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// Quote makes s safe inside a double-quoted argument.
func Quote(s string) string {
	return strings.ReplaceAll(Line(s), `"`, `\(dq`)
}

// Verbatim is text shown as it is, line for line (usage lines, flag
// lists), without filling.
func Verbatim(text string) string {
	var b strings.Builder
	b.WriteString(".PP\n.nf\n")
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString(Line(l) + "\n")
	}
	b.WriteString(".fi\n")
	return b.String()
}
