//! The jelly codec on a small tree of Rust values: a [`Build`] and a [`Walk`] for it, and the
//! tests of both halves of the codec that need no Python.

use std::cell::RefCell;
use std::rc::Rc;

use num_bigint::BigInt;

use super::decode::{decode, Build, Fault, Scratch, When};
use super::encode::{word, Buffers, Walk, Word, Writer};
use super::{pair_start, tag, Error, PairStart};
use crate::banana::{show, Dialect, Limits};

type Seq = Rc<RefCell<Vec<V>>>;

/// A value: containers are shared cells, so sharing and cycles survive a round trip.
#[derive(Clone, Debug)]
pub enum V {
    /// A slot of a container not filled yet.
    Hole,
    Placeholder(i64),
    None,
    Bool(bool),
    Int(BigInt),
    Float(f64),
    Bytes(Vec<u8>),
    Text(String),
    When(When),
    Decimal(bool, Vec<u8>, i64),
    Unpersistable(Rc<String>),
    List(Seq),
    Tuple(Seq),
    Set(Seq),
    FrozenSet(Rc<Vec<V>>),
    Dict(Rc<RefCell<Vec<(V, V)>>>),
    /// What the hook made of `[tag, items...]`.
    Hooked(Rc<(Vec<u8>, Vec<V>)>),
}

impl V {
    /// The address of a container (its identity), or None for a plain value.
    fn identity(&self) -> Option<usize> {
        Some(match self {
            V::List(s) | V::Tuple(s) | V::Set(s) => Rc::as_ptr(s) as usize,
            V::FrozenSet(m) => Rc::as_ptr(m) as usize,
            V::Dict(d) => Rc::as_ptr(d) as usize,
            V::Hooked(h) => Rc::as_ptr(h) as usize,
            V::Unpersistable(r) => Rc::as_ptr(r) as usize,
            _ => return None,
        })
    }

    fn hashable(&self) -> bool {
        match self {
            V::List(_) | V::Set(_) | V::Dict(_) => false,
            V::Tuple(items) => items.borrow().iter().all(V::hashable),
            _ => true,
        }
    }
}

/// An s-expression; a container met again while inside it prints as `^`.
pub fn render(v: &V) -> String {
    fn go(v: &V, inside: &mut Vec<usize>) -> String {
        let seq = |word: &str, items: Vec<V>, inside: &mut Vec<usize>| {
            let id = v.identity().unwrap_or(0);
            if inside.contains(&id) {
                return "^".to_string();
            }
            inside.push(id);
            let parts: Vec<String> = items.iter().map(|item| go(item, inside)).collect();
            inside.pop();
            format!("({word}{}{})", if parts.is_empty() { "" } else { " " }, parts.join(" "))
        };
        match v {
            V::Hole => "_".into(),
            V::Placeholder(id) => format!("?{id}"),
            V::None => "None".into(),
            V::Bool(b) => format!("{b}"),
            V::Int(i) => format!("{i}"),
            V::Float(f) => format!("{f:?}"),
            V::Bytes(b) => format!("b{}", show(b)),
            V::Text(s) => format!("{s:?}"),
            V::When(w) => format!("{w:?}"),
            V::Decimal(negative, digits, exponent) => format!("Decimal({negative} {digits:?} {exponent})"),
            V::Unpersistable(r) => format!("(unpersistable {r:?})"),
            V::List(s) => seq("list", s.borrow().clone(), inside),
            V::Tuple(s) => seq("tuple", s.borrow().clone(), inside),
            V::Set(s) => seq("set", s.borrow().clone(), inside),
            V::FrozenSet(m) => seq("frozenset", m.to_vec(), inside),
            V::Dict(d) => seq("dict", d.borrow().iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(), inside),
            V::Hooked(h) => seq(&String::from_utf8_lossy(&h.0), h.1.clone(), inside),
        }
    }
    go(v, &mut Vec::new())
}

/// Builds [`V`]s. Tags starting `refused.` are unknown to its hook; `hard.stop` makes it fail.
#[derive(Default)]
pub struct TreeBuild {
    pub hook: bool,
    /// How many dictionary keys went through [`Build::key`].
    pub keys: usize,
    /// The start of the pair at each place of the last dict, by its key, when the builder
    /// knows pairs ([`Build::known_pair`]); and how many pairs it knew.
    pub pairs: Option<Vec<Option<(PairStart, String)>>>,
    pub known: usize,
}

type R<T> = Result<T, Fault<String>>;

fn seq_of(v: &V) -> &Seq {
    match v {
        V::List(s) | V::Tuple(s) | V::Set(s) => s,
        other => panic!("not a sequence: {}", render(other)),
    }
}

impl Build for TreeBuild {
    type Value = V;
    type Error = String;

    fn int(&mut self, value: i64) -> Result<V, String> {
        Ok(V::Int(value.into()))
    }
    fn big_int(&mut self, value: &BigInt) -> Result<V, String> {
        Ok(V::Int(value.clone()))
    }
    fn float(&mut self, value: f64) -> Result<V, String> {
        Ok(V::Float(value))
    }
    fn bytes(&mut self, value: &[u8]) -> Result<V, String> {
        Ok(V::Bytes(value.to_vec()))
    }
    fn text(&mut self, utf8: &[u8]) -> R<V> {
        String::from_utf8(utf8.to_vec()).map(V::Text).map_err(|e| Fault::Bad(e.to_string()))
    }
    fn key(&mut self, utf8: &[u8], pair: usize) -> R<V> {
        self.keys += 1;
        let key = self.text(utf8)?;
        if let (Some(pairs), V::Text(text)) = (&mut self.pairs, &key) {
            pairs.resize(pairs.len().max(pair + 1), None);
            pairs[pair] = pair_start(utf8).map(|start| (start, text.clone()));
        }
        Ok(key)
    }
    fn known_pair(&mut self, rest: &[u8], pair: usize) -> Option<(V, usize)> {
        let (start, key) = self.pairs.as_ref()?.get(pair)?.as_ref()?;
        let key = rest.starts_with(&start.bytes[..start.len]).then(|| (V::Text(key.clone()), start.len))?;
        self.known += 1;
        Some(key)
    }
    fn none(&mut self) -> Result<V, String> {
        Ok(V::None)
    }
    fn boolean(&mut self, value: bool) -> Result<V, String> {
        Ok(V::Bool(value))
    }
    fn when(&mut self, value: When) -> R<V> {
        match value {
            When::DateTime { month: 1..=12, .. } | When::Date { month: 1..=12, .. } => Ok(V::When(value)),
            When::DateTime { .. } | When::Date { .. } => Err(Fault::Bad("month must be in 1..12".into())),
            When::Time { hour: 24.., .. } => Err(Fault::Bad("hour must be in 0..23".into())),
            _ => Ok(V::When(value)),
        }
    }
    fn decimal(&mut self, negative: bool, digits: &[u8], exponent: i64) -> R<V> {
        Ok(V::Decimal(negative, digits.to_vec(), exponent))
    }
    fn unpersistable(&mut self, reason: &str) -> Result<V, String> {
        Ok(V::Unpersistable(Rc::new(reason.into())))
    }
    fn placeholder(&mut self, id: i64) -> Result<V, String> {
        Ok(V::Placeholder(id))
    }
    fn same(&self, a: &V, b: &V) -> bool {
        a.identity().is_some() && a.identity() == b.identity()
    }
    unsafe fn list(&mut self, len: usize) -> Result<V, String> {
        Ok(V::List(Rc::new(RefCell::new(vec![V::Hole; len]))))
    }
    unsafe fn fill_list(&mut self, list: &V, index: usize, item: V) {
        let mut items = seq_of(list).borrow_mut();
        assert!(matches!(items[index], V::Hole), "slot {index} filled twice");
        items[index] = item;
    }
    fn empty_list(&mut self) -> Result<V, String> {
        Ok(V::List(Seq::default()))
    }
    fn push(&mut self, list: &V, item: V) -> Result<(), String> {
        seq_of(list).borrow_mut().push(item);
        Ok(())
    }
    fn patch_list(&mut self, list: &V, index: usize, value: &V) -> Result<(), String> {
        let mut items = seq_of(list).borrow_mut();
        assert!(matches!(items[index], V::Placeholder(_)), "no placeholder at {index}");
        items[index] = value.clone();
        Ok(())
    }
    unsafe fn tuple(&mut self, len: usize) -> Result<V, String> {
        Ok(V::Tuple(Rc::new(RefCell::new(vec![V::Hole; len]))))
    }
    unsafe fn fill_tuple(&mut self, tuple: &V, index: usize, item: V) {
        // SAFETY: the decoder keeps the contract of `fill_list`, which this shares.
        unsafe { self.fill_list(tuple, index, item) }
    }
    unsafe fn patch_tuple(&mut self, tuple: &V, index: usize, value: &V) {
        let mut items = seq_of(tuple).borrow_mut();
        assert!(matches!(items[index], V::Placeholder(_)), "no placeholder at {index}");
        items[index] = value.clone();
    }
    fn dict(&mut self) -> Result<V, String> {
        Ok(V::Dict(Rc::default()))
    }
    fn set_item(&mut self, dict: &V, key: &V, value: &V) -> R<()> {
        let V::Dict(d) = dict else { panic!("not a dict") };
        if !key.hashable() {
            return Err(Fault::Bad(format!("unhashable key {}", render(key))));
        }
        let mut pairs = d.borrow_mut();
        match pairs.iter_mut().find(|(k, _)| render(k) == render(key)) {
            Some(pair) => pair.1 = value.clone(),
            None => pairs.push((key.clone(), value.clone())),
        }
        Ok(())
    }
    fn set(&mut self) -> Result<V, String> {
        Ok(V::Set(Seq::default()))
    }
    fn add(&mut self, set: &V, member: V) -> R<()> {
        self.hashable(&member)?;
        seq_of(set).borrow_mut().push(member);
        Ok(())
    }
    fn hashable(&mut self, value: &V) -> R<()> {
        if value.hashable() {
            Ok(())
        } else {
            Err(Fault::Bad(format!("unhashable {}", render(value))))
        }
    }
    fn frozenset(&mut self, members: Vec<V>) -> Result<V, String> {
        Ok(V::FrozenSet(Rc::new(members)))
    }
    fn has_hook(&self) -> bool {
        self.hook
    }
    fn hook(&mut self, tag: &[u8], items: Vec<V>) -> Result<Option<V>, String> {
        if tag.starts_with(b"refused.") {
            return Ok(None);
        }
        if tag == b"hard.stop" {
            return Err("stop".into());
        }
        Ok(Some(V::Hooked(Rc::new((tag.to_vec(), items)))))
    }
}

/// Writes [`V`]s back, tracking every container as Twisted does.
pub struct TreeWalk;

pub enum TreeFrame {
    Items(Vec<V>, usize),
    /// A dict's pairs; `value` is the value of the pair whose key was given, `in_pair` whether
    /// that pair's list is open.
    Dict {
        pairs: Vec<(V, V)>,
        next: usize,
        value: Option<V>,
        in_pair: bool,
    },
}

impl Walk for TreeWalk {
    type Item = V;
    type Frame = TreeFrame;
    type Error = String;

    fn write(&mut self, w: &mut Writer, stack: &mut Vec<TreeFrame>, item: V) -> Result<Option<V>, Error<String>> {
        self.write_item(w, stack, item).map(|()| None)
    }

    fn next(&mut self, w: &mut Writer, frame: &mut TreeFrame) -> Result<Option<V>, Error<String>> {
        self.next_item(w, frame)
    }
}

impl TreeWalk {
    fn write_item(&mut self, w: &mut Writer, stack: &mut Vec<TreeFrame>, item: V) -> Result<(), Error<String>> {
        if let Some(id) = item.identity() {
            if w.seen(id)? {
                return Ok(());
            }
        }
        let (atom, items) = match &item {
            V::None => return Ok(w.none()?),
            V::Bool(b) => return Ok(w.boolean(*b)?),
            V::Int(i) => {
                match i64::try_from(i) {
                    Ok(small) => w.int(small),
                    Err(_) => w.big_int(i)?,
                }
                return Ok(());
            }
            V::Float(f) => {
                w.float(*f);
                return Ok(());
            }
            V::Bytes(b) => return Ok(w.bytes(b)?),
            V::Text(s) => return Ok(w.text(s.as_bytes())?),
            V::When(when) => {
                let (t, fields) = match *when {
                    When::DateTime { year, month, day, hour, minute, second, microsecond } => {
                        let f = [year.into(), month.into(), day.into(), hour.into(), minute.into(), second.into()];
                        (tag::DATETIME, [&f[..], &[microsecond.into()]].concat())
                    }
                    When::Date { year, month, day } => (tag::DATE, vec![year.into(), month.into(), day.into()]),
                    When::Time { hour, minute, second, microsecond } => {
                        (tag::TIME, vec![hour.into(), minute.into(), second.into(), microsecond.into()])
                    }
                    When::Delta { days, seconds, microseconds } => {
                        (tag::TIMEDELTA, vec![days.into(), seconds.into(), microseconds.into()])
                    }
                };
                return Ok(w.when(t, &fields)?);
            }
            V::Decimal(negative, digits, exponent) => {
                let magnitude = digits.iter().fold(BigInt::from(0), |acc, &d| acc * 10 + d);
                let coefficient = if *negative { -magnitude } else { magnitude };
                return Ok(w.decimal(&coefficient, *exponent)?);
            }
            V::Unpersistable(reason) => return Ok(w.unpersistable(reason)?),
            V::List(s) => (tag::LIST, s.borrow().clone()),
            V::Tuple(s) => (tag::TUPLE, s.borrow().clone()),
            V::Set(s) => (tag::SET, s.borrow().clone()),
            V::FrozenSet(m) => (tag::FROZENSET, m.to_vec()),
            V::Dict(d) => {
                let pairs = d.borrow().clone();
                w.open(word::DICTIONARY, pairs.len())?;
                stack.push(TreeFrame::Dict { pairs, next: 0, value: None, in_pair: false });
                return Ok(());
            }
            V::Hooked(h) => (&h.0[..], h.1.clone()),
            V::Hole | V::Placeholder(_) => return Err(Error::Other(format!("cannot write {}", render(&item)))),
        };
        w.open(Word::new(atom), items.len())?;
        stack.push(TreeFrame::Items(items, 0));
        Ok(())
    }

    fn next_item(&mut self, w: &mut Writer, frame: &mut TreeFrame) -> Result<Option<V>, Error<String>> {
        match frame {
            TreeFrame::Items(items, next) => {
                let item = items.get(*next).cloned();
                *next += 1;
                Ok(item)
            }
            TreeFrame::Dict { pairs, next, value, in_pair } => {
                if let Some(v) = value.take() {
                    return Ok(Some(v));
                }
                if *in_pair {
                    w.close();
                    *in_pair = false;
                }
                let Some((k, v)) = pairs.get(*next).cloned() else { return Ok(None) };
                *next += 1;
                w.open_list(2)?;
                *in_pair = true;
                *value = Some(v);
                Ok(Some(k))
            }
        }
    }
}

/// Decode `data` whole.
pub fn loads(data: &[u8], dialect: Dialect, limits: Limits, build: &mut TreeBuild) -> Result<V, Error<String>> {
    decode(data, dialect, limits, 0, build, &mut Scratch::default(), true).0
}

/// Encode `value` as one jelly value.
pub fn dumps(value: &V, dialect: Dialect) -> Result<Vec<u8>, Error<String>> {
    let mut w = Writer::new(dialect, Buffers::default());
    w.value(&mut TreeWalk, &mut Vec::new(), value.clone())?;
    Ok(w.output().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::Encoder;

    fn load(data: &[u8]) -> Result<V, Error<String>> {
        loads(data, Dialect::Pb, Limits::twisted(), &mut TreeBuild { hook: true, ..TreeBuild::default() })
    }

    /// Banana bytes for an s-expression written with a tiny builder.
    enum S {
        B(&'static [u8]),
        I(i64),
        L(Vec<S>),
    }
    use S::{B, I, L};

    fn bytes_of(s: &S) -> Vec<u8> {
        fn go(s: &S, enc: &mut Encoder) {
            match s {
                B(b) => enc.bytes(b).unwrap(),
                I(i) => enc.int(*i),
                L(items) => {
                    enc.list(items.len()).unwrap();
                    for item in items {
                        go(item, enc);
                    }
                }
            }
        }
        let mut enc = Encoder::new(Dialect::Pb);
        go(s, &mut enc);
        enc.out
    }

    fn unicode(s: &'static str) -> S {
        L(vec![B(b"unicode"), B(s.as_bytes())])
    }

    #[test]
    fn twisted_vectors_decode_and_encode_back_to_the_same_bytes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/twisted_pb.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = doc["jelly"].as_array().unwrap();
        assert!(cases.len() > 50);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            if case["unjelly_ok"] == false {
                // A class object: refused, as it names code to import.
                let data = hex::decode(case["hex_pb"].as_str().unwrap()).unwrap();
                let e = loads(&data, Dialect::Pb, Limits::twisted(), &mut TreeBuild::default()).unwrap_err();
                assert!(matches!(e, Error::Insecure { .. }), "{name}: {e:?}");
                continue;
            }
            for (key, dialect) in [("hex_pb", Dialect::Pb), ("hex_none", Dialect::NoVocab)] {
                let data = hex::decode(case[key].as_str().unwrap()).unwrap();
                let value = loads(&data, dialect, Limits::twisted(), &mut TreeBuild::default())
                    .unwrap_or_else(|e| panic!("{name}: {key} does not decode: {e}"));
                let again = dumps(&value, dialect).unwrap_or_else(|e| panic!("{name}: does not encode: {e}"));
                assert_eq!(hex::encode(again), case[key].as_str().unwrap(), "{name} ({key}): {}", render(&value));
            }
        }
    }

    #[test]
    fn shared_and_cyclic_values_keep_their_shape() {
        // [l, l] with l = [1]: one list, met twice.
        let shared = load(&hex::decode("03800887038004870181028008870181028003870181").unwrap()).unwrap();
        let V::List(outer) = &shared else { panic!() };
        let (V::List(a), V::List(b)) = (&outer.borrow()[0], &outer.borrow()[1]) else { panic!() };
        assert!(Rc::ptr_eq(a, b));
        // A list that contains itself.
        let cyclic = load(&hex::decode("03800487018102800887028003870181").unwrap()).unwrap();
        assert_eq!(render(&cyclic), "(list ^)");
        // Ids in the order of second sighting: [a, b, b, a].
        let value = load(
            &hex::decode("05800887038004870281028008870181038004870181028008870281028003870181028003870281").unwrap(),
        );
        assert_eq!(render(&value.unwrap()), "(list (list 1) (list 2) (list 2) (list 1))");
    }

    #[test]
    fn forward_dereferences_are_patched() {
        let cases = [
            // A dereference before its reference: in a list, a tuple, a dict value.
            L(vec![
                B(b"list"),
                L(vec![B(b"dereference"), I(1)]),
                L(vec![B(b"reference"), I(1), L(vec![B(b"tuple"), I(1)])]),
            ]),
            L(vec![
                B(b"list"),
                L(vec![B(b"tuple"), L(vec![B(b"tuple"), L(vec![B(b"dereference"), I(1)])])]),
                L(vec![B(b"reference"), I(1), L(vec![B(b"frozenset"), I(1)])]),
            ]),
            L(vec![
                B(b"list"),
                L(vec![B(b"dictionary"), L(vec![I(2), L(vec![B(b"dereference"), I(1)])])]),
                L(vec![B(b"reference"), I(1), L(vec![B(b"tuple"), I(1)])]),
            ]),
            // A tuple that contains itself through a list.
            L(vec![B(b"reference"), I(1), L(vec![B(b"tuple"), L(vec![B(b"list"), L(vec![B(b"dereference"), I(1)])])])]),
        ];
        let expected = [
            "(list (tuple 1) (tuple 1))",
            "(list (tuple (tuple (frozenset 1))) (frozenset 1))",
            "(list (dict 2 (tuple 1)) (tuple 1))",
            "(tuple (list ^))",
        ];
        for (case, want) in cases.iter().zip(expected) {
            assert_eq!(render(&load(&bytes_of(case)).unwrap()), want);
        }
        let V::List(outer) = load(&bytes_of(&cases[0])).unwrap() else { panic!() };
        let outer = outer.borrow();
        let (V::Tuple(a), V::Tuple(b)) = (&outer[0], &outer[1]) else { panic!() };
        assert!(Rc::ptr_eq(a, b));
    }

    /// The error `s` decodes to, with its offset.
    fn error_of(s: &S) -> (String, Option<u64>) {
        match load(&bytes_of(s)) {
            Ok(v) => panic!("decoded to {}", render(&v)),
            Err(e) => (e.to_string(), e.offset()),
        }
    }

    #[test]
    fn malformed_jelly_is_refused_at_its_offset() {
        let padded = |s: S| L(vec![B(b"list"), unicode("padding"), s]);
        let cases: Vec<(S, &str)> = vec![
            (L(vec![]), "empty list is not jelly"),
            (L(vec![I(1)]), "does not start with a byte-string type tag"),
            (L(vec![B(b"dictionary"), L(vec![B(b"a")])]), "must be [key, value] pairs"),
            (L(vec![B(b"dictionary"), L(vec![L(vec![B(b"list")]), I(1)])]), "bad dictionary key: unhashable key"),
            (L(vec![B(b"unicode"), B(b"\xff")]), "unicode is not valid UTF-8 ("),
            (L(vec![B(b"boolean"), B(b"yes")]), "boolean must be true or false"),
            (L(vec![B(b"datetime"), B(b"2020 13 1")]), "bad 'datetime': month must be in 1..12"),
            (L(vec![B(b"date"), B(b"x y z")]), "bad date/time field"),
            (L(vec![B(b"decimal"), I(1)]), "'decimal' takes 2 item(s), got 1"),
            (L(vec![B(b"set"), L(vec![B(b"list")])]), "bad set member: unhashable"),
            (L(vec![B(b"reference"), I(1), I(5)]), "a reference must wrap a jelly list"),
            (L(vec![B(b"reference"), I(1), L(vec![B(b"dereference"), I(1)])]), "reference 1 refers only to itself"),
            (
                L(vec![B(b"reference"), I(1), L(vec![B(b"tuple"), L(vec![B(b"dereference"), I(1)])])]),
                "tuple that contains itself",
            ),
            (
                L(vec![B(b"reference"), I(1), L(vec![B(b"frozenset"), L(vec![B(b"dereference"), I(1)])])]),
                "not built yet",
            ),
            (
                L(vec![
                    B(b"list"),
                    L(vec![B(b"reference"), I(1), L(vec![B(b"list")])]),
                    L(vec![B(b"reference"), I(1), L(vec![B(b"list")])]),
                ]),
                "defined twice",
            ),
        ];
        for (case, message) in cases {
            let inner = bytes_of(&case).len();
            let whole = bytes_of(&padded(case));
            match load(&whole) {
                Ok(v) => panic!("{message}: decoded to {}", render(&v)),
                Err(e) => {
                    let offset = e.offset().unwrap() as usize;
                    assert!(e.to_string().contains(message), "{e} (wanted {message})");
                    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
                    assert!(whole.len() - inner <= offset && offset < whole.len(), "{e}: offset {offset}");
                }
            }
        }
        let (text, offset) = error_of(&L(vec![B(b"list"), L(vec![B(b"dereference"), I(1)])]));
        assert_eq!(
            (text.as_str(), offset),
            ("dereference to reference id 1, which is never defined at byte 0", Some(0))
        );
    }

    #[test]
    fn code_and_unknown_tags_are_insecure() {
        for (s, hook, message) in [
            (L(vec![B(b"class"), B(b"os.system")]), true, "jelly type 'class' is not allowed"),
            (
                L(vec![B(b"my.Type"), I(1)]),
                false,
                "no class is registered for type 'my.Type' (module my is not allowed)",
            ),
            (L(vec![B(b"refused.Type"), I(1)]), true, "no class is registered for type 'refused.Type'"),
        ] {
            let e =
                loads(&bytes_of(&s), Dialect::Pb, Limits::twisted(), &mut TreeBuild { hook, ..TreeBuild::default() })
                    .unwrap_err();
            assert!(matches!(e, Error::Insecure { offset: Some(0), .. }), "{e:?}");
            assert!(e.to_string().starts_with(message), "{e}");
        }
        let e = load(&bytes_of(&L(vec![B(b"hard.stop")]))).unwrap_err();
        assert_eq!(e, Error::Other("stop".into()));
    }

    #[test]
    fn the_hook_never_sees_a_tuple_that_will_change() {
        let deref = || L(vec![B(b"dereference"), I(1)]);
        // A tuple holding a placeholder, given to the hook.
        let seen = L(vec![B(b"reference"), I(1), L(vec![B(b"my.Copy"), L(vec![B(b"tuple"), deref()])])]);
        assert!(error_of(&seen).0.contains("an item of 'my.Copy' refers to an object not built yet"));
        // Hidden in a list the hook is given: refused once it would be patched.
        let hidden =
            L(vec![B(b"reference"), I(1), L(vec![B(b"my.Copy"), L(vec![B(b"list"), L(vec![B(b"tuple"), deref()])])])]);
        assert!(error_of(&hidden).0.contains("only built after the hook has run"), "{}", error_of(&hidden).0);
        // A list holding a placeholder is patched in place after the hook has run: lists may change.
        let list = L(vec![B(b"reference"), I(1), L(vec![B(b"my.Copy"), L(vec![B(b"list"), deref()])])]);
        assert_eq!(render(&load(&bytes_of(&list)).unwrap()), "(my.Copy (list ^))");
    }

    #[test]
    fn dictionary_str_keys_go_through_key() {
        let dict = L(vec![B(b"dictionary"), L(vec![unicode("a"), I(1)]), L(vec![I(2), unicode("b")])]);
        let mut build = TreeBuild::default();
        let value = loads(&bytes_of(&dict), Dialect::Pb, Limits::twisted(), &mut build).unwrap();
        assert_eq!((render(&value).as_str(), build.keys), ("(dict \"a\" 1 2 \"b\")", 1));
    }

    #[test]
    fn the_quick_pass_builds_plain_values_and_leaves_the_rest() {
        let record = || {
            L(vec![
                B(b"dictionary"),
                L(vec![unicode("id"), I(300)]),
                L(vec![unicode("tags"), L(vec![B(b"tuple"), unicode("a"), B(b"raw"), L(vec![B(b"None")])])]),
                L(vec![I(-2), L(vec![B(b"boolean"), B(b"true")])]),
            ])
        };
        // Keys go through `key` once: the quick pass built the value, the general walk never ran.
        let plain = L(vec![B(b"list"), record(), record()]);
        let mut build = TreeBuild::default();
        let value = loads(&bytes_of(&plain), Dialect::Pb, Limits::twisted(), &mut build).unwrap();
        let one = "(dict \"id\" 300 \"tags\" (tuple \"a\" b'raw' None) -2 true)";
        assert_eq!((render(&value), build.keys), (format!("(list {one} {one})"), 4));
        // A reference after the records: the quick pass gives up there, the general walk reads
        // everything again.
        let shared = L(vec![B(b"list"), record(), record(), L(vec![B(b"reference"), I(1), L(vec![B(b"list")])])]);
        let mut build = TreeBuild::default();
        let value = loads(&bytes_of(&shared), Dialect::Pb, Limits::twisted(), &mut build).unwrap();
        assert_eq!((render(&value), build.keys), (format!("(list {one} {one} (list))"), 4 + 4));
        // Lists of plain items, filled without going on the quick pass's stack, leave the nesting
        // count as they found it: at a max_depth the dict's lists just reach, one pass builds it.
        let flat = |v: i64| L(vec![B(b"list"), I(v), unicode("x"), I(-v)]);
        let dict = L(vec![
            B(b"dictionary"),
            L(vec![unicode("k"), flat(1)]),
            L(vec![unicode("j"), flat(2)]),
            L(vec![unicode("e"), L(vec![B(b"list")])]),
        ]);
        let limits = Limits { max_depth: 3, ..Limits::twisted() };
        let mut build = TreeBuild::default();
        let value = loads(&bytes_of(&dict), Dialect::Pb, limits, &mut build).unwrap();
        let want = "(dict \"k\" (list 1 \"x\" -1) \"j\" (list 2 \"x\" -2) \"e\" (list))";
        assert_eq!((render(&value).as_str(), build.keys), (want, 3));
    }

    #[test]
    fn the_quick_pass_takes_pairs_the_builder_knows() {
        // Records whose keys come back at their places; one whose keys moved; ten pairs; a key
        // that is no str; a container as a known key's value.
        let record = |keys: &[&'static str], n: i64| {
            let mut items = vec![B(b"dictionary")];
            items.extend(keys.iter().map(|k| L(vec![unicode(k), I(n)])));
            items.push(L(vec![I(7), L(vec![B(b"list"), unicode("x")])]));
            L(items)
        };
        let many = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"];
        let value = L(vec![
            B(b"list"),
            record(&["id", "name"], 1),
            record(&["id", "name"], 2),
            record(&["name", "id"], 3),
            record(&many, 4),
            record(&many, 5),
        ]);
        let bytes = bytes_of(&value);
        let plain = loads(&bytes, Dialect::Pb, Limits::twisted(), &mut TreeBuild::default()).unwrap();
        let mut build = TreeBuild { pairs: Some(Vec::new()), ..TreeBuild::default() };
        let knowing = loads(&bytes, Dialect::Pb, Limits::twisted(), &mut build).unwrap();
        assert_eq!(render(&knowing), render(&plain));
        // Known: the second record's two keys, and the last record's ten; read: the first's, the
        // third's (moved) and the fourth's.
        assert_eq!((build.known, build.keys), (2 + 10, 2 + 2 + 10));
        // A pair's list may not be over max_element_size: below 2, no pair is taken as known.
        let tight = Limits { max_element_size: 1, ..Limits::twisted() };
        let mut build = TreeBuild { pairs: Some(Vec::new()), ..TreeBuild::default() };
        assert!(loads(&bytes, Dialect::Pb, tight, &mut build).is_err());
        assert_eq!(build.known, 0);
    }

    /// Drop a deeply nested value without recursing.
    fn unnest(mut v: V) -> usize {
        let mut n = 0;
        while let V::List(s) = v {
            n += 1;
            let inner = std::mem::replace(&mut s.borrow_mut()[0], V::None);
            v = inner;
        }
        n
    }

    #[test]
    fn deep_nesting_uses_no_native_stack() {
        // 100_000 jelly lists, in a thread with a small stack: the walks are iterative.
        let depth = 100_000;
        let limits = Limits { max_depth: usize::MAX, ..Limits::twisted() };
        let data = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut value = V::None;
                for _ in 0..depth {
                    value = V::List(Rc::new(RefCell::new(vec![value])));
                }
                let e = dumps(&value, Dialect::Pb).unwrap_err();
                assert_eq!(e, Error::TooDeepToSend { limit: 1000 });
                unnest(value);
                let mut w = Writer::new(Dialect::Pb, Buffers::default());
                let mut stack = Vec::new();
                let mut shallow = V::None;
                for _ in 0..999 {
                    shallow = V::List(Rc::new(RefCell::new(vec![shallow])));
                }
                w.value(&mut TreeWalk, &mut stack, shallow.clone()).unwrap();
                unnest(shallow);
                let data = [b"\x02\x80\x08\x87".repeat(depth - 1), b"\x01\x80\x01\x87".to_vec()].concat();
                let back = loads(&data, Dialect::Pb, limits, &mut TreeBuild::default()).unwrap();
                assert_eq!(unnest(back), depth - 1);
                data
            })
            .unwrap()
            .join()
            .unwrap();
        let e = loads(&data, Dialect::Pb, Limits::twisted(), &mut TreeBuild::default()).unwrap_err();
        assert_eq!(
            (e.to_string(), e.offset()),
            ("lists nested deeper than max_depth=1000 at byte 4000".into(), Some(4000))
        );
    }

    #[test]
    fn each_value_is_its_own_id_space() {
        let l = V::List(Rc::new(RefCell::new(vec![V::Int(1.into())])));
        let twice = V::List(Rc::new(RefCell::new(vec![l.clone(), l.clone()])));
        let mut w = Writer::new(Dialect::Pb, Buffers::default());
        let mut stack = Vec::new();
        w.value(&mut TreeWalk, &mut stack, twice.clone()).unwrap();
        let one = w.output().len();
        w.value(&mut TreeWalk, &mut stack, twice).unwrap();
        assert_eq!(w.output()[..one], w.output()[one..]);
        assert_eq!(hex::encode(&w.output()[..one]), "03800887038004870181028008870181028003870181");
    }
}
