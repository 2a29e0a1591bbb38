package tun

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// WatchLink returns a channel that is closed once the link with this index
// is gone: deleted, moved to another namespace, or removed by the kernel
// when the last fd of a non-persistent tun was closed.
//
// A link subscription dies on any receive error, ENOBUFS above all, when
// the kernel drops events because the reader was slow; the event that was
// lost may be the very RTM_DELLINK being waited for. So after every
// (re)subscription the watcher asks the kernel directly whether the link
// still exists, and it resubscribes whenever the subscription ends. The
// subscription's channel is always drained: netlink's reader goroutine
// blocks on a full channel and would otherwise leak.
//
// Cancelling ctx stops the watch and releases everything without closing
// the returned channel.
func (n *Netlink) WatchLink(ctx context.Context, index int) (<-chan struct{}, error) {
	if err := checkIndex(index); err != nil {
		return nil, fmt.Errorf("watch link: %w", err)
	}
	sub, err := n.subscribe()
	if err != nil {
		return nil, fmt.Errorf("watch link %d: %w", index, err)
	}
	gone := make(chan struct{})
	go n.watch(ctx, index, sub, gone)
	return gone, nil
}

type linkSub struct {
	updates chan netlink.LinkUpdate
	done    chan struct{}
	// errs gets a token whenever netlink reports an error; the watcher
	// then checks the link directly, since an event may have been lost.
	errs chan struct{}
}

// close ends the subscription and drains it until netlink's reader
// goroutine has closed the channel, so that nothing is left behind.
func (s *linkSub) close() {
	close(s.done)
	for range s.updates {
	}
}

func (n *Netlink) subscribe() (*linkSub, error) {
	s := &linkSub{
		updates: make(chan netlink.LinkUpdate, 64),
		done:    make(chan struct{}),
		errs:    make(chan struct{}, 1),
	}
	opts := netlink.LinkSubscribeOptions{
		ListExisting:      true,
		ReceiveBufferSize: n.watchRcvBuf,
		ErrorCallback: func(err error) {
			select {
			case <-s.done:
				return // our own close
			default:
			}
			n.log.Debug("link subscription error", zap.Error(err))
			select {
			case s.errs <- struct{}{}:
			default:
			}
		},
	}
	if err := netlink.LinkSubscribeWithOptions(s.updates, s.done, opts); err != nil {
		close(s.done)
		return nil, fmt.Errorf("subscribe to link events: %w", err)
	}
	return s, nil
}

// linkExists asks the kernel directly. Only a definite "no such device"
// counts as gone; any other error is treated as "still there" and checked
// again on the next subscription error.
func (n *Netlink) linkExists(index int) bool {
	_, err := netlink.LinkByIndex(index)
	if err != nil && !isLinkNotFound(err) {
		n.log.Warn("link lookup failed", zap.Int("index", index), zap.Error(err))
	}
	return !isLinkNotFound(err)
}

func (n *Netlink) watch(ctx context.Context, index int, sub *linkSub, gone chan struct{}) {
	log := n.log.With(zap.Int("index", index))
	backoff := 10 * time.Millisecond
	for {
		if sub != nil {
			// The subscription is live before this check, so a deletion
			// after it cannot be missed.
			if !n.linkExists(index) {
				sub.close()
				log.Debug("link gone")
				close(gone)
				return
			}
			switch n.follow(ctx, index, sub) {
			case followGone:
				sub.close()
				log.Debug("link gone")
				close(gone)
				return
			case followCancelled:
				sub.close()
				return
			}
			sub.close()
			log.Info("link subscription lost; resubscribing")
			backoff = 10 * time.Millisecond
		}
		var err error
		sub, err = n.subscribe()
		if err != nil {
			log.Warn("link resubscribe failed", zap.Error(err), zap.Duration("retry", backoff))
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

type followResult int

const (
	followGone followResult = iota
	followCancelled
	followLost
)

func (n *Netlink) follow(ctx context.Context, index int, sub *linkSub) followResult {
	for {
		select {
		case <-ctx.Done():
			return followCancelled
		case u, ok := <-sub.updates:
			if !ok {
				return followLost
			}
			if u.Header.Type == unix.RTM_DELLINK && int(u.Index) == index {
				return followGone
			}
		case <-sub.errs:
			if !n.linkExists(index) {
				return followGone
			}
		}
	}
}
