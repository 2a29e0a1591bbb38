package tun

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// MaxNameLen is IFNAMSIZ-1: the kernel silently truncates longer names, so
// vpnd rejects them instead of creating a link under a name it did not ask for.
const MaxNameLen = 15

// ValidateName checks an interface name the way the kernel's dev_valid_name
// does, and also rejects '%', which the kernel would expand as a template
// ("tun%d"), so the link would not get the name vpnd watches and sweeps.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("interface name %q is %d bytes, longer than %d", name, len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	}
	if i := strings.IndexAny(name, "/:%"); i >= 0 {
		return fmt.Errorf("interface name %q contains %q", name, name[i])
	}
	for _, r := range name {
		if unicode.IsSpace(r) || r < 0x20 || r == 0x7f {
			return fmt.Errorf("interface name %q contains whitespace or a control character", name)
		}
	}
	return nil
}
