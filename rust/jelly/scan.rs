//! Finding the `["remote", luid]` references in jelly bytes without building anything.
//!
//! When a receiver refuses a message part-way through, the references after the refusal never
//! become proxies, so nothing would ever send their `decref`s and the sender would keep those
//! objects for the life of the connection. The broker uses this walk to give them back.

use crate::banana::cursor::{Cursor, Item};
use crate::banana::{Dialect, Limits};

use super::tag;

/// Every `["remote", luid]` in the jelly values from `from` to the end of `expr` (an expression
/// the framer has validated), as `(offset of its list, luid)`, in order.
pub fn remote_references(expr: &[u8], dialect: Dialect, limits: Limits, from: usize) -> Vec<(usize, i64)> {
    let mut cur = Cursor::new(expr, dialect, limits);
    cur.skip_to(from);
    let mut found = Vec::new();
    while !cur.at_end() {
        if value(&mut cur, &mut found).is_none() {
            break;
        }
    }
    found
}

/// Walk one jelly value; None if the bytes end early or are not banana.
fn value(cur: &mut Cursor<'_>, found: &mut Vec<(usize, i64)>) -> Option<()> {
    let at = cur.pos();
    let Item::List(n) = cur.next_item()? else { return Some(()) };
    if n == 0 {
        return Some(());
    }
    let first = cur.next_item()?;
    let items = n - 1;
    match first {
        Item::Bytes(t) if t == b"remote" && items == 1 => {
            if let Item::Int(luid) = cur.next_item()? {
                found.push((at, luid));
            }
        }
        // Dictionary items are bare `[key, value]` pairs, not tagged lists.
        Item::Bytes(t) if t == tag::DICTIONARY => {
            for _ in 0..items {
                match cur.next_item()? {
                    Item::List(k) => (0..k).try_for_each(|_| value(cur, found))?,
                    Item::BigInt { .. } | Item::Int(_) | Item::Bytes(_) | Item::Float(_) => {}
                }
            }
        }
        Item::List(k) => {
            // Not jelly (a list where a tag belongs); its items are still walked.
            (0..k).try_for_each(|_| value(cur, found))?;
            (0..items).try_for_each(|_| value(cur, found))?;
        }
        _ => (0..items).try_for_each(|_| value(cur, found))?,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::Encoder;

    fn remote(enc: &mut Encoder, luid: i64) {
        enc.list(2).unwrap();
        enc.bytes(b"remote").unwrap();
        enc.int(luid);
    }

    #[test]
    fn finds_references_in_order_but_not_dictionary_keys() {
        let mut enc = Encoder::new(Dialect::Pb);
        // ["tuple", ["remote", 3], ["dictionary", [b"remote", 9], [["remote", 4], ["list", ["remote", 5]]]]]
        enc.list(3).unwrap();
        enc.bytes(b"tuple").unwrap();
        remote(&mut enc, 3);
        enc.list(3).unwrap();
        enc.bytes(b"dictionary").unwrap();
        enc.list(2).unwrap();
        enc.bytes(b"remote").unwrap();
        enc.int(9);
        enc.list(2).unwrap();
        remote(&mut enc, 4);
        enc.list(2).unwrap();
        enc.bytes(b"list").unwrap();
        remote(&mut enc, 5);
        let kwargs_at = enc.out.len();
        enc.list(1).unwrap();
        enc.bytes(b"dictionary").unwrap();
        let found = remote_references(&enc.out, Dialect::Pb, Limits::twisted(), 0);
        assert_eq!(found.iter().map(|f| f.1).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(found.iter().all(|&(at, _)| at < kwargs_at));
        // Starting part-way finds only what follows.
        let after_first = found[1].0;
        let later = remote_references(&enc.out, Dialect::Pb, Limits::twisted(), after_first);
        assert_eq!(later.iter().map(|f| f.1).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn stops_quietly_on_truncated_input() {
        let mut enc = Encoder::new(Dialect::Pb);
        enc.list(3).unwrap();
        enc.bytes(b"list").unwrap();
        remote(&mut enc, 1);
        remote(&mut enc, 2);
        let cut = &enc.out[..enc.out.len() - 1];
        let found = remote_references(cut, Dialect::Pb, Limits::twisted(), 0);
        assert_eq!(found.iter().map(|f| f.1).collect::<Vec<_>>(), vec![1]);
    }
}
