//! Finding the references to the sender's objects in jelly bytes, without building anything.
//!
//! When a receiver refuses a message part-way through, the references after the refusal never
//! become proxies or cached copies, so nothing would ever send their `decref`s or `decache`s and
//! the sender would keep those objects for the life of the connection. The broker uses this
//! walk to give them back.

use crate::banana::cursor::{Cursor, Item};
use crate::banana::{Dialect, Limits};

use super::{tag, Tag};

/// A reference to one of the sender's objects, as it appears in jelly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `["remote", luid]`: given back with `decref`.
    Remote(i64),
    /// A Cacheable's first sending `[type_tag, luid, state]` or a later `["cached", luid]`:
    /// given back with `decache`.
    Cache(i64),
}

/// Every reference in the jelly values from `from` to the end of `expr` (an expression the
/// framer has validated), in order.
pub fn references(expr: &[u8], dialect: Dialect, limits: Limits, from: usize) -> Vec<Claim> {
    let mut cur = Cursor::new(expr, dialect, limits);
    cur.skip_to(from);
    let mut found = Vec::new();
    // What is left to walk, innermost last (a heap stack: no nesting can exhaust the native one).
    let mut pending = Vec::new();
    while !cur.at_end() {
        pending.push((Walk::Values, 1));
        if walk(&mut cur, &mut pending, &mut found).is_none() {
            break;
        }
    }
    found
}

/// What a count on the walk's stack counts.
#[derive(Clone, Copy)]
enum Walk {
    /// Jelly values.
    Values,
    /// The bare `[key, value]` items of a dictionary.
    DictItems,
}

/// Walk everything `pending` holds; None if the bytes end early or are not banana.
fn walk(cur: &mut Cursor<'_>, pending: &mut Vec<(Walk, usize)>, found: &mut Vec<Claim>) -> Option<()> {
    while let Some((walk, count)) = pending.last_mut() {
        if *count == 0 {
            pending.pop();
            continue;
        }
        *count -= 1;
        match *walk {
            Walk::Values => value(cur, pending, found)?,
            Walk::DictItems => {
                if let Item::List(k) = cur.next_item()? {
                    pending.push((Walk::Values, k));
                }
            }
        }
    }
    Some(())
}

/// Read the start of one jelly value, noting a reference; what else it holds goes on `pending`.
fn value(cur: &mut Cursor<'_>, pending: &mut Vec<(Walk, usize)>, found: &mut Vec<Claim>) -> Option<()> {
    let Item::List(n) = cur.next_item()? else { return Some(()) };
    if n == 0 {
        return Some(());
    }
    let first = cur.next_item()?;
    let items = n - 1;
    match first {
        Item::Bytes(b"remote") if items == 1 => {
            if let Item::Int(luid) = cur.next_item()? {
                found.push(Claim::Remote(luid));
            }
        }
        Item::Bytes(b"cached") if items == 1 => {
            if let Item::Int(luid) = cur.next_item()? {
                found.push(Claim::Cache(luid));
            }
        }
        Item::Bytes(t) if t == tag::DICTIONARY => pending.push((Walk::DictItems, items)),
        // `[type_tag, luid, state]` under a tag that is not jelly's own: a Cacheable's first
        // sending.
        Item::Bytes(t) if items == 2 && Tag::classify(t) == Tag::Other => {
            let mut ahead = cur.clone();
            if let Item::Int(luid) = ahead.next_item()? {
                found.push(Claim::Cache(luid));
                *cur = ahead;
                pending.push((Walk::Values, 1));
            } else {
                pending.push((Walk::Values, 2));
            }
        }
        Item::List(k) => {
            // Not jelly (a list where a tag belongs); its items are still walked, then the rest.
            pending.push((Walk::Values, items));
            pending.push((Walk::Values, k));
        }
        _ => pending.push((Walk::Values, items)),
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::Encoder;

    fn tagged(enc: &mut Encoder, t: &[u8], luid: i64) {
        enc.list(2).unwrap();
        enc.bytes(t).unwrap();
        enc.int(luid);
    }

    #[test]
    fn finds_references_and_caches_in_order_but_not_dictionary_keys() {
        let mut enc = Encoder::new(Dialect::Pb);
        // ["tuple", ["remote", 3], ["dictionary", [b"remote", 9], [["remote", 4], ["list", ["remote", 5]]]],
        //  ["my.Cache", 6, ["list", ["cached", 7]]], ["decimal", 1, 2], ["reference", 1, ["list"]]]
        enc.list(6).unwrap();
        enc.bytes(b"tuple").unwrap();
        tagged(&mut enc, b"remote", 3);
        enc.list(3).unwrap();
        enc.bytes(b"dictionary").unwrap();
        tagged(&mut enc, b"remote", 9);
        enc.list(2).unwrap();
        tagged(&mut enc, b"remote", 4);
        enc.list(2).unwrap();
        enc.bytes(b"list").unwrap();
        tagged(&mut enc, b"remote", 5);
        enc.list(3).unwrap();
        enc.bytes(b"my.Cache").unwrap();
        enc.int(6);
        enc.list(2).unwrap();
        enc.bytes(b"list").unwrap();
        tagged(&mut enc, b"cached", 7);
        enc.list(3).unwrap();
        enc.bytes(b"decimal").unwrap();
        enc.int(1);
        enc.int(2);
        enc.list(3).unwrap();
        enc.bytes(b"reference").unwrap();
        enc.int(1);
        enc.list(1).unwrap();
        enc.bytes(b"list").unwrap();
        let found = references(&enc.out, Dialect::Pb, Limits::twisted(), 0);
        use Claim::*;
        assert_eq!(found, vec![Remote(3), Remote(4), Remote(5), Cache(6), Cache(7)]);
    }

    #[test]
    fn deep_nesting_is_walked_without_recursion() {
        // ["list", ["list", ... ["remote", 7] ...]] 100_000 deep, and as many bare lists.
        let depth = 100_000;
        let mut enc = Encoder::new(Dialect::Pb);
        for _ in 0..depth {
            enc.list(2).unwrap();
            enc.bytes(b"list").unwrap();
        }
        tagged(&mut enc, b"remote", 7);
        let limits = Limits { max_depth: usize::MAX, ..Limits::twisted() };
        assert_eq!(references(&enc.out, Dialect::Pb, limits, 0), vec![Claim::Remote(7)]);
        let bare = [[1, crate::banana::tb::LIST]].repeat(depth).concat();
        assert_eq!(references(&bare, Dialect::Pb, limits, 0), vec![]);
    }

    #[test]
    fn starts_part_way_and_stops_quietly_on_truncated_input() {
        let mut enc = Encoder::new(Dialect::Pb);
        enc.list(3).unwrap();
        enc.bytes(b"list").unwrap();
        tagged(&mut enc, b"remote", 1);
        let second = enc.out.len();
        tagged(&mut enc, b"remote", 2);
        let later = references(&enc.out, Dialect::Pb, Limits::twisted(), second);
        assert_eq!(later, vec![Claim::Remote(2)]);
        let cut = &enc.out[..enc.out.len() - 1];
        assert_eq!(references(cut, Dialect::Pb, Limits::twisted(), 0), vec![Claim::Remote(1)]);
    }
}
