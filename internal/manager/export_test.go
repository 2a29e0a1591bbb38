package manager

import (
	"time"

	"go.uber.org/zap"
)

// SetWaits shortens how long m waits for the kernel before it answers.
func SetWaits(m *Manager, leftover, bringUp, end time.Duration) {
	m.waits = waits{leftover: leftover, bringUp: bringUp, end: end}
}

// SetSettle changes how long m's loop lets foreign changes settle before
// it reads the kernel. Call it before Start.
func SetSettle(m *Manager, quiet, most time.Duration) {
	m.rec.settleQuiet, m.rec.settleMax = quiet, most
}

// TestReconciler is the reconciler without its loop: a test drives its
// passes one by one.
type TestReconciler struct{ r *reconciler }

// NewTestReconciler returns a reconciler of k's places that never
// throttles and runs no loop.
func NewTestReconciler(k Kernel, places Places, log *zap.Logger) *TestReconciler {
	if log == nil {
		log = zap.NewNop()
	}
	r := newReconciler(k, places, log, noObserver{}, nil)
	r.tokens = 1e18
	return &TestReconciler{r: r}
}

// Pass runs one pass towards w.
func (t *TestReconciler) Pass(w Want) (converged bool, err error) {
	gen := t.r.Set(w)
	res, _ := t.r.pass(&w, gen)
	return res.converged, res.err
}

// Adopt takes what is in vpnd's places as vpnd's own, as at start.
func (t *TestReconciler) Adopt(isLockdownRule func(Rule) bool) error {
	return t.r.adopt(isLockdownRule)
}
