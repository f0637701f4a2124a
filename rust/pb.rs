//! Twisted PB's broker layer, sans IO: one side of a connection as bytes in, commands out.
//!
//! A PB stream opens with dialect negotiation (the server offers `["pb", "none"]`, the client
//! answers with its choice) and a `["version", 6]` from each side; after that every top-level
//! banana expression is one command: `["message", ...]`, `["answer", ...]`, `["decref", luid]`
//! and so on. A [`Session`] does the negotiation and the framing, checks each command's envelope
//! (its name, arity and field types) and hands back a [`Command`] whose jelly values are left
//! in place for the caller's builder: the Python binding makes Python objects of them, the tests
//! here read them as plain banana.
//!
//! Anything that breaks the stream or an envelope is a [`PbError`]: the connection cannot go on.
//! The time-driven rules (handshake and idle timeouts) are [`crate::liveness`]'s.

use crate::banana::cursor::{Cursor, Item};
use crate::banana::show;
use crate::banana::{BananaError, Dialect, Encoder, Framer, Limits, LARGE};

/// The PB protocol version Twisted has spoken since 2003.
pub const PB_VERSION: i64 = 6;

/// Negotiation expressions are a few bytes; anything longer is not a PB peer.
pub const HELLO_LIMIT: usize = 256;

/// The server's offer of Twisted's dialects, in preference order.
const OFFER: [&[u8]; 2] = [b"pb", b"none"];

/// The dialect name a pbfast server adds after Twisted's in its offer, followed by the
/// extensions it speaks (`pbfast cancel stream`): a stock client takes the first name it knows
/// (`pb`) and never sees it; a pbfast client answers with it and the extensions both speak.
/// The stream is then the `pb` dialect plus those extensions.
pub const PBFAST: &[u8] = b"pbfast";

/// Why a PB stream cannot go on.
#[derive(Debug, Clone, PartialEq)]
pub enum PbError {
    /// Bad banana, or a limit crossed.
    Banana(BananaError),
    /// A command whose envelope is wrong (the message says what and at which byte).
    Protocol(String),
    /// The peer speaks no dialect or version of ours.
    Negotiation(String),
}

impl From<BananaError> for PbError {
    fn from(e: BananaError) -> PbError {
        PbError::Banana(e)
    }
}

impl std::fmt::Display for PbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PbError::Banana(e) => write!(f, "{e}"),
            PbError::Protocol(what) | PbError::Negotiation(what) => f.write_str(what),
        }
    }
}

/// The object a `message` is for: a number the peer was given, or a name (`root`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectId<'a> {
    Luid(i64),
    Name(&'a [u8]),
}

/// The commands that give back what the peer was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Decref,
    Decache,
    Uncache,
}

/// What a command is, its envelope read. The values after the envelope start at
/// [`Command::body`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind<'a> {
    /// `[message|cachemessage, request_id, object_id, method, answer_required, args, kwargs]`:
    /// the jelly arguments and keyword arguments follow.
    Message { cache: bool, request_id: i64, object: ObjectId<'a>, method: &'a str, answer: bool },
    /// `[answer|error, request_id, value]`: the jelly value follows.
    Reply { error: bool, request_id: i64 },
    /// `[decref|decache|uncache, luid]`: the raw luid follows.
    Release(Release),
    /// `[didNotUnderstand, command]`: the raw command follows.
    DidNotUnderstand,
    /// A command PB does not have (answered with `didNotUnderstand`).
    Unknown(&'a [u8]),
}

/// One received command.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub kind: Kind<'a>,
    /// The whole expression.
    pub expr: &'a [u8],
    /// Where in `expr` the values after the envelope start.
    pub body: usize,
    /// The stream offset of `expr`'s first byte (for error messages).
    pub offset: u64,
    /// How the values are written and the limits they were checked against.
    pub dialect: Dialect,
    pub limits: Limits,
}

/// What a chunk completed.
#[derive(Debug)]
pub enum Received<'a> {
    /// Negotiation is over: the dialect, and the bytes to send the peer now (the client's
    /// choice and version, or the server's version).
    Ready {
        dialect: Dialect,
        send: Vec<u8>,
        /// The extensions both sides speak if the peer is pbfast (None: a stock peer).
        extensions: Option<Vec<String>>,
    },
    Command(Command<'a>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// Client: waiting for the server's list of dialects.
    AwaitOffer,
    /// Server: waiting for the client's choice.
    AwaitChoice,
    Ready,
}

/// One side of a PB connection.
pub struct Session {
    stage: Stage,
    /// Reads the one negotiation expression a byte at a time, so the dialect can change right
    /// after it, mid-chunk.
    hello: Framer,
    framer: Framer,
    /// The pbfast extensions this side speaks (a server offers them, a client picks from them);
    /// None: this side does not announce itself (a stock Twisted peer's negotiation).
    extensions: Option<Vec<String>>,
    /// The extensions both sides speak, once negotiation is over with a pbfast peer.
    peer_extensions: Option<Vec<String>>,
    /// `max_element_size` was set: it stays as it is with a peer that speaks [`LARGE`].
    element_size_set: bool,
}

impl Session {
    /// `server`: this side accepted the connection (it offers the dialects and sends
    /// [`Session::offer`] first; the client picks). `extensions`: the pbfast extensions this
    /// side speaks with a pbfast peer (names without spaces; None: a stock Twisted peer's
    /// negotiation, byte for byte).
    pub fn new(server: bool, limits: Limits, extensions: Option<&[&str]>) -> Session {
        let hello_limits = Limits { max_message_size: HELLO_LIMIT, max_depth: 2, ..limits };
        let extensions = extensions.map(|names| {
            let mut names: Vec<String> = names.iter().map(|e| e.to_string()).collect();
            names.sort();
            names.dedup();
            names
        });
        Session {
            stage: if server { Stage::AwaitChoice } else { Stage::AwaitOffer },
            hello: Framer::new(Dialect::NoVocab, hello_limits),
            framer: Framer::new(Dialect::NoVocab, limits),
            extensions,
            peer_extensions: None,
            element_size_set: false,
        }
    }

    /// Keep `max_element_size` as it is with a peer that speaks [`LARGE`] (it was set
    /// explicitly); by default it is raised to `max_message_size` then.
    pub fn keep_element_size(&mut self, keep: bool) {
        self.element_size_set = keep;
    }

    /// The server's first bytes: the dialects it offers (Twisted's, then pbfast's when this
    /// side announces itself).
    pub fn offer(&self) -> Vec<u8> {
        let pbfast = self.extensions.as_deref().map(pbfast_name);
        let mut enc = Encoder::new(Dialect::NoVocab);
        enc.list(OFFER.len() + usize::from(pbfast.is_some())).expect("a short list");
        for word in OFFER.iter().copied().chain(pbfast.as_deref()) {
            enc.bytes(word).expect("a short string");
        }
        enc.out
    }

    /// The extensions both sides speak when the peer is pbfast (None: a stock peer, or
    /// negotiation is not over).
    pub fn peer_extensions(&self) -> Option<&[String]> {
        self.peer_extensions.as_deref()
    }

    /// The negotiated dialect, once negotiation is over.
    pub fn dialect(&self) -> Option<Dialect> {
        (self.stage == Stage::Ready).then(|| self.framer.dialect())
    }

    pub fn limits(&self) -> Limits {
        self.framer.limits()
    }

    /// Bytes held for an incomplete expression.
    pub fn buffered(&self) -> usize {
        self.hello.buffered() + self.framer.buffered()
    }

    /// Feed a chunk: `on_received` is called for what it completes, in order. A `version`
    /// command that matches ours is checked here and not passed on. After an error the session
    /// stays failed.
    pub fn feed<E: From<PbError>>(
        &mut self,
        mut bytes: &[u8],
        mut on_received: impl FnMut(Received<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.stage != Stage::Ready {
            let (used, ready) = self.negotiate(bytes).map_err(E::from)?;
            bytes = &bytes[used..];
            match ready {
                Some(ready) => on_received(ready)?,
                None => return Ok(()),
            }
        }
        let (dialect, limits) = (self.framer.dialect(), self.framer.limits());
        self.framer
            .feed(bytes, |expr: &[u8], offset| -> Result<(), Fed<E>> {
                match command(expr, offset, dialect, limits).map_err(|e| Fed(e.into()))? {
                    Some(command) => on_received(Received::Command(command)).map_err(Fed),
                    None => Ok(()),
                }
            })
            .map_err(|Fed(e)| e)
    }

    /// Read the negotiation expression from the front of `bytes`: how many bytes it used, and
    /// what negotiation ended with, if it did.
    fn negotiate(&mut self, bytes: &[u8]) -> Result<(usize, Option<Received<'static>>), PbError> {
        for (i, byte) in bytes.iter().enumerate() {
            let mut hello = None;
            self.hello
                .feed(std::slice::from_ref(byte), |expr: &[u8], _| -> Result<(), BananaError> {
                    hello = Some(expr.to_vec());
                    Ok(())
                })
                .map_err(|e| match e.limit_name() {
                    Some("max_message_size" | "max_depth") => PbError::Negotiation(format!(
                        "the peer's dialect negotiation is over {HELLO_LIMIT} bytes or nested: not a PB peer"
                    )),
                    _ => PbError::Banana(e),
                })?;
            let Some(expr) = hello else { continue };
            let mut cur = Cursor::new(&expr, Dialect::NoVocab, self.hello.limits());
            let client = self.stage == Stage::AwaitOffer;
            let ours = self.extensions.as_deref();
            let choice = if client { choose(&mut cur, ours)? } else { accept(&mut cur, ours)? };
            let chosen = choice.dialect;
            let mut enc = Encoder::new(Dialect::NoVocab);
            if client {
                match &choice.extensions {
                    Some(common) => enc.bytes(&pbfast_name(common))?,
                    None => enc.bytes(chosen.name().as_bytes())?,
                }
            }
            if choice.extensions.as_ref().is_some_and(|e| e.iter().any(|e| e == LARGE)) {
                // Before anything after the negotiation is read: it may follow in this chunk.
                self.framer.set_limits(self.framer.limits().for_large(self.element_size_set));
            }
            self.peer_extensions.clone_from(&choice.extensions);
            enc.dialect = chosen;
            enc.list(2)?;
            enc.bytes(b"version")?;
            enc.int(PB_VERSION);
            self.stage = Stage::Ready;
            self.framer.set_dialect(chosen);
            self.framer.start_at(self.hello.offset());
            let ready = Received::Ready { dialect: chosen, send: enc.out, extensions: choice.extensions };
            return Ok((i + 1, Some(ready)));
        }
        Ok((bytes.len(), None))
    }
}

/// A callback's error carried through the framer (which needs `From<BananaError>`).
struct Fed<E>(E);

impl<E: From<PbError>> From<BananaError> for Fed<E> {
    fn from(e: BananaError) -> Fed<E> {
        Fed(PbError::Banana(e).into())
    }
}

/// What negotiation settled: the dialect, and the extensions both speak if the peer is pbfast.
struct Choice {
    dialect: Dialect,
    extensions: Option<Vec<String>>,
}

/// `pbfast` followed by the extensions, space-separated.
fn pbfast_name(extensions: &[String]) -> Vec<u8> {
    let mut name = PBFAST.to_vec();
    for e in extensions {
        name.push(b' ');
        name.extend_from_slice(e.as_bytes());
    }
    name
}

/// The extensions a pbfast dialect name carries, or None if it is not pbfast's.
fn pbfast_extensions(name: &[u8]) -> Option<Vec<&[u8]>> {
    let mut words = name.split(|&b| b == b' ').filter(|w| !w.is_empty());
    (words.next() == Some(PBFAST)).then(|| words.collect())
}

/// The client's pick from the server's offer (a list of names): pbfast's if offered and this
/// side announces itself (with the extensions both speak), else the first dialect we speak.
fn choose(cur: &mut Cursor<'_>, ours: Option<&[String]>) -> Result<Choice, PbError> {
    let not_names = || PbError::Negotiation("the server's dialect offer is not a list of names".into());
    let Some(Item::List(n)) = cur.next_item() else { return Err(not_names()) };
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        match cur.next_item() {
            Some(Item::Bytes(name)) => names.push(name),
            _ => return Err(not_names()),
        }
    }
    if let Some(ours) = ours {
        if let Some(offered) = names.iter().find_map(|name| pbfast_extensions(name)) {
            let common = ours.iter().filter(|e| offered.contains(&e.as_bytes())).cloned().collect();
            return Ok(Choice { dialect: Dialect::Pb, extensions: Some(common) });
        }
    }
    let dialect = names.iter().find_map(|w| named_dialect(w)).ok_or_else(|| {
        let offered: Vec<String> = names.iter().map(|n| show(n)).collect();
        PbError::Negotiation(format!(
            "the server offers dialects [{}], none of which pbfast speaks (pb, none)",
            offered.join(", ")
        ))
    })?;
    Ok(Choice { dialect, extensions: None })
}

/// The server's check of the client's choice.
fn accept(cur: &mut Cursor<'_>, ours: Option<&[String]>) -> Result<Choice, PbError> {
    let Some(Item::Bytes(name)) = cur.next_item() else {
        return Err(PbError::Negotiation("the client's dialect choice is not a name".into()));
    };
    let not_offered =
        || PbError::Negotiation(format!("the client chose dialect {}, which was not offered", show(name)));
    if let Some(chosen) = pbfast_extensions(name) {
        let offered = |e: &&[u8]| ours.is_some_and(|ours| ours.iter().any(|o| o.as_bytes() == *e));
        if ours.is_none() || !chosen.iter().all(offered) {
            return Err(not_offered());
        }
        let mut common: Vec<String> = chosen.iter().map(|e| String::from_utf8_lossy(e).into_owned()).collect();
        common.sort();
        common.dedup();
        return Ok(Choice { dialect: Dialect::Pb, extensions: Some(common) });
    }
    let dialect = named_dialect(name).ok_or_else(not_offered)?;
    Ok(Choice { dialect, extensions: None })
}

fn named_dialect(name: &[u8]) -> Option<Dialect> {
    match name {
        b"pb" => Some(Dialect::Pb),
        b"none" => Some(Dialect::NoVocab),
        _ => None,
    }
}

/// Read one expression's envelope; None for a `version` that matches ours.
pub fn command(expr: &[u8], offset: u64, dialect: Dialect, limits: Limits) -> Result<Option<Command<'_>>, PbError> {
    let broken = |what: &str, at: usize| PbError::Protocol(format!("{what} (at byte {})", offset + at as u64));
    let mut cur = Cursor::new(expr, dialect, limits);
    let Some(Item::List(n)) = cur.next_item() else {
        return Err(broken("a PB command must be a list", 0));
    };
    let name = match cur.next_item() {
        Some(Item::Bytes(name)) => name,
        _ => return Err(broken("a PB command must start with its name as a byte string", 0)),
    };
    let arity = |want: usize| -> Result<(), PbError> {
        if n == want {
            return Ok(());
        }
        let fields = |n: usize| if n == 1 { "1 field".to_string() } else { format!("{n} fields") };
        Err(broken(&format!("{} takes {}, not {}", show(name), fields(want - 1), n.saturating_sub(1)), 0))
    };
    let int = |cur: &mut Cursor<'_>, what: &str| -> Result<i64, PbError> {
        let at = cur.pos();
        match cur.next_item() {
            Some(Item::Int(v)) => Ok(v),
            _ => Err(broken(&format!("the {what} must be an integer"), at)),
        }
    };
    let kind = match name {
        b"message" | b"cachemessage" => {
            arity(7)?;
            let request_id = int(&mut cur, "request id")?;
            let at = cur.pos();
            let object = match cur.next_item() {
                Some(Item::Int(luid)) => ObjectId::Luid(luid),
                Some(Item::Bytes(name)) => ObjectId::Name(name),
                _ => return Err(broken("an object id must be an integer or a byte string", at)),
            };
            // Bytes (UTF-8, as Twisted sends it) or a jellied `unicode`.
            let at = cur.pos();
            let method = match cur.unicode() {
                Some(name) => name,
                None => match cur.next_item() {
                    Some(Item::Bytes(name)) => name,
                    _ => return Err(broken("a method name must be a byte string", at)),
                },
            };
            let method = std::str::from_utf8(method).map_err(|_| broken("a method name must be UTF-8", at))?;
            let answer = int(&mut cur, "answerRequired")? != 0;
            Kind::Message { cache: name == b"cachemessage", request_id, object, method, answer }
        }
        b"answer" | b"error" => {
            arity(3)?;
            Kind::Reply { error: name == b"error", request_id: int(&mut cur, "request id")? }
        }
        b"decref" | b"decache" | b"uncache" => {
            arity(2)?;
            Kind::Release(match name {
                b"decref" => Release::Decref,
                b"decache" => Release::Decache,
                _ => Release::Uncache,
            })
        }
        b"version" => {
            arity(2)?;
            let at = cur.pos();
            return match cur.next_item() {
                Some(Item::Int(PB_VERSION)) => Ok(None),
                Some(Item::Int(v)) => Err(PbError::Negotiation(format!(
                    "Version Incompatibility: pbfast speaks PB protocol version {PB_VERSION}, the peer {v}"
                ))),
                _ => Err(broken("the version must be an integer", at)),
            };
        }
        b"didNotUnderstand" => {
            arity(2)?;
            Kind::DidNotUnderstand
        }
        other => Kind::Unknown(other),
    };
    Ok(Some(Command { kind, expr, body: cur.pos(), offset, dialect, limits }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::value::{decode_stream, Value};
    use crate::banana::Integer;

    /// A scripted peer's bytes: banana of `build`'s tokens in `dialect`.
    fn banana(dialect: Dialect, build: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut enc = Encoder::new(dialect);
        build(&mut enc);
        enc.out
    }

    fn message(dialect: Dialect, request_id: i64, object: &[u8], method: &[u8]) -> Vec<u8> {
        banana(dialect, |e| {
            e.list(7).unwrap();
            e.bytes(b"message").unwrap();
            e.int(request_id);
            e.bytes(object).unwrap();
            e.bytes(method).unwrap();
            e.int(1);
            // args: ["tuple", 1]; kwargs: ["dictionary"]
            e.list(2).unwrap();
            e.bytes(b"tuple").unwrap();
            e.int(1);
            e.list(1).unwrap();
            e.bytes(b"dictionary").unwrap();
        })
    }

    /// Everything `bytes` completes, fed in `chunk`-byte pieces, as owned values.
    fn feed_in(session: &mut Session, bytes: &[u8], chunk: usize) -> Result<Vec<Got>, PbError> {
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            session.feed(piece, |r: Received<'_>| -> Result<(), PbError> {
                got.push(Got::of(r));
                Ok(())
            })?;
        }
        Ok(got)
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Ready(Dialect, Vec<u8>),
        Command(String, Vec<Value>),
    }

    impl Got {
        fn of(r: Received<'_>) -> Got {
            match r {
                Received::Ready { dialect, send, .. } => Got::Ready(dialect, send),
                Received::Command(c) => {
                    let rest = decode_stream(&[&c.expr[c.body..]], Dialect::Pb, Limits::twisted()).unwrap_or_default();
                    Got::Command(format!("{:?}", c.kind), rest)
                }
            }
        }
    }

    #[test]
    fn the_offer_is_twisteds() {
        // What a stock Twisted PB server sends first.
        assert_eq!(Session::new(true, Limits::twisted(), None).offer(), b"\x02\x80\x02\x82pb\x04\x82none");
        // With extensions, pbfast's name comes after Twisted's (a stock client takes "pb").
        let offer = Session::new(true, Limits::twisted(), Some(&["stream", "cancel"])).offer();
        assert_eq!(offer, b"\x03\x80\x02\x82pb\x04\x82none\x14\x82pbfast cancel stream");
    }

    #[test]
    fn two_pbfast_sides_agree_on_the_extensions_both_speak() {
        let mut client = Session::new(false, Limits::twisted(), Some(&["cancel", "trace"]));
        let mut server = Session::new(true, Limits::twisted(), Some(&["stream", "cancel"]));
        let got = feed_in(&mut client, &server.offer(), 1).unwrap();
        let Got::Ready(dialect, send) = &got[0] else { panic!("{got:?}") };
        assert_eq!(*dialect, Dialect::Pb);
        assert!(send.starts_with(b"\x0d\x82pbfast cancel"), "{send:?}");
        assert_eq!(client.peer_extensions(), Some(&["cancel".to_string()][..]));
        feed_in(&mut server, send, 1).unwrap();
        assert_eq!(server.dialect(), Some(Dialect::Pb));
        assert_eq!(server.peer_extensions(), Some(&["cancel".to_string()][..]));
        // A pbfast client with no extension in common still says it is pbfast.
        let mut client = Session::new(false, Limits::twisted(), Some(&["trace"]));
        let mut server = Session::new(true, Limits::twisted(), Some(&[]));
        assert!(server.offer().ends_with(b"\x06\x82pbfast"));
        let got = feed_in(&mut client, &server.offer(), 7).unwrap();
        let Got::Ready(_, send) = &got[0] else { panic!("{got:?}") };
        feed_in(&mut server, send, 7).unwrap();
        assert_eq!(server.peer_extensions(), Some(&[][..]));
    }

    #[test]
    fn a_pbfast_side_speaks_plain_pb_to_stock_peers() {
        // A stock server's offer: the pbfast client picks "pb", as Twisted's client does.
        let mut client = Session::new(false, Limits::twisted(), Some(&["cancel"]));
        let got = feed_in(&mut client, &Session::new(true, Limits::twisted(), None).offer(), 1).unwrap();
        assert_eq!(got, vec![Got::Ready(Dialect::Pb, b"\x02\x82pb\x02\x80\x13\x87\x06\x81".to_vec())]);
        assert_eq!(client.peer_extensions(), None);
        // A stock client's choice of "pb" from a pbfast server's offer.
        let mut server = Session::new(true, Limits::twisted(), Some(&["cancel"]));
        feed_in(&mut server, b"\x02\x82pb", 1).unwrap();
        assert_eq!((server.dialect(), server.peer_extensions()), (Some(Dialect::Pb), None));
        // A client cannot pick an extension the server did not offer, nor pbfast from a
        // server that does not announce itself.
        for (offered, chosen) in [(Some(&["cancel"][..]), &b"pbfast cancel stream"[..]), (None, &b"pbfast"[..])] {
            let mut server = Session::new(true, Limits::twisted(), offered);
            let choice = banana(Dialect::NoVocab, |e| e.bytes(chosen).unwrap());
            let err = feed_in(&mut server, &choice, 1).unwrap_err();
            assert!(err.to_string().contains("which was not offered"), "{err}");
        }
    }

    /// `["answer", 1, <a string of `len` bytes>]`.
    fn long_answer(len: usize) -> Vec<u8> {
        let mut enc = Encoder::new(Dialect::Pb);
        enc.max_element = (usize::MAX, None);
        enc.list(3).unwrap();
        enc.bytes(b"answer").unwrap();
        enc.int(1);
        enc.bytes(&vec![b'x'; len]).unwrap();
        enc.out
    }

    #[test]
    fn large_lifts_the_element_limit_as_negotiation_ends() {
        let limits = Limits { max_message_size: 2 << 20, ..Limits::twisted() };
        let long = long_answer(1 << 20);
        // Negotiation then a long string in the same chunk: read with the lifted limit.
        for keep in [false, true] {
            let mut client = Session::new(false, limits, Some(&[LARGE]));
            let mut server = Session::new(true, limits, Some(&[LARGE]));
            server.keep_element_size(keep);
            let got = feed_in(&mut client, &server.offer(), 1).unwrap();
            let Got::Ready(_, send) = &got[0] else { panic!("{got:?}") };
            let fed = feed_in(&mut server, &[&send[..], &long].concat(), 4096);
            if keep {
                // `max_element_size` set explicitly: it stays.
                let Err(PbError::Banana(e)) = fed else { panic!("{fed:?}") };
                assert_eq!(e.limit_name(), Some("max_element_size"));
            } else {
                assert_eq!(fed.unwrap().len(), 2);
                assert_eq!(server.limits().max_element_size, 2 << 20);
            }
        }
        // Past max_message_size the limit named is the message's, refused from the header alone.
        let mut server = Session::new(true, limits, Some(&[LARGE]));
        let choice = banana(Dialect::NoVocab, |e| e.bytes(b"pbfast large").unwrap());
        feed_in(&mut server, &choice, 1).unwrap();
        let head = &long_answer(3 << 20)[..16];
        let Err(PbError::Banana(e)) = feed_in(&mut server, head, 16) else { panic!() };
        assert_eq!(
            (e.limit_name(), e.to_string().contains("max_message_size=2097152")),
            (Some("max_message_size"), true)
        );
        // A stock peer, or a pbfast one without `large`: Twisted's 640 KiB.
        for ours in [None, Some(&["cancel"][..])] {
            let mut server = Session::new(true, limits, Some(&[LARGE, "cancel"]));
            let choice = banana(Dialect::NoVocab, |e| match ours {
                None => e.bytes(b"pb").unwrap(),
                Some(_) => e.bytes(b"pbfast cancel").unwrap(),
            });
            feed_in(&mut server, &choice, 1).unwrap();
            assert_eq!(server.limits().max_element_size, crate::banana::SIZE_LIMIT);
            let Err(PbError::Banana(e)) = feed_in(&mut server, &long, 4096) else { panic!() };
            assert_eq!(e.limit_name(), Some("max_element_size"));
        }
    }

    #[test]
    fn client_and_server_negotiate_byte_by_byte() {
        let mut client = Session::new(false, Limits::twisted(), None);
        let mut server = Session::new(true, Limits::twisted(), None);
        let got = feed_in(&mut client, &server.offer(), 1).unwrap();
        // The client picks "pb" and sends its version in that dialect (Twisted's bytes).
        let choice = b"\x02\x82pb\x02\x80\x13\x87\x06\x81".to_vec();
        assert_eq!(got, vec![Got::Ready(Dialect::Pb, choice.clone())]);
        assert_eq!(client.dialect(), Some(Dialect::Pb));
        let got = feed_in(&mut server, &choice, 1).unwrap();
        assert_eq!(got, vec![Got::Ready(Dialect::Pb, b"\x02\x80\x13\x87\x06\x81".to_vec())]);
        // The client's version (already in the chunk) was checked and not passed on.
        assert_eq!(server.buffered(), 0);
    }

    #[test]
    fn commands_after_negotiation_in_any_chunking() {
        let mut script = b"\x02\x82pb".to_vec();
        script.extend(banana(Dialect::Pb, |e| {
            e.list(2).unwrap();
            e.bytes(b"version").unwrap();
            e.int(6);
        }));
        script.extend(message(Dialect::Pb, 1, b"root", b"echo"));
        script.extend(banana(Dialect::Pb, |e| {
            e.list(3).unwrap();
            e.bytes(b"answer").unwrap();
            e.int(7);
            e.bytes(b"ok").unwrap();
        }));
        script.extend(banana(Dialect::Pb, |e| {
            e.list(2).unwrap();
            e.bytes(b"decref").unwrap();
            e.int(3);
        }));
        script.extend(banana(Dialect::Pb, |e| {
            e.list(1).unwrap();
            e.bytes(b"frobnicate").unwrap();
        }));
        let mut expected = None;
        for chunk in [1, 2, 3, 7, script.len()] {
            let mut server = Session::new(true, Limits::twisted(), None);
            let got = feed_in(&mut server, &script, chunk).unwrap();
            assert_eq!(got.len(), 5, "chunk {chunk}: {got:?}");
            assert_eq!(
                got[1],
                Got::Command(
                    "Message { cache: false, request_id: 1, object: Name([114, 111, 111, 116]), method: \"echo\", answer: true }".into(),
                    vec![
                        Value::List(vec![Value::Bytes(b"tuple".to_vec()), Value::Int(Integer::Small(1))]),
                        Value::List(vec![Value::Bytes(b"dictionary".to_vec())]),
                    ]
                )
            );
            assert_eq!(
                got[2],
                Got::Command("Reply { error: false, request_id: 7 }".into(), vec![Value::Bytes(b"ok".to_vec())])
            );
            assert_eq!(got[3], Got::Command("Release(Decref)".into(), vec![Value::Int(Integer::Small(3))]));
            assert_eq!(got[4], Got::Command("Unknown([102, 114, 111, 98, 110, 105, 99, 97, 116, 101])".into(), vec![]));
            if let Some(expected) = &expected {
                assert_eq!(&got, expected);
            }
            expected = Some(got);
        }
    }

    fn server_after(script: &[u8]) -> Result<Vec<Got>, PbError> {
        let mut server = Session::new(true, Limits::twisted(), None);
        let mut bytes = b"\x02\x82pb".to_vec();
        bytes.extend_from_slice(script);
        feed_in(&mut server, &bytes, 1)
    }

    fn protocol_error(script: &[u8]) -> String {
        match server_after(script) {
            Err(PbError::Protocol(what)) => what,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn hostile_envelopes_say_what_and_where() {
        // A bare string is not a command; the stream starts at byte 4 after the choice.
        assert_eq!(protocol_error(b"\x02\x82hi"), "a PB command must be a list (at byte 4)");
        let wrong_arity = banana(Dialect::Pb, |e| {
            e.list(2).unwrap();
            e.bytes(b"answer").unwrap();
            e.int(1);
        });
        assert_eq!(protocol_error(&wrong_arity), "'answer' takes 2 fields, not 1 (at byte 4)");
        let bad_id = banana(Dialect::Pb, |e| {
            e.list(3).unwrap();
            e.bytes(b"answer").unwrap();
            e.bytes(b"x").unwrap();
            e.int(1);
        });
        assert!(protocol_error(&bad_id).starts_with("the request id must be an integer (at byte "));
        let bad_method = message(Dialect::Pb, 1, b"root", b"\xff\xfe");
        assert!(protocol_error(&bad_method).starts_with("a method name must be UTF-8"));
    }

    #[test]
    fn a_broken_stream_stays_broken() {
        let mut server = Session::new(true, Limits::twisted(), None);
        let mut bytes = b"\x02\x82pb".to_vec();
        bytes.extend_from_slice(b"\x01\xff"); // a token type banana does not have
        let first = feed_in(&mut server, &bytes, 64).unwrap_err();
        assert!(matches!(first, PbError::Banana(_)), "{first:?}");
        assert_eq!(feed_in(&mut server, &message(Dialect::Pb, 1, b"root", b"x"), 64).unwrap_err(), first);
    }

    #[test]
    fn negotiation_refuses_strangers() {
        let mut client = Session::new(false, Limits::twisted(), None);
        let offer = banana(Dialect::NoVocab, |e| {
            e.list(1).unwrap();
            e.bytes(b"zlib").unwrap();
        });
        let err = feed_in(&mut client, &offer, 1).unwrap_err();
        assert_eq!(
            err,
            PbError::Negotiation("the server offers dialects ['zlib'], none of which pbfast speaks (pb, none)".into())
        );
        let mut client = Session::new(false, Limits::twisted(), None);
        let err = feed_in(&mut client, b"\x02\x82pb", 1).unwrap_err();
        assert_eq!(err, PbError::Negotiation("the server's dialect offer is not a list of names".into()));
        let mut server = Session::new(true, Limits::twisted(), None);
        let err = feed_in(&mut server, b"\x04\x82zlib", 1).unwrap_err();
        assert_eq!(err, PbError::Negotiation("the client chose dialect 'zlib', which was not offered".into()));
        // An HTTP client, say: a long first token is refused within the hello limit.
        let mut server = Session::new(true, Limits::twisted(), None);
        let err = feed_in(&mut server, &[b'G'; 300], 1).unwrap_err();
        assert!(matches!(err, PbError::Banana(_) | PbError::Negotiation(_)), "{err:?}");
        let mut server = Session::new(true, Limits::twisted(), None);
        let mut long = vec![];
        long.extend(banana(Dialect::NoVocab, |e| e.bytes(&[b'x'; 400]).unwrap()));
        let err = feed_in(&mut server, &long, 1).unwrap_err();
        assert!(err.to_string().contains("not a PB peer"), "{err}");
    }

    #[test]
    fn a_different_version_is_refused() {
        let version = banana(Dialect::Pb, |e| {
            e.list(2).unwrap();
            e.bytes(b"version").unwrap();
            e.int(5);
        });
        assert_eq!(
            server_after(&version).unwrap_err(),
            PbError::Negotiation("Version Incompatibility: pbfast speaks PB protocol version 6, the peer 5".into())
        );
    }

    #[test]
    fn the_none_dialect_writes_no_vocabulary() {
        let mut client = Session::new(false, Limits::twisted(), None);
        let offer = banana(Dialect::NoVocab, |e| {
            e.list(1).unwrap();
            e.bytes(b"none").unwrap();
        });
        let got = feed_in(&mut client, &offer, 1).unwrap();
        assert_eq!(got, vec![Got::Ready(Dialect::NoVocab, b"\x04\x82none\x02\x80\x07\x82version\x06\x81".to_vec())]);
        let got = feed_in(&mut client, &message(Dialect::NoVocab, 2, b"root", b"ping"), 1).unwrap();
        assert_eq!(got.len(), 1);
    }
}
