package rpc

import (
	"sync"

	"github.com/vpnd/vpnd/protocol"
)

// FreeBytes is how much of a request each connection may hold without
// drawing on a Budget. A request that fits (every request but a large
// setUp) is never held up by others' use of the budget, and an idle
// connection holds no budget at all.
const FreeBytes = 16 << 10

// Budget bounds the request bytes that a daemon's connections hold in
// memory: bytes read from the socket and not yet answered. A connection
// whose request outgrows FreeBytes takes a slot of the budget, room for
// one largest message (protocol.MaxMessage), and keeps it until it has
// answered that request. While no slot is free it stops reading, so the
// sender blocks: backpressure, not refusal. Each key (vpnd uses the
// peer's uid) may hold at most a share of the slots, so one user's
// connections cannot take all of them.
//
// Slots rather than bytes: connections that each drew a part of a byte
// budget could together hold all of it with none of their lines complete,
// and wait for each other until their lines time out. A slot always has
// room for the whole line.
//
// With a budget of T bytes and N connections, request bytes held stay
// below T + N*FreeBytes.
type Budget struct {
	share int

	mu      sync.Mutex
	free    int
	used    map[uint32]int // slots per key; keys at 0 are deleted
	changed chan struct{}  // closed and replaced when a slot is freed
}

// slotBytes is what one slot holds at most: a whole message and what
// FreeBytes lets a connection read beyond it.
const slotBytes = protocol.MaxMessage

// NewBudget returns a budget of total bytes, of which one key may hold
// share. Both are rounded down to whole slots of protocol.MaxMessage,
// and are at least one slot.
func NewBudget(total, share int64) *Budget {
	slots := int(max(1, total/slotBytes))
	perKey := int(min(int64(slots), max(1, share/slotBytes)))
	return &Budget{share: perKey, free: slots, used: make(map[uint32]int), changed: make(chan struct{})}
}

// Free reports how many slots are free.
func (b *Budget) Free() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.free
}

// give frees a slot of key, and wakes whoever waits for one.
func (b *Budget) give(key uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free++
	if b.used[key]--; b.used[key] <= 0 {
		delete(b.used, key)
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

// take takes a slot for key, waiting until one is free and key is within
// its share. It gives up, returning false, when stop is closed.
func (b *Budget) take(key uint32, stop <-chan struct{}) bool {
	for {
		b.mu.Lock()
		if b.free > 0 && b.used[key] < b.share {
			b.free--
			b.used[key]++
			b.mu.Unlock()
			return true
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-stop:
			return false
		}
	}
}
