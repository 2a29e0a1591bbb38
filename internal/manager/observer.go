package manager

// Observer is told about the VPN's life, for metrics. Its methods are
// called with the manager's lock held, or from self-healing, and must not
// block.
type Observer interface {
	// VPNUp: a VPN came up holding routes routes and rules rules.
	VPNUp(routes, rules int)
	// VPNDown: the VPN ended, for reason (a vpnStateChanged reason).
	VPNDown(reason string)
	// Repaired: self-healing put back something of guard's ("vpn" or
	// "lockdown").
	Repaired(guard string)
}

// noObserver observes nothing: Options.Observer left nil.
type noObserver struct{}

func (noObserver) VPNUp(int, int)  {}
func (noObserver) VPNDown(string)  {}
func (noObserver) Repaired(string) {}
