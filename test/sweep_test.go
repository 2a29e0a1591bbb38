package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vpnd --sweep, which the packages run when vpnd is removed, after
// stopping it: it removes what a vpnd left in the namespace, lockdown's
// rules too (no vpnd is left to lift them), keeps the stored lockdown for
// a vpnd installed again, and leaves a vpnd that still serves alone.
func TestSweepFlag(t *testing.T) {
	kernelOnly(t, "vpnd --sweep removes kernel objects")
	t.Parallel()
	d := startDaemon(t)
	admin := d.dial(t, uidRoot)
	ok(t, admin.call("setLockdown", `{"enabled":true,"applications":["4001"]}`, ""))
	owner := d.dial(t, uidNormal)
	setUpOK(t, owner.call("setUp", `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`, ""))
	lockdownRules := func() []string {
		var rs []string
		for _, r := range d.rules(t) {
			if r.Priority == d.priority+1 {
				rs = append(rs, r.String())
			}
		}
		return rs
	}
	sweep := func() (string, int) {
		cmd := vpndCommand(t, d.ns, "", "--sweep")
		cmd.Args = withoutFlag(cmd.Args, "--socket", "") // --sweep needs no socket
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}

	out, code := sweep()
	if code != 1 || !strings.Contains(out, "stop that vpnd first") {
		t.Errorf("--sweep beside a serving vpnd: exit %d, want 1 and a refusal:\n%s", code, out)
	}
	if len(d.leftovers(t)) == 0 || len(lockdownRules()) == 0 {
		t.Fatalf("--sweep touched a serving vpnd's VPN or lockdown")
	}

	d.kill(t)
	if len(d.leftovers(t)) == 0 {
		t.Fatal("a killed vpnd left nothing: the sweep cannot be tested")
	}
	out, code = sweep()
	if code != 0 || !strings.Contains(out, "vpnd: --sweep: removed ") {
		t.Errorf("--sweep: exit %d:\n%s", code, out)
	}
	if p := d.leftovers(t); len(p) > 0 {
		t.Errorf("after --sweep: %s", strings.Join(p, "; "))
	}
	if rs := lockdownRules(); len(rs) > 0 {
		t.Errorf("after --sweep, lockdown's rules are left: %v", rs)
	}
	if _, err := os.Stat(filepath.Join(stateDirFor(t, d.ns), "lockdown.json")); err != nil {
		t.Errorf("the stored lockdown is gone: %v", err)
	}
	// Nothing left: a second sweep finds nothing and succeeds.
	if out, code := sweep(); code != 0 || strings.Contains(out, "removed") {
		t.Errorf("second --sweep: exit %d:\n%s", code, out)
	}
}

// withoutFlag returns args without the first flag name and its value
// (value "" matches any).
func withoutFlag(args []string, name, value string) []string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name && (value == "" || args[i+1] == value) {
			return append(append([]string{}, args[:i]...), args[i+2:]...)
		}
	}
	return args
}
