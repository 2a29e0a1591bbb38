package tun

import (
	"context"
	"time"

	"github.com/vpnd/vpnd/internal/firewall"
	"github.com/vpnd/vpnd/internal/manager"
)

// nftFirewall is vpnd's nftables table (internal/firewall) in the
// manager's terms.
type nftFirewall struct{ t *firewall.Table }

// OpenFirewall opens vpnd's nftables table `inet name` in the current
// network namespace, after checking that the kernel can hold it; the error
// says what is missing.
func OpenFirewall(name string) (Firewall, error) {
	t, err := firewall.Open(name)
	if err != nil {
		return nil, err
	}
	return nftFirewall{t}, nil
}

func spec(f manager.Firewall) firewall.Spec {
	return firewall.Spec{Lockdown: f.Lockdown, FailClosedV4: f.FailClosedV4, FailClosedV6: f.FailClosedV6,
		AllowIfname: f.Ifname, ProtectMark: f.ProtectMark}
}

func (f nftFirewall) Holds(w manager.Firewall) (bool, error) { return f.t.Holds(spec(w)) }
func (f nftFirewall) Set(w manager.Firewall) error           { return f.t.Apply(spec(w)) }
func (f nftFirewall) Close() error                           { return f.t.Close() }

// Watch signals changes to the table until ctx ends. The table's own watch
// ends on a socket error: then it signals (something may have been
// missed) and watches again.
func (f nftFirewall) Watch(ctx context.Context) (<-chan struct{}, error) {
	ch, err := f.t.Watch(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(out)
		for {
			for range ch {
				signal()
			}
			if ctx.Err() != nil {
				return
			}
			signal()
			for ch = nil; ch == nil; {
				select {
				case <-ctx.Done():
					return
				case <-time.After(reopenDelay):
				}
				ch, _ = f.t.Watch(ctx)
			}
		}
	}()
	return out, nil
}
