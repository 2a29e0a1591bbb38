package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table is one nftables table of vpnd's, `inet NAME`, in the network
// namespace of the thread that opened it. Its methods may be called from
// several goroutines; they run one at a time.
type Table struct {
	name string

	mu  sync.Mutex
	nft *nftables.Conn // lasting: its socket stays in Open's namespace
	raw *netlink.Conn  // for what the nftables package does not give: the generation, raw rules

	watchMu  sync.Mutex
	watchers map[*netlink.Conn]bool
	watching sync.WaitGroup // the watchers' goroutines
	closed   bool
	signals  int // tokens Watch tried to send, for the tests

	watchReadBuffer int // the monitor socket's SO_RCVBUF if > 0, for the tests
}

// family of vpnd's table: inet, one table for IPv4 and IPv6.
const family = nftables.TableFamilyINet

// Open opens vpnd's table `inet name` in the calling thread's network
// namespace (it need not exist yet) and checks that the kernel can hold it:
// nf_tables reachable, CAP_NET_ADMIN, the inet family, a filter chain at the
// output hook, uid interval sets and the expressions the filter uses. The
// check commits transactions that each add and delete a probe table
// `inet name_probe`, which therefore never shows in the ruleset; if a table
// of that name exists, Open leaves it alone and fails. The error says what
// is missing.
func Open(name string) (*Table, error) {
	if err := checkTableName(name); err != nil {
		return nil, err
	}
	nft, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, explain("open an nfnetlink socket", err)
	}
	raw, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		nft.CloseLasting()
		return nil, explain("open an nfnetlink socket", err)
	}
	t := &Table{name: name, nft: nft, raw: raw, watchers: map[*netlink.Conn]bool{}}
	if err := t.probe(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Name is the table's name (its family is always inet).
func (t *Table) Name() string { return t.name }

// probe checks, step by step, that the kernel can hold vpnd's table, so
// that the error names the missing piece.
func (t *Table) probe() error {
	if _, err := t.nft.ListTablesOfFamily(family); err != nil {
		return explain("list nftables tables", err)
	}
	probe := &nftables.Table{Name: t.name + probeSuffix, Family: family}
	// The inet family with a filter chain at the output hook. Create, not
	// add: a table of that name that someone else made fails the check
	// (EEXIST) instead of being deleted.
	t.nft.CreateTable(probe)
	t.nft.AddChain(outputChain(probe))
	t.nft.DelTable(probe)
	if err := t.nft.Flush(); errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("nftables: table inet %s exists; vpnd adds and deletes a table of that name to check the kernel: remove it", probe.Name)
	} else if err != nil {
		return explain("add an inet table with a filter chain at the output hook (CONFIG_NF_TABLES_INET)", err)
	}
	// Sets and rules of every kind vpnd writes.
	sample := Spec{
		Lockdown:     []UIDRange{{Start: 1, End: 1}},
		FailClosedV4: []UIDRange{{Start: 2, End: 3}},
		FailClosedV6: []UIDRange{{Start: 4, End: 4}},
		AllowIfname:  "lo",
		ProtectMark:  1,
	}
	n, err := sample.normalize()
	if err != nil {
		return err
	}
	t.nft.CreateTable(probe)
	if err := t.write(probe, n); err != nil {
		return t.discard(err)
	}
	t.nft.DelTable(probe)
	if err := t.nft.Flush(); err != nil {
		return explain("add uid interval sets and rules with the meta, cmp, bitwise, byteorder, lookup and immediate expressions", err)
	}
	return nil
}

// explain wraps err from nf_tables with what the usual errnos mean.
func explain(what string, err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.EPERM):
		hint = "; needs CAP_NET_ADMIN in the network namespace's user namespace"
	case errors.Is(err, unix.EPROTONOSUPPORT):
		hint = "; the kernel has no nfnetlink (CONFIG_NETFILTER_NETLINK)"
	case errors.Is(err, unix.EINVAL) && what == "list nftables tables":
		hint = "; the kernel has no nf_tables (CONFIG_NF_TABLES, module nf_tables)"
	case errors.Is(err, unix.EAFNOSUPPORT):
		hint = "; the kernel has no inet family for nf_tables (CONFIG_NF_TABLES_INET)"
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		hint = "; the kernel lacks a chain type or expression that vpnd's filter uses"
	}
	return fmt.Errorf("nftables: %s: %w%s", what, err, hint)
}

func (t *Table) table() *nftables.Table { return &nftables.Table{Name: t.name, Family: family} }

// outputChain is the filter's base chain: type filter, hook output,
// priority filter (0), policy accept. Priority 0 runs after the mangle
// (-150) and DNAT (-100) chains, which may re-route a packet: vpnd's chain
// sees the link it really leaves by, and the mark mangle gave it.
func outputChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     chainName,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	}
}

// write queues the table's objects for n into the pending transaction.
func (t *Table) write(tab *nftables.Table, n normalized) error {
	t.nft.AddTable(tab)
	for i, s := range n.sets() {
		set := &nftables.Set{
			Table:        tab,
			ID:           uint32(i + 1), // ours, so that the package's global counter stays out of it
			Name:         s.name,
			KeyType:      nftables.TypeUID,
			KeyByteOrder: binaryutil.BigEndian,
			Interval:     true,
			// Constant: nobody adds or removes a uid behind vpnd's back
			// (Apply replaces the whole table anyway).
			Constant: true,
		}
		if err := t.nft.AddSet(set, elements(s.uids)); err != nil {
			return fmt.Errorf("nftables: add set %s: %w", s.name, err)
		}
	}
	chain := t.nft.AddChain(outputChain(tab))
	for _, r := range n.rules() {
		t.nft.AddRule(&nftables.Rule{Table: tab, Chain: chain, Exprs: r.exprs})
	}
	return nil
}

// Apply makes vpnd's table exactly s in one nftables transaction: it
// deletes the table if present and adds it as s says; for an empty s it
// only deletes it. Packets never see a half-written table, nor a moment
// without one when both the old and the new s want one. It is idempotent,
// never touches another table and never flushes the ruleset.
func (t *Table) Apply(s Spec) error {
	n, err := s.normalize()
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.isClosed() {
		return errClosed
	}
	tab := t.table()
	if s.Empty() {
		if _, err := t.nft.ListTableOfFamily(t.name, family); errors.Is(err, unix.ENOENT) {
			return nil // nothing to delete; and no event for watchers
		}
	}
	// Adding a table that exists changes nothing, so the delete after it
	// always finds one: no ENOENT aborts the transaction.
	t.nft.AddTable(tab)
	t.nft.DelTable(tab)
	if !s.Empty() {
		if err := t.write(tab, n); err != nil {
			return t.discard(err)
		}
	}
	if err := t.nft.Flush(); err != nil {
		return explain(fmt.Sprintf("write table inet %s", t.name), err)
	}
	return nil
}

// discard drops the queued half of a transaction, which must never be
// sent: the nftables package has no way to do that but a new connection.
// It returns err.
func (t *Table) discard(err error) error {
	t.nft.CloseLasting()
	nft, derr := nftables.New(nftables.AsLasting())
	if derr != nil {
		nft, _ = nftables.New() // one socket per call; cannot fail
	}
	t.nft = nft
	return err
}

// state is what the kernel holds of vpnd's table.
type state struct {
	present    bool
	flags      uint32
	chains     []*nftables.Chain
	sets       map[string]*nftables.Set
	elements   map[string][]nftables.SetElement
	rules      []rawRule
	objects    int
	flowtables int
}

// Holds reports whether the kernel holds exactly what Apply(s) would
// write: for an empty s, no table; otherwise the table with no flags (not
// dormant), its one chain with the same type, hook, priority and policy, its
// sets with the same flags and uids, its rules with the same expressions in
// the same order, and nothing else (no other chain, set, rule, stateful
// object or flowtable). The reads are bracketed by the ruleset's generation
// and repeated if another transaction came between them.
func (t *Table) Holds(s Spec) (bool, error) {
	n, err := s.normalize()
	if err != nil {
		return false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.isClosed() {
		return false, errClosed
	}
	const attempts = 10
	for range attempts {
		before, err := t.generation()
		if err != nil {
			return false, err
		}
		st, err := t.read()
		if err != nil {
			return false, err
		}
		after, err := t.generation()
		if err != nil {
			return false, err
		}
		if before == after {
			return st.matches(n, s.Empty()), nil
		}
	}
	return false, fmt.Errorf("nftables: read table inet %s: the ruleset changed during each of %d reads", t.name, attempts)
}

func (st *state) matches(n normalized, empty bool) bool {
	if empty || !st.present {
		return empty && !st.present
	}
	if st.flags != 0 || st.objects != 0 || st.flowtables != 0 || len(st.chains) != 1 {
		return false
	}
	c := st.chains[0]
	if c.Name != chainName || c.Type != nftables.ChainTypeFilter || c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookOutput ||
		c.Priority == nil || *c.Priority != *nftables.ChainPriorityFilter || c.Policy == nil || *c.Policy != nftables.ChainPolicyAccept {
		return false
	}
	sets := n.sets()
	if len(st.sets) != len(sets) {
		return false
	}
	for _, want := range sets {
		got := st.sets[want.name]
		if got == nil || !got.Interval || !got.Constant || got.Anonymous || got.IsMap || got.HasTimeout || got.Dynamic ||
			got.Concatenation || got.KeyType.Name != nftables.TypeUID.Name || got.KeyType.Bytes != 4 {
			return false
		}
		rs, ok := ranges(st.elements[want.name])
		if !ok || !slices.Equal(rs, want.uids) {
			return false
		}
	}
	rules := n.rules()
	if len(st.rules) != len(rules) {
		return false
	}
	for i, want := range rules {
		got := st.rules[i]
		if got.chain != chainName || got.userdata || len(got.unknown) > 0 || !reflect.DeepEqual(got.exprs, want.exprs) {
			return false
		}
	}
	return true
}

// read dumps vpnd's table from the kernel.
func (t *Table) read() (*state, error) {
	tab, err := t.nft.ListTableOfFamily(t.name, family)
	if errors.Is(err, unix.ENOENT) {
		return &state{}, nil
	}
	if err != nil {
		return nil, explain(fmt.Sprintf("read table inet %s", t.name), err)
	}
	st := &state{present: true, flags: tab.Flags, sets: map[string]*nftables.Set{}, elements: map[string][]nftables.SetElement{}}
	chains, err := t.nft.ListChainsOfTableFamily(family)
	if err != nil {
		return nil, explain(fmt.Sprintf("read the chains of table inet %s", t.name), err)
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == t.name {
			st.chains = append(st.chains, c)
		}
	}
	sets, err := t.nft.GetSets(tab)
	if err != nil {
		return nil, explain(fmt.Sprintf("read the sets of table inet %s", t.name), err)
	}
	for _, s := range sets {
		st.sets[s.Name] = s
		els, err := t.nft.GetSetElements(s)
		if err != nil {
			return nil, explain(fmt.Sprintf("read set %s of table inet %s", s.Name, t.name), err)
		}
		st.elements[s.Name] = els
	}
	if st.rules, err = t.readRules(); err != nil {
		return nil, err
	}
	objs, err := t.nft.GetObjects(tab)
	if err != nil {
		return nil, explain(fmt.Sprintf("read the objects of table inet %s", t.name), err)
	}
	fts, err := t.nft.ListFlowtables(tab)
	if err != nil {
		return nil, explain(fmt.Sprintf("read the flowtables of table inet %s", t.name), err)
	}
	st.objects, st.flowtables = len(objs), len(fts)
	return st, nil
}

// Close ends the table's watchers (waiting for their goroutines) and
// releases its sockets. The table in the kernel stays as it is.
func (t *Table) Close() error {
	t.watchMu.Lock()
	t.closed = true
	for c := range t.watchers {
		c.Close()
	}
	t.watchMu.Unlock()
	t.watching.Wait()
	t.mu.Lock()
	defer t.mu.Unlock()
	return errors.Join(t.nft.CloseLasting(), t.raw.Close())
}

// errClosed is the error of a closed Table's methods.
var errClosed = errors.New("nftables: the table was closed")

// isClosed reports whether Close was called.
func (t *Table) isClosed() bool {
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	return t.closed
}

// ---------------------------------------------------------------------------
// What the nftables package does not give

func nftMsgType(msg uint16) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msg)
}

// nfgenmsg is the header of every nf_tables message: family, version,
// resource id.
func nfgenmsg(fam nftables.TableFamily) []byte { return []byte{byte(fam), unix.NFNETLINK_V0, 0, 0} }

// generation returns the ruleset's generation: every committed transaction
// changes it.
func (t *Table) generation() (uint32, error) {
	msgs, err := t.raw.Execute(netlink.Message{
		Header: netlink.Header{Type: nftMsgType(unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   nfgenmsg(nftables.TableFamilyUnspecified),
	})
	if err != nil {
		return 0, explain("read the ruleset's generation", err)
	}
	for _, m := range msgs {
		if m.Header.Type != nftMsgType(unix.NFT_MSG_NEWGEN) || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("nftables: the kernel's answer carries no generation")
}

// rawRule is one rule of vpnd's table as the kernel dumps it.
type rawRule struct {
	chain    string
	exprs    []expr.Any
	unknown  []string // expressions of kinds vpnd never writes
	userdata bool
}

// readRules dumps the rules of every chain of vpnd's table. The nftables
// package skips expressions it does not know while decoding, which would
// make a foreign `log` or `counter` in a rule invisible: here every
// expression counts, and one vpnd never writes is listed as unknown.
func (t *Table) readRules() ([]rawRule, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(t.name + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := t.raw.Execute(netlink.Message{
		Header: netlink.Header{Type: nftMsgType(unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append(nfgenmsg(family), attrs...),
	})
	if err != nil {
		return nil, explain(fmt.Sprintf("read the rules of table inet %s", t.name), err)
	}
	var out []rawRule
	for _, m := range msgs {
		if m.Header.Type != nftMsgType(unix.NFT_MSG_NEWRULE) || len(m.Data) < 4 {
			continue
		}
		r, err := decodeRule(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("nftables: decode a rule of table inet %s: %w", t.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeRule(b []byte) (rawRule, error) {
	var r rawRule
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return r, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			r.userdata = true
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(one *netlink.AttributeDecoder) error {
						e, name, err := decodeExpr(one)
						switch {
						case err != nil:
							return err
						case e == nil:
							r.unknown = append(r.unknown, name)
						default:
							r.exprs = append(r.exprs, e)
						}
						return nil
					})
				}
				return list.Err()
			})
		}
	}
	return r, ad.Err()
}

// decodeExpr decodes one NFTA_LIST_ELEM of a rule's expressions: nil for
// a kind vpnd never writes.
func decodeExpr(ad *netlink.AttributeDecoder) (expr.Any, string, error) {
	var name string
	var data []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "bitwise":
		e = &expr.Bitwise{}
	case "byteorder":
		// The nftables package cannot decode it (v0.3.0).
		b, err := decodeByteorder(data)
		if err != nil {
			return nil, name, fmt.Errorf("expression %s: %w", name, err)
		}
		return b, name, nil
	case "lookup":
		e = &expr.Lookup{}
	case "immediate":
		e = &expr.Immediate{}
	default:
		return nil, name, nil
	}
	if err := expr.Unmarshal(byte(family), data, e); err != nil {
		return nil, name, fmt.Errorf("expression %s: %w", name, err)
	}
	// A verdict is an immediate into the verdict register.
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		v := &expr.Verdict{}
		if err := expr.Unmarshal(byte(family), data, v); err != nil {
			return nil, name, fmt.Errorf("expression %s: %w", name, err)
		}
		e = v
	}
	return e, name, nil
}

// decodeByteorder decodes a byteorder expression's NFTA_BYTEORDER_*
// attributes.
func decodeByteorder(data []byte) (*expr.Byteorder, error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	e := &expr.Byteorder{}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_BYTEORDER_SREG:
			e.SourceRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_DREG:
			e.DestRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_OP:
			e.Op = expr.ByteorderOp(ad.Uint32())
		case unix.NFTA_BYTEORDER_LEN:
			e.Len = ad.Uint32()
		case unix.NFTA_BYTEORDER_SIZE:
			e.Size = ad.Uint32()
		default:
			return nil, fmt.Errorf("unknown attribute %d", ad.Type())
		}
	}
	return e, ad.Err()
}
