//! Replays the committed reference vectors (`tests/vectors/*.json`, made by stock Twisted and
//! foolscap; see `tests/vectors/README.md`) through the pure-Rust banana core, without Python.
//!
//! Every section is table-driven: each case is checked completely, failures are collected with the
//! case's name, and the test fails at the end listing all of them.

use _core::banana::decode::{Step, Token, TokenReader};
use _core::banana::{tb, value, vocab, BananaError, Dialect, Encoder, ErrorKind, Framer, Integer, Limits, Tokenizer};
use _core::banana::{Value, SIZE_LIMIT};
use num_bigint::BigInt;
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------------
// Loading and the shared JSON encodings

fn load(file: &str) -> Json {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"))
}

fn twisted() -> Json {
    load("twisted_pb.json")
}

fn foolscap() -> Json {
    load("foolscap_tokens.json")
}

fn section<'a>(doc: &'a Json, key: &str) -> &'a [Json] {
    let cases = doc[key].as_array().unwrap_or_else(|| panic!("section {key:?} is missing or not a list"));
    assert!(!cases.is_empty(), "section {key:?} is empty");
    cases
}

fn name(case: &Json) -> &str {
    case["name"].as_str().expect("every case has a name")
}

fn field<'a>(case: &'a Json, key: &str) -> &'a str {
    case[key].as_str().unwrap_or_else(|| panic!("{}: field {key:?} is missing or not a string", name(case)))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn dialect(case: &Json) -> Dialect {
    let d = field(case, "dialect");
    Dialect::from_name(d).unwrap_or_else(|| panic!("{}: unknown dialect {d:?}", name(case)))
}

/// A JSON number or `{"int": "<decimal>"}`.
fn integer(j: &Json) -> BigInt {
    if let Some(v) = j.as_i64() {
        return BigInt::from(v);
    }
    if let Some(v) = j.as_u64() {
        return BigInt::from(v);
    }
    let text = j["int"].as_str().unwrap_or_else(|| panic!("not a tagged int: {j}"));
    text.parse().unwrap_or_else(|e| panic!("bad int {text:?}: {e}"))
}

/// `{"b": "<text>"}` or `{"bhex": "<hex>"}`.
fn byte_string(j: &Json) -> Vec<u8> {
    if let Some(text) = j["b"].as_str() {
        return text.as_bytes().to_vec();
    }
    unhex(j["bhex"].as_str().unwrap_or_else(|| panic!("not a tagged byte string: {j}")))
}

/// `{"float": "<Python repr>"}`: `1.5`, `-0.0`, `inf`, `-inf`, `nan`, `5e-324`, `1e+300`.
fn float(j: &Json) -> f64 {
    let text = j["float"].as_str().unwrap_or_else(|| panic!("not a tagged float: {j}"));
    match text {
        // Python's float('nan') is the quiet NaN 0x7ff8000000000000, as is Rust's f64::NAN.
        "nan" => f64::NAN,
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        _ => text.parse().unwrap_or_else(|e| panic!("bad float {text:?}: {e}")),
    }
}

/// A tagged s-expression as a banana [`Value`].
fn sexp(j: &Json) -> Value {
    match j {
        Json::Number(_) => Value::Int(Integer::from_big(integer(j))),
        Json::Array(items) => Value::List(items.iter().map(sexp).collect()),
        Json::Object(map) if map.contains_key("int") => Value::Int(Integer::from_big(integer(j))),
        Json::Object(map) if map.contains_key("float") => Value::Float(float(j)),
        Json::Object(_) => Value::Bytes(byte_string(j)),
        _ => panic!("not a tagged sexp: {j}"),
    }
}

fn sexps(j: &Json) -> Vec<Value> {
    j.as_array().unwrap_or_else(|| panic!("not a list of sexps: {j}")).iter().map(sexp).collect()
}

// ---------------------------------------------------------------------------------------------
// Failure collection

/// Collects failures per case so that one run reports every broken case by name.
struct Report {
    section: &'static str,
    cases: usize,
    failures: Vec<String>,
}

impl Report {
    fn new(section: &'static str) -> Report {
        Report { section, cases: 0, failures: Vec::new() }
    }

    fn case(&mut self) {
        self.cases += 1;
    }

    fn check(&mut self, ok: bool, case: &str, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{case}: {}", what()));
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, got: T, expected: T, case: &str, what: &str) {
        if got != expected {
            self.failures.push(format!("{case}: {what}\n    got:      {got:?}\n    expected: {expected:?}"));
        }
    }

    fn finish(self) {
        assert!(self.cases > 0, "{}: no cases were checked", self.section);
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} cases failed:\n  {}",
            self.section,
            self.failures.len(),
            self.cases,
            self.failures.join("\n  ")
        );
    }
}

/// Shorten long values in failure messages (some vectors are 640 KiB).
fn brief<T: std::fmt::Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    if s.len() > 300 {
        format!("{}... ({} chars)", &s[..300], s.len())
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Twisted: decoding through the Framer

/// What a [`Framer`] delivered for one input.
#[derive(Debug, PartialEq)]
struct Framed {
    /// Complete top-level expressions, built with `Value::from_bytes`.
    values: Vec<Value>,
    /// Stream offset and length of each expression.
    spans: Vec<(u64, usize)>,
    /// Bytes held for an incomplete expression afterwards (not compared after an error).
    buffered: usize,
    error: Option<BananaError>,
}

fn frame(data: &[u8], dialect: Dialect, chunk_size: usize) -> Framed {
    let limits = Limits::twisted();
    let mut framer = Framer::new(dialect, limits);
    let (mut values, mut spans, mut error) = (Vec::new(), Vec::new(), None);
    for chunk in data.chunks(chunk_size.max(1)) {
        let fed = framer.feed(chunk, |expr: &[u8], offset| -> Result<(), BananaError> {
            values.push(Value::from_bytes(expr, dialect, limits)?);
            spans.push((offset, expr.len()));
            Ok(())
        });
        if let Err(e) = fed {
            error = Some(e);
            break;
        }
    }
    // What stays buffered after an error depends on the chunking and means nothing: the framer is
    // failed for good.
    let buffered = if error.is_some() { 0 } else { framer.buffered() };
    Framed { values, spans, buffered, error }
}

/// `value::decode_stream` with the input cut into `chunk_size`-byte chunks.
fn decode_stream(data: &[u8], dialect: Dialect, chunk_size: usize) -> Result<Vec<Value>, BananaError> {
    let chunks: Vec<&[u8]> = data.chunks(chunk_size.max(1)).collect();
    value::decode_stream(&chunks, dialect, Limits::twisted())
}

/// Encode `value` in both PB dialects and decode the vector bytes back (the "banana" and "jelly"
/// sections share this).
fn check_encodes(report: &mut Report, case: &Json) {
    let n = name(case);
    let value = sexp(&case["sexp"]);
    for (key, d) in [("hex_pb", Dialect::Pb), ("hex_none", Dialect::NoVocab)] {
        let expected = field(case, key);
        match value.to_bytes(d) {
            Ok(bytes) => report.eq(hex::encode(bytes), expected.to_string(), n, &format!("encode in {}", d.name())),
            Err(e) => report.check(false, n, || format!("encode in {} failed: {e}", d.name())),
        }
        let bytes = unhex(expected);
        match Value::from_bytes(&bytes, d, Limits::twisted()) {
            Ok(v) => report.check(v == value, n, || format!("{key} decodes in {} to {}", d.name(), brief(&v))),
            Err(e) => report.check(false, n, || format!("{key} does not decode in {}: {e}", d.name())),
        }
    }
    // A pb receiver also accepts a STRING spelling of a vocabulary word.
    match Value::from_bytes(&unhex(field(case, "hex_none")), Dialect::Pb, Limits::twisted()) {
        Ok(v) => report.check(v == value, n, || format!("hex_none decodes in pb to {}", brief(&v))),
        Err(e) => report.check(false, n, || format!("hex_none does not decode in pb: {e}")),
    }
}

#[test]
fn banana_values_encode_to_twisted_bytes_and_back() {
    let doc = twisted();
    let mut report = Report::new("banana");
    for case in section(&doc, "banana") {
        report.case();
        check_encodes(&mut report, case);
    }
    report.finish();
}

#[test]
fn jelly_sexps_have_twisted_byte_layout() {
    let doc = twisted();
    let mut report = Report::new("jelly");
    for case in section(&doc, "jelly") {
        report.case();
        check_encodes(&mut report, case);
    }
    report.finish();
}

#[test]
fn banana_decode_accepts_what_twisted_accepts() {
    let doc = twisted();
    let mut report = Report::new("banana_decode");
    for case in section(&doc, "banana_decode") {
        report.case();
        let n = name(case);
        let (data, d) = (unhex(field(case, "hex")), dialect(case));
        let expected = sexps(&case["values"]);
        let leftover = unhex(field(case, "leftover_hex"));
        let open_lists = case["open_lists"].as_u64().expect("open_lists");

        let whole = frame(&data, d, data.len());
        report.eq(&whole.error, &None, n, "Framer error");
        report.eq(&whole.values, &expected, n, "Framer values (one chunk)");
        // Expressions are delivered back to back from offset 0, and only the unfinished tail is
        // held. Twisted keeps finished list items in its list stack instead, so its leftover is a
        // suffix of what the framer holds, and both hold something exactly when an expression is
        // unfinished.
        let mut end = 0u64;
        for &(offset, len) in &whole.spans {
            report.eq(offset, end, n, "expression offset (expressions are delivered back to back)");
            end = offset + len as u64;
        }
        report.eq(end as usize + whole.buffered, data.len(), n, "delivered + buffered bytes");
        let held = &data[data.len().saturating_sub(whole.buffered)..];
        report.check(held.ends_with(&leftover), n, || {
            format!("framer holds {} but Twisted's leftover is {}", hex::encode(held), hex::encode(&leftover))
        });
        report.eq(whole.buffered > 0, !leftover.is_empty() || open_lists > 0, n, "something is buffered");

        let bytewise = frame(&data, d, 1);
        report.eq(&bytewise, &whole, n, "Framer fed one byte at a time differs from one chunk");
        report.eq(decode_stream(&data, d, data.len()), Ok(expected.clone()), n, "decode_stream (one chunk)");
        report.eq(decode_stream(&data, d, 1), Ok(expected.clone()), n, "decode_stream (one-byte chunks)");

        if expected.len() == 1 && leftover.is_empty() && open_lists == 0 {
            let one = Value::from_bytes(&data, d, Limits::twisted());
            report.eq(one, Ok(expected[0].clone()), n, "Value::from_bytes");
        } else {
            report.check(Value::from_bytes(&data, d, Limits::twisted()).is_err(), n, || {
                "Value::from_bytes accepted an input that is not exactly one expression".into()
            });
        }
    }
    report.finish();
}

/// Does pbfast's error kind correspond to the exception Twisted raised? pbfast checks the dialect
/// before the index, so a VOCAB token in `none` is always `VocabNotAllowed` (Twisted raises
/// `KeyError` first for an index outside the pb table).
fn same_error(class: &str, message: &str, d: Dialect, kind: &ErrorKind) -> bool {
    match (class, kind) {
        ("NotImplementedError", ErrorKind::InvalidTypeByte(b)) => message == format!("Invalid Type Byte b'\\x{b:02x}'"),
        ("NotImplementedError", ErrorKind::VocabNotAllowed) => message.starts_with("Invalid item for pb protocol"),
        ("KeyError", ErrorKind::UnknownVocab(index)) => d == Dialect::Pb && index == message,
        ("KeyError", ErrorKind::VocabNotAllowed) => d == Dialect::NoVocab,
        ("BananaError", ErrorKind::HeaderTooLong { limit: 64 }) => message.contains("64 bytes"),
        ("BananaError", ErrorKind::ListTooLong { .. }) => message == "Security precaution: List too long.",
        ("BananaError", ErrorKind::StringTooLong { .. }) => message == "Security precaution: String too long.",
        _ => false,
    }
}

#[test]
fn banana_invalid_is_refused_with_an_offset() {
    let doc = twisted();
    let mut report = Report::new("banana_invalid");
    for case in section(&doc, "banana_invalid") {
        report.case();
        let n = name(case);
        let (data, d) = (unhex(field(case, "hex")), dialect(case));
        let before = sexps(&case["values_before_error"]);
        let (class, message) = (field(&case["error"], "class"), field(&case["error"], "message"));

        let whole = frame(&data, d, data.len());
        report.eq(&whole.values, &before, n, "values delivered before the error");
        match &whole.error {
            None => report.check(false, n, || "Framer accepted the input".into()),
            Some(e) => {
                report.check(same_error(class, message, d, &e.kind), n, || {
                    format!("error {:?} does not correspond to Twisted's {class}: {message}", e.kind)
                });
                report.check(e.offset.is_some_and(|o| o < data.len() as u64), n, || {
                    format!("error offset {:?} is not inside the {}-byte input", e.offset, data.len())
                });
            }
        }
        let bytewise = frame(&data, d, 1);
        report.eq(&bytewise, &whole, n, "Framer fed one byte at a time differs from one chunk");
        report.eq(decode_stream(&data, d, 1).err(), whole.error.clone(), n, "decode_stream (one-byte chunks) error");
        report.check(Value::from_bytes(&data, d, Limits::twisted()).is_err(), n, || {
            "Value::from_bytes accepted it".into()
        });

        // A failed framer stays failed.
        let mut framer = Framer::new(d, Limits::twisted());
        let first = framer.feed(&data, |_: &[u8], _| -> Result<(), BananaError> { Ok(()) });
        let again = framer.feed(&[0x00, tb::INT], |_: &[u8], _| -> Result<(), BananaError> { Ok(()) });
        report.check(first.is_err() && again == first, n, || format!("not sticky: {first:?} then {again:?}"));
    }
    report.finish();
}

/// The few `python` sources of `banana_encode_errors` that a [`Value`] can express: `A**B`,
/// `-(A**B)`, `[0] * N` and `b'x' * N`.
fn python_value(src: &str) -> Option<Value> {
    if let Some(inner) = src.strip_prefix("-(").and_then(|s| s.strip_suffix(')')) {
        let Value::Int(v) = &python_value(inner)? else {
            return None;
        };
        return Some(Value::Int(Integer::from_big(-v.to_big())));
    }
    if let Some((base, exp)) = src.split_once("**") {
        let base: BigInt = base.trim().parse().ok()?;
        let exp: u32 = exp.trim().parse().ok()?;
        return Some(Value::Int(Integer::from_big(num_traits::pow(base, exp as usize))));
    }
    let (item, count) = src.split_once(" * ")?;
    let count: usize = count.trim().parse().ok()?;
    match item {
        "[0]" => Some(Value::List(vec![Value::Int(Integer::Small(0)); count])),
        "b'x'" => Some(Value::Bytes(vec![b'x'; count])),
        _ => None,
    }
}

#[test]
fn banana_encode_errors_are_refused() {
    let doc = twisted();
    let mut report = Report::new("banana_encode_errors");
    for case in section(&doc, "banana_encode_errors") {
        let n = name(case);
        let message = field(&case["error"], "message");
        let Some(value) = python_value(field(case, "python")) else {
            // str, None, dict, set, bytearray: no Value exists for them. Every size limit must be
            // expressible, though, so nothing relevant is skipped silently.
            let skipped_limit = message.contains("too large") || message.contains("too long");
            assert!(!skipped_limit, "{n}: a size-limit case could not be expressed as a Value");
            continue;
        };
        report.case();
        for d in [Dialect::Pb, Dialect::NoVocab] {
            let mut enc = Encoder::new(d);
            match value.encode(&mut enc) {
                Ok(()) => report.check(false, n, || format!("encoded in {} ({} bytes)", d.name(), enc.out.len())),
                Err(e) => {
                    let expected_kind = match &e.kind {
                        ErrorKind::IntTooLarge => message.starts_with("int is too large to send"),
                        ErrorKind::TooLongToSend { what, len, .. } => {
                            *len == SIZE_LIMIT + 1 && message.starts_with(&format!("{what} is too long to send"))
                        }
                        _ => false,
                    };
                    report.check(expected_kind, n, || format!("{:?} is not Twisted's {message:?}", e.kind));
                    // Same wording as Twisted up to the parenthesised detail.
                    let ours = e.to_string();
                    report.eq(ours.split(" (").next(), message.split(" (").next(), n, "error text");
                }
            }
            report.check(value.to_bytes(d).is_err(), n, || format!("to_bytes succeeded in {}", d.name()));
        }
    }
    assert!(report.cases >= 4, "expected the four size-limit cases, checked {}", report.cases);
    report.finish();
}

// ---------------------------------------------------------------------------------------------
// foolscap: the token layer

/// A token as the vectors write it, with owned data.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open(u64),
    Close(u64),
    Abort(u64),
    /// Kind (`INT`, `NEG`, `LONGINT`, `LONGNEG`) and signed value.
    Int(&'static str, BigInt),
    String(Vec<u8>),
    Vocab(u64),
    /// Bit pattern, so NaN compares equal to itself and -0.0 differs from 0.0.
    Float(u64),
    Error(Vec<u8>),
    Ping(u64),
    Pong(u64),
}

fn int_kind(type_byte: u8) -> &'static str {
    match type_byte {
        tb::INT => "INT",
        tb::NEG => "NEG",
        tb::LONGINT => "LONGINT",
        tb::LONGNEG => "LONGNEG",
        other => panic!("not an integer type byte: {other:#04x}"),
    }
}

impl Tok {
    fn from_json(j: &Json) -> Tok {
        let pair = j.as_array().filter(|p| p.len() == 2).unwrap_or_else(|| panic!("not a [KIND, value] token: {j}"));
        let (kind, v) = (pair[0].as_str().expect("token kind"), &pair[1]);
        let number = || v.as_u64().unwrap_or_else(|| panic!("{kind} needs a number: {j}"));
        match kind {
            "OPEN" => Tok::Open(number()),
            "CLOSE" => Tok::Close(number()),
            "ABORT" => Tok::Abort(number()),
            "PING" => Tok::Ping(number()),
            "PONG" => Tok::Pong(number()),
            "VOCAB" => Tok::Vocab(number()),
            "INT" => Tok::Int("INT", integer(v)),
            "NEG" => Tok::Int("NEG", integer(v)),
            "LONGINT" => Tok::Int("LONGINT", integer(v)),
            "LONGNEG" => Tok::Int("LONGNEG", integer(v)),
            "STRING" => Tok::String(byte_string(v)),
            "ERROR" => Tok::Error(byte_string(v)),
            "FLOAT" => Tok::Float(float(v).to_bits()),
            other => panic!("unknown token kind {other:?}"),
        }
    }

    fn from_token(t: &Token<'_>) -> Tok {
        match *t {
            Token::Open(n) => Tok::Open(n),
            Token::Close(n) => Tok::Close(n),
            Token::Abort(n) => Tok::Abort(n),
            Token::Ping(n) => Tok::Ping(n),
            Token::Pong(n) => Tok::Pong(n),
            Token::Vocab { index, .. } => Tok::Vocab(index),
            Token::Int { type_byte, ref value } => Tok::Int(int_kind(type_byte), value.to_big()),
            Token::String(s) => Tok::String(s.to_vec()),
            Token::Error(s) => Tok::Error(s.to_vec()),
            Token::Float(f) => Tok::Float(f.to_bits()),
            Token::List(n) => panic!("LIST({n}) from the foolscap tokenizer"),
        }
    }

    /// Append this token. `vocab` says whether byte strings equal to a word of the vocabulary
    /// table go out as VOCAB (foolscap's writer with table 1) or always as STRING (the exact
    /// wire tokens, or table 0).
    fn encode(&self, enc: &mut Encoder, vocab: bool) -> Result<(), BananaError> {
        match self {
            Tok::Open(n) => enc.numbered(tb::OPEN, *n),
            Tok::Close(n) => enc.numbered(tb::CLOSE, *n),
            Tok::Abort(n) => enc.numbered(tb::ABORT, *n),
            Tok::Ping(n) => enc.numbered(tb::PING, *n),
            Tok::Pong(n) => enc.numbered(tb::PONG, *n),
            Tok::Vocab(i) => {
                let word = vocab::foolscap_word(*i).unwrap_or_else(|| panic!("no foolscap vocab word {i}"));
                enc.bytes(word)?;
            }
            Tok::Int(_, v) => match i64::try_from(v) {
                Ok(small) => enc.int(small),
                Err(_) => enc.big_int(v)?,
            },
            Tok::String(s) if vocab => enc.bytes(s)?,
            Tok::String(s) => enc.string(s)?,
            Tok::Float(bits) => enc.float(f64::from_bits(*bits)),
            Tok::Error(m) => enc.error(m),
        }
        Ok(())
    }
}

fn tokens_json(j: &Json) -> Vec<Tok> {
    j.as_array().unwrap_or_else(|| panic!("not a token list: {j}")).iter().map(Tok::from_json).collect()
}

/// What a [`Tokenizer`] delivered for one input.
#[derive(Debug, PartialEq)]
struct Tokenized {
    /// Tokens with their stream offsets.
    tokens: Vec<(Tok, u64)>,
    /// Bytes held for an incomplete token (not compared after an error).
    buffered: usize,
    error: Option<BananaError>,
}

/// Tokenize `data` fed in `chunk_size`-byte chunks.
fn tokenize(data: &[u8], chunk_size: usize) -> Tokenized {
    let mut tokenizer = Tokenizer::new(Dialect::Foolscap, Limits::twisted());
    let mut tokens = Vec::new();
    for chunk in data.chunks(chunk_size.max(1)) {
        let fed = tokenizer.feed(chunk, |t: Token<'_>, offset| -> Result<(), BananaError> {
            tokens.push((Tok::from_token(&t), offset));
            Ok(())
        });
        if let Err(e) = fed {
            return Tokenized { tokens, buffered: 0, error: Some(e) };
        }
    }
    Tokenized { tokens, buffered: tokenizer.buffered(), error: None }
}

/// The bare token layer: `TokenReader::step` from offset 0 to the end, with no sequence
/// bookkeeping. `Err` if a token fails to decode or the input ends inside one.
fn read_tokens(data: &[u8]) -> Result<Vec<(Tok, u64)>, String> {
    let reader = TokenReader::new(data, 0, Dialect::Foolscap, Limits::twisted());
    let (mut out, mut pos) = (Vec::new(), 0);
    while pos < data.len() {
        match reader.step(pos) {
            Ok(Step::Token(t, end)) => {
                out.push((Tok::from_token(&t), pos as u64));
                pos = end;
            }
            Ok(Step::Incomplete { need }) => return Err(format!("incomplete token at {pos} (need {need})")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// foolscap's receive rule, which the Tokenizer enforces: a CLOSE or ABORT must name the innermost
/// open sequence. Returns the index of the first token that breaks it, with the innermost open id.
fn first_unmatched(tokens: &[Tok]) -> Option<(usize, Option<u64>, u64)> {
    let mut open = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            Tok::Open(id) => open.push(id),
            Tok::Close(id) | Tok::Abort(id) => {
                if open.last() != Some(&id) {
                    return Some((i, open.last().copied(), id));
                }
                if matches!(t, Tok::Close(_)) {
                    open.pop();
                }
            }
            _ => {}
        }
    }
    None
}

/// Check one byte stream against its expected wire tokens:
/// * the bare token layer reads exactly those tokens and consumes every byte;
/// * the Tokenizer, whole and byte by byte, delivers the same tokens at the same offsets, or, when
///   the stream is a lone CLOSE/ABORT (writer vectors are single tokens, checked by foolscap with
///   its sequence layer replaced), delivers the tokens before it and then refuses it;
/// * encoding the wire tokens again gives the same bytes.
fn check_token_stream(report: &mut Report, n: &str, hex: &str, wire: &[Tok]) {
    let data = unhex(hex);
    let raw = match read_tokens(&data) {
        Ok(raw) => raw,
        Err(e) => {
            report.check(false, n, || format!("token layer: {e}"));
            return;
        }
    };
    let raw_tokens: Vec<Tok> = raw.iter().map(|(t, _)| t.clone()).collect();
    report.eq(&raw_tokens[..], wire, n, "tokens (TokenReader)");

    let expected = match first_unmatched(&raw_tokens) {
        None => Tokenized { tokens: raw, buffered: 0, error: None },
        Some((i, expected, got)) => {
            let error = BananaError::at(raw[i].1, ErrorKind::CloseMismatch { expected, got });
            Tokenized { tokens: raw[..i].to_vec(), buffered: 0, error: Some(error) }
        }
    };
    report.eq(tokenize(&data, data.len()), expected, n, "Tokenizer (one chunk)");
    let bytewise = tokenize(&data, 1);
    report.eq(&bytewise, &tokenize(&data, data.len()), n, "Tokenizer fed one byte at a time differs from one chunk");
    report.eq(encode_tokens(wire, false), Ok(hex.to_string()), n, "re-encoding the wire tokens");
}

fn encode_tokens(tokens: &[Tok], vocab: bool) -> Result<String, BananaError> {
    let mut enc = Encoder::new(Dialect::Foolscap);
    for t in tokens {
        t.encode(&mut enc, vocab)?;
    }
    Ok(hex::encode(enc.out))
}

#[test]
fn foolscap_vocab_table_matches() {
    let doc = foolscap();
    assert_eq!(doc["vocab_table_index"], 1);
    let words: Vec<&[u8]> =
        doc["vocab"].as_array().expect("vocab").iter().map(|w| w.as_str().expect("word").as_bytes()).collect();
    assert_eq!(words, vocab::FOOLSCAP_VOCAB.to_vec());
    for (i, w) in words.iter().enumerate() {
        assert_eq!(Dialect::Foolscap.vocab_word(i as u64), Some(*w), "vocab word {i}");
        assert_eq!(Dialect::Foolscap.vocab_index(w), Some(i as u8), "vocab index of {w:?}");
    }
    assert_eq!(Dialect::Foolscap.vocab_word(words.len() as u64), None);
}

#[test]
fn foolscap_tokens_match_foolscap_writers() {
    let doc = foolscap();
    let mut report = Report::new("foolscap tokens");
    for case in section(&doc, "tokens") {
        report.case();
        let n = name(case);
        let hex = field(case, "hex");
        check_token_stream(&mut report, n, hex, &tokens_json(&case["wire_tokens"]));
        // The writer's input tokens: with table 1 a STRING that is a vocab word goes out as VOCAB.
        let with_vocab = match case["vocab_table"].as_u64() {
            Some(1) => true,
            Some(0) => false,
            other => panic!("{n}: unexpected vocab_table {other:?}"),
        };
        report.eq(encode_tokens(&tokens_json(&case["tokens"]), with_vocab), Ok(hex.to_string()), n, "writer tokens");
    }
    report.finish();
}

#[test]
fn foolscap_captures_tokenize() {
    let doc = foolscap();
    let mut report = Report::new("foolscap captures");
    for case in section(&doc, "captures") {
        report.case();
        check_token_stream(&mut report, name(case), field(case, "hex"), &tokens_json(&case["tokens"]));
    }
    report.finish();
}

#[test]
fn foolscap_slices_tokenize() {
    let doc = foolscap();
    let mut report = Report::new("foolscap slices");
    for case in section(&doc, "slices") {
        report.case();
        check_token_stream(&mut report, name(case), field(case, "hex"), &tokens_json(&case["tokens"]));
    }
    report.finish();
}
