//! A plain Rust value tree for Twisted banana, for tests, fuzzing and tools that run without
//! Python. The Python bindings build Python objects directly instead.
//!
//! Building, encoding, comparing and dropping walk nested lists with a heap stack, so a value
//! nested as deep as the limits allow cannot exhaust the native stack (`Clone` and `Debug` are
//! derived, and recursive).

use super::cursor::{Cursor, Item};
use super::{framer, BananaError, Dialect, Encoder, Integer, Limits};

#[derive(Debug, Clone)]
pub enum Value {
    Int(Integer),
    Float(f64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
}

impl PartialEq for Value {
    /// Floats compare by bit pattern, so NaN equals itself and -0.0 differs from 0.0.
    fn eq(&self, other: &Value) -> bool {
        // Pairs of lists still to compare, item by item.
        let mut pending: Vec<(&[Value], &[Value])> = vec![(std::slice::from_ref(self), std::slice::from_ref(other))];
        while let Some((a, b)) = pending.pop() {
            if a.len() != b.len() {
                return false;
            }
            for (a, b) in a.iter().zip(b) {
                let same = match (a, b) {
                    (Value::Int(a), Value::Int(b)) => a == b,
                    (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
                    (Value::Bytes(a), Value::Bytes(b)) => a == b,
                    (Value::List(a), Value::List(b)) => {
                        pending.push((a, b));
                        true
                    }
                    _ => false,
                };
                if !same {
                    return false;
                }
            }
        }
        true
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        // Lists that hold lists are taken apart here, so that dropping never recurses deeper
        // than one level.
        let Value::List(items) = self else { return };
        if !items.iter().any(|v| matches!(v, Value::List(_))) {
            return;
        }
        let mut pending = std::mem::take(items);
        while let Some(mut value) = pending.pop() {
            if let Value::List(inner) = &mut value {
                pending.append(inner);
            }
        }
    }
}

impl Value {
    /// Append this value's tokens.
    pub fn encode(&self, enc: &mut Encoder) -> Result<(), BananaError> {
        // The items still to write of each list being written.
        let mut pending = vec![std::slice::from_ref(self).iter()];
        while let Some(items) = pending.last_mut() {
            let Some(value) = items.next() else {
                pending.pop();
                continue;
            };
            match value {
                Value::Int(Integer::Small(v)) => enc.int(*v),
                Value::Int(Integer::Big(v)) => enc.big_int(v)?,
                Value::Float(f) => enc.float(*f),
                Value::Bytes(b) => enc.bytes(b)?,
                Value::List(items) => {
                    enc.list(items.len())?;
                    pending.push(items.iter());
                }
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self, dialect: Dialect) -> Result<Vec<u8>, BananaError> {
        let mut enc = Encoder::new(dialect);
        self.encode(&mut enc)?;
        Ok(enc.out)
    }

    /// Decode exactly one expression.
    pub fn from_bytes(data: &[u8], dialect: Dialect, limits: Limits) -> Result<Value, BananaError> {
        framer::exactly_one(data, dialect, limits)?;
        Ok(build(&mut Cursor::new(data, dialect, limits)).expect("validated by the framer"))
    }
}

/// Build one value from an expression the framer has already validated.
pub(crate) fn build(cursor: &mut Cursor<'_>) -> Option<Value> {
    // Each list being filled, with how many of its items are still to come.
    let mut open: Vec<(Vec<Value>, usize)> = Vec::new();
    loop {
        let mut value = match cursor.next_item()? {
            Item::List(n) if n > 0 => {
                open.push((Vec::with_capacity(n), n));
                continue;
            }
            Item::List(_) => Value::List(Vec::new()),
            item @ (Item::Int(_) | Item::BigInt { .. }) => Value::Int(item.integer()?),
            Item::Bytes(s) => Value::Bytes(s.to_vec()),
            Item::Float(f) => Value::Float(f),
        };
        // Add the finished value, and each list it completes, to the list that holds it.
        loop {
            let Some((items, remaining)) = open.last_mut() else { return Some(value) };
            items.push(value);
            *remaining -= 1;
            if *remaining > 0 {
                break;
            }
            value = Value::List(open.pop()?.0);
        }
    }
}

/// Decode every complete expression of a stream fed in `chunks`.
pub fn decode_stream(chunks: &[&[u8]], dialect: Dialect, limits: Limits) -> Result<Vec<Value>, BananaError> {
    let mut framer = framer::Framer::new(dialect, limits);
    let mut out = Vec::new();
    for chunk in chunks {
        framer.feed(chunk, |expr: &[u8], _offset| -> Result<(), BananaError> {
            out.push(build(&mut Cursor::new(expr, dialect, limits)).expect("validated by the framer"));
            Ok(())
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|v| Value::Int(Integer::Small(v))),
            any::<f64>().prop_map(Value::Float),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
            Just(Value::Bytes(b"message".to_vec())),
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 9..56)).prop_map(|(neg, bytes)| {
                let mag = num_bigint::BigUint::from_bytes_le(&bytes);
                let sign = if neg { num_bigint::Sign::Minus } else { num_bigint::Sign::Plus };
                Value::Int(Integer::from_big(num_bigint::BigInt::from_biguint(sign, mag)))
            }),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| proptest::collection::vec(inner, 0..8).prop_map(Value::List))
    }

    proptest! {
        #[test]
        fn round_trip(v in value(), dialect in prop_oneof![Just(Dialect::Pb), Just(Dialect::NoVocab)]) {
            let bytes = v.to_bytes(dialect).unwrap();
            prop_assert_eq!(Value::from_bytes(&bytes, dialect, Limits::twisted()).unwrap(), v);
        }

        #[test]
        fn chunking_does_not_matter(vs in proptest::collection::vec(value(), 1..5), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let stream: Vec<u8> = vs.iter().flat_map(|v| v.to_bytes(Dialect::Pb).unwrap()).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&stream[last..c]);
                last = c;
            }
            chunks.push(&stream[last..]);
            prop_assert_eq!(decode_stream(&chunks, Dialect::Pb, Limits::twisted()).unwrap(), vs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_stream(&[&data], Dialect::Pb, Limits::twisted());
            let _ = Value::from_bytes(&data, Dialect::NoVocab, Limits::twisted());
        }
    }
}
