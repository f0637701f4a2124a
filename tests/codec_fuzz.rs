//! Robustness of the pure-Rust decoders: arbitrary bytes and damaged valid streams, fed in any
//! chunking, give values or errors and never a panic; nesting as deep as the limits allow is
//! walked with heap stacks, so it also decodes (and encodes) in a thread with a 256 KiB stack,
//! and one level more is the `max_depth` error.

use _core::banana::{value, BananaError, Dialect, ErrorKind, Integer, Limits, Value};
use _core::foolscap::decode::{read_message, Build, Built, Fault};
use _core::foolscap::encode::{word, Word, Writer};
use _core::foolscap::{Frame, Limits as FoolscapLimits, MessageFramer};
use proptest::prelude::*;

/// Builds nothing: the walk and its checks are what is tested.
struct Nothing;

impl Build for Nothing {
    type Value = ();
    type Name = ();
    type Error = String;

    fn name(&mut self, raw: &[u8]) -> Built<(), String> {
        std::str::from_utf8(raw).map(drop).map_err(|_| Fault::Violation("not UTF-8".into()))
    }
    fn int(&mut self, _: Integer) -> Built<(), String> {
        Ok(())
    }
    fn float(&mut self, _: f64) -> Built<(), String> {
        Ok(())
    }
    fn bytes(&mut self, _: &[u8]) -> Built<(), String> {
        Ok(())
    }
    fn text(&mut self, utf8: &[u8]) -> Built<(), String> {
        self.name(utf8)
    }
    fn decimal(&mut self, _: &str) -> Built<(), String> {
        Ok(())
    }
    fn none(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn boolean(&mut self, _: bool) -> Built<(), String> {
        Ok(())
    }
    fn new_list(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn list_push(&mut self, _: &(), _: ()) -> Built<(), String> {
        Ok(())
    }
    fn tuple(&mut self, _: Vec<()>) -> Built<(), String> {
        Ok(())
    }
    fn new_set(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn set_add(&mut self, _: &(), _: ()) -> Built<(), String> {
        Ok(())
    }
    fn frozenset(&mut self, _: Vec<()>) -> Built<(), String> {
        Ok(())
    }
    fn new_dict(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn dict_insert(&mut self, _: &(), _: (), _: ()) -> Built<(), String> {
        Ok(())
    }
    fn copyable(&mut self, _: &str, _: Vec<((), ())>) -> Built<(), String> {
        Ok(())
    }
    fn my_reference(&mut self, _: i64, _: Option<&str>, _: Option<&str>) -> Built<(), String> {
        Ok(())
    }
    fn your_reference(&mut self, _: i64) -> Built<(), String> {
        Ok(())
    }
    fn their_reference(&mut self, _: i64, _: &str) -> Built<(), String> {
        Ok(())
    }
}

/// `data` cut at `cuts` (taken modulo its length).
fn chunked(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for c in cuts {
        chunks.push(data[last..c].to_vec());
        last = c;
    }
    chunks.push(data[last..].to_vec());
    chunks
}

/// Damage `data`: each (kind, position, byte) flips, inserts, deletes or truncates.
fn mutated(mut data: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, at, byte) in edits {
        let at = at % (data.len() + 1);
        match kind % 4 {
            0 if at < data.len() => data[at] ^= byte | 1,
            1 => data.insert(at, byte),
            2 if at < data.len() => {
                data.remove(at);
            }
            _ => data.truncate(at),
        }
    }
    data
}

/// Every message of a foolscap stream fed in `chunks`, read with [`Nothing`]: how many were
/// read, or the stream's error.
fn foolscap_messages(chunks: &[Vec<u8>], limits: &FoolscapLimits) -> Result<usize, BananaError> {
    let mut framer = MessageFramer::new(limits.banana);
    let mut read = 0;
    for chunk in chunks {
        framer.feed(chunk, |frame: Frame<'_>| -> Result<(), BananaError> {
            if let Frame::Message { bytes, offset, first_object } = frame {
                if let Err(e) = read_message(bytes, offset, first_object, limits, &mut Nothing) {
                    panic!("the builder never fails hard, yet: {e}");
                }
                read += 1;
            }
            Ok(())
        })?;
    }
    Ok(read)
}

fn banana_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|v| Value::Int(Integer::Small(v))),
        any::<f64>().prop_map(Value::Float),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
        Just(Value::Bytes(b"dictionary".to_vec())),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| proptest::collection::vec(inner, 0..6).prop_map(Value::List))
}

/// A foolscap value, for [`write`].
#[derive(Debug, Clone)]
enum Fv {
    Int(i64),
    Text(String),
    None,
    List(Vec<Fv>),
    Tuple(Vec<Fv>),
    Dict(Vec<(i64, Fv)>),
    /// `(reference N)` to the N-th OPEN back.
    Reference(u64),
}

fn foolscap_value() -> impl Strategy<Value = Fv> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Fv::Int),
        "[a-z]{0,6}".prop_map(Fv::Text),
        Just(Fv::None),
        (0u64..8).prop_map(Fv::Reference),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Fv::List),
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Fv::Tuple),
            proptest::collection::vec((any::<i64>(), inner), 0..4).prop_map(Fv::Dict),
        ]
    })
}

/// Write `v` (recursively: the test values are shallow).
fn write(w: &mut Writer, v: &Fv) {
    let opened = |w: &mut Writer, word: Word, items: &mut dyn FnMut(&mut Writer)| {
        let id = w.open(word).expect("shallow");
        items(w);
        w.close(id);
    };
    match v {
        Fv::Int(i) => w.int(*i),
        Fv::Text(s) => w.unicode(s.as_bytes()).expect("shallow"),
        Fv::None => w.none().expect("shallow"),
        Fv::Reference(back) => {
            let n = w.next_open_id().saturating_sub(*back + 1);
            w.reference(n).expect("shallow");
        }
        Fv::List(items) => opened(w, word::LIST, &mut |w| items.iter().for_each(|v| write(w, v))),
        Fv::Tuple(items) => opened(w, word::TUPLE, &mut |w| items.iter().for_each(|v| write(w, v))),
        Fv::Dict(pairs) => opened(w, word::DICT, &mut |w| {
            for (k, v) in pairs {
                w.int(*k);
                write(w, v);
            }
        }),
    }
}

/// A foolscap stream of an answer and a call carrying `values`, and a PING.
fn foolscap_stream(values: &[Fv]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), 0, 500);
    let answer = w.open(word::ANSWER).expect("shallow");
    w.int(1);
    let list = w.open(word::LIST).expect("shallow");
    values.iter().for_each(|v| write(&mut w, v));
    w.close(list);
    w.close(answer);
    w.ping(0);
    let call = w.open(word::CALL).expect("shallow");
    w.int(2);
    w.int(0);
    w.bytes(b"method");
    let arguments = w.open(word::ARGUMENTS).expect("shallow");
    w.int(values.len() as i64);
    values.iter().for_each(|v| write(&mut w, v));
    w.bytes(b"key");
    w.int(3);
    w.close(arguments);
    w.close(call);
    w.finish().0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn banana_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
        let chunks = chunked(&data, &cuts);
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        for dialect in [Dialect::Pb, Dialect::NoVocab] {
            let _ = value::decode_stream(&chunks, dialect, Limits::twisted());
            let _ = Value::from_bytes(&data, dialect, Limits { max_depth: 3, ..Limits::twisted() });
        }
    }

    #[test]
    fn banana_damaged_streams(
        values in proptest::collection::vec(banana_value(), 1..4),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..5),
    ) {
        let stream: Vec<u8> = values.iter().flat_map(|v| v.to_bytes(Dialect::Pb).expect("small")).collect();
        let data = mutated(stream, &edits);
        let chunks = chunked(&data, &cuts);
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let _ = value::decode_stream(&chunks, Dialect::Pb, Limits::twisted());
        let _ = value::decode_stream(&chunks, Dialect::Pb, Limits { max_depth: 2, ..Limits::twisted() });
    }

    #[test]
    fn foolscap_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
        let _ = foolscap_messages(&chunked(&data, &cuts), &FoolscapLimits::foolscap());
        // Mostly OPENs of known types, so that the reader gets past the framer more often.
        let opens: Vec<u8> = data.iter().flat_map(|&b| if b % 3 == 0 { vec![0x88, b % 25, 0x87] } else { vec![b] }).collect();
        let _ = foolscap_messages(&chunked(&opens, &cuts), &FoolscapLimits::foolscap());
    }

    #[test]
    fn foolscap_damaged_streams(
        values in proptest::collection::vec(foolscap_value(), 0..4),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..5),
    ) {
        let stream = foolscap_stream(&values);
        if edits.is_empty() {
            prop_assert_eq!(foolscap_messages(&chunked(&stream, &cuts), &FoolscapLimits::foolscap()), Ok(2));
        }
        let data = mutated(stream, &edits);
        let _ = foolscap_messages(&chunked(&data, &cuts), &FoolscapLimits::foolscap());
        let shallow = FoolscapLimits { banana: Limits { max_depth: 3, ..FoolscapLimits::foolscap().banana }, ..FoolscapLimits::foolscap() };
        let _ = foolscap_messages(&chunked(&data, &cuts), &shallow);
    }

    #[test]
    fn deep_streams_in_any_chunking(depth in 1usize..20_000, cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
        let data = [&[0x01, 0x80].repeat(depth)[..], &[0x00, 0x81]].concat();
        let chunks = chunked(&data, &cuts);
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let limits = Limits { max_depth: depth, ..Limits::twisted() };
        prop_assert_eq!(value::decode_stream(&chunks, Dialect::Pb, limits).map(|v| v.len()), Ok(1));
        let e = value::decode_stream(&chunks, Dialect::Pb, Limits { max_depth: depth - 1, ..limits }).unwrap_err();
        prop_assert_eq!(e.kind, ErrorKind::TooDeep { limit: depth - 1 });
    }
}

const DEEP: usize = 100_000;

/// `f()` in a thread with a 256 KiB stack.
fn in_small_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(256 * 1024).spawn(f).expect("a thread").join().expect("no panic")
}

/// How many single-item lists are around the innermost value.
fn depth(mut v: &Value) -> usize {
    let mut n = 0;
    while let Value::List(items) = v {
        match items.as_slice() {
            [inner] => v = inner,
            _ => break,
        }
        n += 1;
    }
    n
}

#[test]
fn deep_banana_in_a_small_stack() {
    in_small_thread(|| {
        let data = [&[0x01, 0x80].repeat(DEEP)[..], &[0x00, 0x81]].concat();
        let limits = Limits { max_depth: DEEP, ..Limits::twisted() };
        let value = Value::from_bytes(&data, Dialect::Pb, limits).expect("within max_depth");
        assert_eq!(depth(&value), DEEP);
        assert_eq!(value.to_bytes(Dialect::Pb).expect("encodable"), data);
        assert!(value == Value::from_bytes(&data, Dialect::Pb, limits).expect("again"));
        let e = Value::from_bytes(&data, Dialect::Pb, Limits { max_depth: DEEP - 1, ..limits }).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TooDeep { limit: DEEP - 1 }, Some(2 * (DEEP as u64 - 1))));
    });
}

#[test]
fn deep_foolscap_in_a_small_stack() {
    in_small_thread(|| {
        let mut w = Writer::new(Vec::new(), 0, DEEP + 1);
        let answer = w.open(word::ANSWER).expect("within max_depth");
        w.int(1);
        let ids: Vec<u64> = (0..DEEP).map(|_| w.open(word::LIST).expect("within max_depth")).collect();
        w.int(7);
        ids.iter().rev().for_each(|&id| w.close(id));
        w.close(answer);
        let data = w.finish().0;
        let base = FoolscapLimits::foolscap();
        let limits = FoolscapLimits { banana: Limits { max_depth: DEEP + 1, ..base.banana }, ..base };
        assert_eq!(foolscap_messages(std::slice::from_ref(&data), &limits), Ok(1));
        let shallow = FoolscapLimits { banana: Limits { max_depth: DEEP, ..base.banana }, ..base };
        let e = foolscap_messages(&[data], &shallow).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooDeep { limit: DEEP });
    });
}
