package compile

import (
	"slices"

	"github.com/flatnet/flatnet/dataplane/ipv4"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// A policy change that names a CIDR prefix the datapath does not hold yet is held
// back for one write: the prefix is staged first, under the rules in force, and
// the change applies once that write is in (Written).
//
// Why: the datapath writes the endpoints' policies before it upserts new prefixes,
// so that no address carries an identity its policies do not know. A change that
// narrows an ipBlock from 10.0.0.0/8 to 10.1.0.0/16 would, in one write, leave
// 10.1.2.3 on 10/8's identity, which the new rules no longer admit, until 10.1/16
// is upserted: dropped on a path the old and the new rules both keep open. Staged,
// 10.1/16 first joins every rule whose block holds it (the old 10/8 rule admits it,
// as it admits any address inside), the addresses move onto it, and only then do
// the rules change. A policy that isolates a pod to 10.1/16 gets the same order.
// Together with the retirement of the prefixes no rule names (prefixes), every
// address keeps an identity that both the old and the new rules admit whenever
// both admit the address. Cilium's selector cache gets the same order from
// allocating a CIDR's identity, and updating the selectors that select it, before
// the ipcache is told.
type heldChange struct {
	key    string
	pols   []*policy.Policy
	del    bool          // DeletePolicy
	staged []ipv4.Prefix // the prefixes it staged (one naming each)
}

// stage holds back a change h of a key's rules when it names a prefix not written
// yet, or when a change of the key is held already (the changes of a key apply in
// order), and says whether it did.
//
// Nothing is held before the first Flush: a compiler filling from nothing (an
// agent's first sync, whose write replaces whatever its predecessor left pinned)
// has no rules in force to stage under, and its first write must be whole.
func (c *Compiler) stage(h heldChange) bool {
	if !c.flushed {
		return false
	}
	named := namedPrefixes(h.pols)
	var fresh []ipv4.Prefix
	for _, p := range named {
		if _, ok := c.pfx.byPrefix[p]; !ok {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) == 0 && !c.waitsBehind(h.key, named) {
		return false
	}
	for _, p := range fresh {
		c.pfx.use(p)
	}
	h.staged = fresh
	c.held = append(c.held, h)
	return true
}

// waitsBehind reports whether a change of key naming the prefixes named must
// follow a held change: one of the same key, or one whose staged prefixes (not
// written yet) it names.
func (c *Compiler) waitsBehind(key string, named []ipv4.Prefix) bool {
	for _, hs := range [2][]heldChange{c.held, c.ready} {
		for _, h := range hs {
			if h.key == key || slices.ContainsFunc(h.staged, func(p ipv4.Prefix) bool { return slices.Contains(named, p) }) {
				return true
			}
		}
	}
	return false
}

// applyReady applies the changes the last written Flush staged, in the order they
// came, then lets go of their staging: a prefix no rule took up then retires.
func (c *Compiler) applyReady() {
	ready := c.ready
	c.ready = nil
	for _, h := range ready {
		c.applyRules(h.key, h.pols, h.del)
	}
	for _, h := range ready {
		for _, p := range h.staged {
			c.pfx.drop(p)
		}
	}
}

// namedPrefixes lists the prefixes pols' CIDR peers name, blocks and exceptions.
func namedPrefixes(pols []*policy.Policy) []ipv4.Prefix {
	var out []ipv4.Prefix
	for _, p := range pols {
		for _, rule := range p.Rules {
			for _, peer := range rule.Peers {
				if peer.CIDR != nil {
					out = append(out, peer.CIDR.Prefix)
					out = append(out, peer.CIDR.Except...)
				}
			}
		}
	}
	return out
}
