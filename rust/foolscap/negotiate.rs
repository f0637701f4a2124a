//! foolscap's connection negotiation, without I/O: one [`Negotiation`] per connection, for
//! either side, fed the bytes that arrived and handing back the bytes to send, until banana can
//! start or the connection is refused.
//!
//! The phases, as foolscap runs them: the client sends `GET /id/<tubid>`; the server answers
//! `101 Switching Protocols` and both start TLS on the same stream; each sends a hello block;
//! the side with the greater TubID (the master) sends a decision block, and banana starts. Each
//! phase's header ends with an empty line and may be at most [`HEADER_LIMIT`] bytes.
//!
//! The negotiation drives its own [`TlsSession`]: from the upgrade on, what goes in and comes out
//! is ciphertext. Once negotiated, [`Negotiation::finish`] hands the session (with the decision
//! block perhaps still waiting in it) and any plaintext that followed the last block to the
//! banana phase.
//!
//! One decision needs the Tub: whether the master accepts the connection (foolscap's rule for
//! duplicate connections) and with which seqnum. [`Negotiation::receive`] then returns
//! [`Step::Decide`]; the caller answers with [`Negotiation::decide`] or [`Negotiation::refuse`].
//!
//! Whoever finds a problem tells the peer in the current phase's form (a server's `500` line
//! before TLS, an error block inside it) and the connection is closed; a TLS failure leaves only
//! TLS's own alert to send.

use std::collections::BTreeMap;
use std::fmt;

use sha1::{Digest, Sha1};

use crate::banana::vocab::FOOLSCAP_VOCAB;
use crate::tls::{Identity, TlsError, TlsSession};

/// The longest header (of any phase) a peer may send, without its final empty line.
pub const HEADER_LIMIT: usize = 4096;
/// The only banana version foolscap speaks.
pub const BANANA_VERSION: i64 = 3;
/// The server's acceptance of the upgrade request.
pub const UPGRADE_REPLY: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, PB/1.0\r\nConnection: Upgrade\r\n\r\n";
/// The hello key through which pbfast Tubs tell each other what they add to foolscap; stock
/// foolscap ignores keys it does not know.
pub const EXTENSIONS_KEY: &str = "pbfast-extensions";
/// The vocabulary tables offered: 0 (empty) to 1 (foolscap's).
const VOCAB_TABLES: (i64, i64) = (0, 1);

/// The client's first bytes, asking for the Tub `target` at `host`.
pub fn upgrade_request(target: &str, host: &str) -> Vec<u8> {
    format!("GET /id/{target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n").into_bytes()
}

/// The server's plaintext refusal (the connection is closed after it).
pub fn refusal_reply(reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 500 Internal Server Error: {}\r\n\r\n", one_line(reason)).into_bytes()
}

/// What a side writes inside TLS when negotiation fails, before closing.
pub fn error_block(reason: &str) -> Vec<u8> {
    encode_block(vec![("banana-decision-version", "1".into()), ("error", reason.into())])
}

/// `key: value` lines in key order, then an empty line.
fn encode_block(mut pairs: Vec<(&str, String)>) -> Vec<u8> {
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (key, value) in pairs {
        out.push_str(&format!("{key}: {}\r\n", one_line(&value)));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The first 4 hex digits of the SHA-1 of vocabulary table `index`'s words joined with NUL
/// bytes, as foolscap checks a decision's table with.
pub fn vocab_hash4(index: i64) -> String {
    let words: &[&[u8]] = if index == 1 { &FOOLSCAP_VOCAB } else { &[] };
    let digest = Sha1::digest(words.join(&0u8));
    digest[..2].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A side refused the connection; the message says why. The peer has been told, when the
    /// phase allows it.
    Refused(String),
    /// TLS failed; its alert for the peer (if any) waits in [`Negotiation::take`].
    Tls(TlsError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(reason) => f.write_str(reason),
            Failure::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Failure {}

fn refused<T>(reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Refused(reason.into()))
}

/// What [`Negotiation::receive`] (or [`Negotiation::decide`]) got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    Pending,
    /// We are the master and the peer's hello ([`Negotiation::peer`]) is acceptable: the Tub
    /// must [`decide`](Negotiation::decide) on the connection or [`refuse`](Negotiation::refuse)
    /// it.
    Decide,
    /// Banana may start: see [`Negotiation::outcome`] and [`Negotiation::finish`].
    Negotiated,
}

/// Where a negotiation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The plaintext request (server) or reply (client) is awaited.
    Upgrade,
    /// Inside TLS: the peer's hello is awaited.
    Hello,
    /// The peer's hello is accepted; the Tub's decision is awaited (master).
    Deciding,
    /// The master's decision is awaited.
    Decision,
    /// Banana may start.
    Done,
    /// Refused, or TLS failed.
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Upgrade => "upgrade",
            Phase::Hello => "hello",
            Phase::Deciding => "deciding",
            Phase::Decision => "decision",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

/// A hello block's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub tub_id: String,
    pub incarnation: String,
    /// The banana versions offered, lowest and highest.
    pub versions: (i64, i64),
    /// The vocabulary tables offered, lowest and highest.
    pub vocab_tables: (i64, i64),
    /// Whether the sender dialled (only a client's hello says `last-connection`).
    pub client: bool,
    /// Client only: (master incarnation, seqnum) of its last connection to us, if any.
    pub last_connection: Option<(String, i64)>,
    /// The pbfast extensions both sides know (for a received hello: those we know too).
    pub extensions: Vec<String>,
    /// Whether the hello announces a pbfast Tub (it has the extensions key; stock foolscap's
    /// does not).
    pub pbfast: bool,
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut pairs = vec![
            ("banana-negotiation-range", format!("{} {}", self.versions.0, self.versions.1)),
            ("initial-vocab-table-range", format!("{} {}", self.vocab_tables.0, self.vocab_tables.1)),
            ("my-incarnation", self.incarnation.clone()),
            ("my-tub-id", self.tub_id.clone()),
            (EXTENSIONS_KEY, self.extensions.join(" ")),
        ];
        if self.client {
            let last = match &self.last_connection {
                Some((incarnation, seqnum)) => format!("{incarnation} {seqnum}"),
                None => "none 0".into(),
            };
            pairs.push(("last-connection", last));
        }
        encode_block(pairs)
    }

    /// Read a peer's hello, keeping only the `extensions` we know.
    fn parse(block: &Block, extensions: &[String]) -> Result<Hello, Failure> {
        let required = |key: &str| match block.get(key) {
            Some(value) => Ok(value.as_str()),
            None => refused(format!("the peer's hello has no {key}")),
        };
        let versions = pair(required("banana-negotiation-range")?)?;
        let vocab_tables = pair(block.get("initial-vocab-table-range").map_or("0 0", String::as_str))?;
        let tub_id = required("my-tub-id")?.to_owned();
        let last_connection = match block.get("last-connection") {
            Some(last) if !last.starts_with("none") => {
                let (incarnation, seqnum) = last.split_once(' ').unwrap_or((last, ""));
                Some((incarnation.to_owned(), int(seqnum, "last-connection")?))
            }
            _ => None,
        };
        let offered: Vec<&str> = block.get(EXTENSIONS_KEY).map_or("", String::as_str).split_whitespace().collect();
        Ok(Hello {
            tub_id,
            incarnation: block.get("my-incarnation").cloned().unwrap_or_default(),
            versions,
            vocab_tables,
            client: block.contains_key("last-connection"),
            last_connection,
            extensions: extensions.iter().filter(|known| offered.contains(&known.as_str())).cloned().collect(),
            pbfast: block.contains_key(EXTENSIONS_KEY),
        })
    }
}

/// What a Tub gives each of its connections.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The Tub's certificate and key; its TubID is the certificate's.
    pub identity: Identity,
    /// The Tub's incarnation (it changes with every start of the Tub).
    pub incarnation: String,
    /// The pbfast extensions the Tub announces and accepts.
    pub extensions: Vec<String>,
}

/// What negotiation settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The connection's seqnum, as the master numbered it.
    pub seqnum: i64,
    /// Non-master only: (master incarnation, seqnum), what our next hello to that Tub says in
    /// `last-connection`.
    pub master_connection: Option<(String, i64)>,
}

/// One connection's negotiation (see the module documentation).
pub struct Negotiation {
    tub_id: String,
    hello: Hello,
    /// Client only: the TubID dialled.
    target: Option<String>,
    phase: Phase,
    reader: HeaderReader,
    /// Plaintext to send (the upgrade phase's).
    plaintext: Vec<u8>,
    /// Made with the negotiation, used from the upgrade on; gone once [`Self::finish`]ed.
    tls: Option<TlsSession>,
    /// Whether the upgrade has started TLS (before, the session's bytes must not be sent).
    upgraded: bool,
    peer: Option<Hello>,
    outcome: Option<Outcome>,
    failure: Option<Failure>,
}

impl fmt::Debug for Negotiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Negotiation")
            .field("tub_id", &self.tub_id)
            .field("target", &self.target)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Negotiation {
    /// The dialling side, asking for the Tub `target` at `host`; `last_connection` is what the
    /// previous connection to it settled ([`Outcome::master_connection`]). The upgrade request
    /// waits in [`Self::take`].
    pub fn client(
        setup: &Setup,
        target: &str,
        host: &str,
        last_connection: Option<(String, i64)>,
    ) -> Result<Negotiation, TlsError> {
        let mut negotiation = Negotiation::new(setup, TlsSession::client(Some(&setup.identity))?);
        negotiation.target = Some(target.to_owned());
        negotiation.hello.client = true;
        negotiation.hello.last_connection = last_connection;
        negotiation.plaintext = upgrade_request(target, host);
        Ok(negotiation)
    }

    /// The listening side, serving the Tub of `setup`.
    pub fn server(setup: &Setup) -> Result<Negotiation, TlsError> {
        Ok(Negotiation::new(setup, TlsSession::server(&setup.identity)?))
    }

    fn new(setup: &Setup, tls: TlsSession) -> Negotiation {
        let tub_id = setup.identity.tub_id();
        let mut extensions = setup.extensions.clone();
        extensions.sort();
        extensions.dedup();
        let hello = Hello {
            tub_id: tub_id.clone(),
            incarnation: setup.incarnation.clone(),
            versions: (BANANA_VERSION, BANANA_VERSION),
            vocab_tables: VOCAB_TABLES,
            client: false,
            last_connection: None,
            extensions,
            pbfast: true,
        };
        Negotiation {
            tub_id,
            hello,
            target: None,
            phase: Phase::Upgrade,
            reader: HeaderReader::default(),
            plaintext: Vec::new(),
            tls: Some(tls),
            upgraded: false,
            peer: None,
            outcome: None,
            failure: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The peer's hello, once accepted.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// What negotiation settled, once [`Step::Negotiated`].
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Whether the peer has sent TLS's close_notify.
    pub fn peer_closed(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsSession::peer_closed)
    }

    /// Process received bytes. On a failure the peer has been told (see [`Failure`]), and this
    /// and later calls return the same failure.
    pub fn receive(&mut self, data: &[u8]) -> Result<Step, Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let step = self.advance(data);
        if let Err(failure) = &step {
            self.fail(failure.clone());
        }
        step
    }

    /// As master, after [`Step::Decide`]: accept the connection as number `seqnum` (the decision
    /// block waits in [`Self::take`]). Out of turn it changes nothing and says so.
    pub fn decide(&mut self, seqnum: i64) -> Result<Step, Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.phase != Phase::Deciding {
            return refused(format!("no decision is awaited in the {} phase", self.phase.name()));
        }
        let peer = self.peer.as_ref().expect("the peer's hello is kept while deciding");
        let decided = common_table(&self.hello, peer).and_then(|table| {
            let decision = encode_block(vec![
                ("banana-decision-version", BANANA_VERSION.to_string()),
                ("initial-vocab-table-index", format!("{table} {}", vocab_hash4(table))),
                ("current-connection", format!("{} {seqnum}", self.hello.incarnation)),
            ]);
            self.tls_mut().write(&decision).map_err(Failure::Tls)
        });
        if let Err(failure) = decided {
            self.fail(failure.clone());
            return Err(failure);
        }
        self.outcome = Some(Outcome { seqnum, master_connection: None });
        self.phase = Phase::Done;
        Ok(Step::Negotiated)
    }

    /// Refuse the connection for `reason` (a timeout, a duplicate connection): tell the peer in
    /// the current phase's form. Nothing happens once negotiation has failed (the peer has been
    /// told) or is done (banana's own errors apply).
    pub fn refuse(&mut self, reason: &str) {
        if self.failure.is_none() && self.phase != Phase::Done {
            self.fail(Failure::Refused(reason.to_owned()));
        }
    }

    /// Queue TLS's close_notify (once the upgrade has started TLS).
    pub fn close(&mut self) {
        if self.upgraded {
            if let Some(tls) = &mut self.tls {
                tls.close();
            }
        }
    }

    /// Run `f` on all the bytes to send now (possibly none), then forget them.
    pub fn take_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let mut out = std::mem::take(&mut self.plaintext);
        if self.upgraded {
            if let Some(tls) = &mut self.tls {
                tls.take_with(|ciphertext| out.extend_from_slice(ciphertext));
            }
        }
        f(&out)
    }

    /// All the bytes to send now (possibly none).
    pub fn take(&mut self) -> Vec<u8> {
        self.take_with(<[u8]>::to_vec)
    }

    /// Once [`Step::Negotiated`] and after [`Self::take`]: the TLS session for banana (holding
    /// the decision block if it has not been taken), and the plaintext that followed the last
    /// block. None before that, or a second time.
    pub fn finish(&mut self) -> Option<(TlsSession, Vec<u8>)> {
        if self.phase != Phase::Done {
            return None;
        }
        let tls = self.tls.take()?;
        Some((tls, self.reader.take_rest()))
    }

    fn tls_mut(&mut self) -> &mut TlsSession {
        self.tls.as_mut().expect("the TLS session is only given away when negotiation is done")
    }

    fn fail(&mut self, failure: Failure) {
        if let Failure::Refused(reason) = &failure {
            match self.phase {
                Phase::Upgrade if self.target.is_none() => self.plaintext.extend(refusal_reply(reason)),
                // A client has no way to tell a server that refused or garbled the upgrade.
                Phase::Upgrade | Phase::Done | Phase::Failed => {}
                // A session that cannot take the block is failing anyway; its alert goes instead.
                _ => drop(self.tls_mut().write(&error_block(reason))),
            }
        }
        self.phase = Phase::Failed;
        self.failure = Some(failure);
    }

    fn advance(&mut self, data: &[u8]) -> Result<Step, Failure> {
        if self.upgraded {
            return self.secure(data);
        }
        self.reader.push(data);
        let Some(header) = self.reader.next_header()? else {
            return Ok(Step::Pending);
        };
        match &self.target {
            Some(_) => check_upgrade_reply(&header)?,
            None => {
                let wanted = parse_request(&header)?;
                if wanted != self.tub_id {
                    return refused(format!("unknown TubID {wanted}"));
                }
                self.plaintext.extend_from_slice(UPGRADE_REPLY);
            }
        }
        self.phase = Phase::Hello;
        self.upgraded = true;
        let hello = self.hello.encode();
        self.tls_mut().write(&hello).map_err(Failure::Tls)?;
        // What followed the upgrade header is the peer's first TLS bytes.
        let rest = self.reader.take_rest();
        self.secure(&rest)
    }

    /// Ciphertext in: the blocks it completes.
    fn secure(&mut self, ciphertext: &[u8]) -> Result<Step, Failure> {
        let mut plaintext = Vec::new();
        self.tls_mut().feed(ciphertext, &mut plaintext).map_err(Failure::Tls)?;
        self.reader.push(&plaintext);
        loop {
            match self.phase {
                Phase::Hello => {
                    let Some(header) = self.reader.next_header()? else {
                        return Ok(Step::Pending);
                    };
                    if self.hello_received(&decode_block(&header)?)? {
                        self.phase = Phase::Deciding;
                        return Ok(Step::Decide);
                    }
                    self.phase = Phase::Decision;
                }
                Phase::Decision => {
                    let Some(header) = self.reader.next_header()? else {
                        return Ok(Step::Pending);
                    };
                    self.outcome = Some(accept_decision(&decode_block(&header)?)?);
                    self.phase = Phase::Done;
                    return Ok(Step::Negotiated);
                }
                // Kept for the Tub's decision, or for banana.
                Phase::Deciding | Phase::Done | Phase::Upgrade | Phase::Failed => return Ok(Step::Pending),
            }
        }
    }

    /// Check the peer's hello against its certificate and what we dialled; whether we are the
    /// master (whose decision is then awaited).
    fn hello_received(&mut self, block: &Block) -> Result<bool, Failure> {
        let theirs = Hello::parse(block, &self.hello.extensions)?;
        let Some(certified) = self.tls_mut().peer_tub_id() else {
            return refused("you must use a certificate to claim a TubID");
        };
        if certified != theirs.tub_id {
            return refused(format!(
                "TubID mismatch: the peer claims {} but its certificate is {certified}",
                theirs.tub_id
            ));
        }
        if let Some(target) = &self.target {
            if &theirs.tub_id != target {
                return refused(format!("connected to the wrong Tub: wanted {target}, reached {}", theirs.tub_id));
            }
        }
        if theirs.tub_id == self.tub_id {
            return refused("a Tub cannot connect to itself over the network");
        }
        let master = self.tub_id > theirs.tub_id;
        if master {
            // Checked before the Tub decides, so a connection refused here costs it no seqnum.
            common_table(&self.hello, &theirs)?;
        }
        self.peer = Some(theirs);
        Ok(master)
    }
}

/// The vocabulary table the master chooses for `mine` and `theirs`.
fn common_table(mine: &Hello, theirs: &Hello) -> Result<i64, Failure> {
    let low = mine.versions.0.max(theirs.versions.0);
    let high = mine.versions.1.min(theirs.versions.1);
    if low > high || high != BANANA_VERSION {
        let (ours, other) = (mine.versions, theirs.versions);
        return refused(format!("no banana version in common: ours {ours:?}, theirs {other:?}"));
    }
    let table = mine.vocab_tables.1.min(theirs.vocab_tables.1);
    if table < mine.vocab_tables.0.max(theirs.vocab_tables.0) {
        return refused("no vocabulary table in common");
    }
    Ok(table)
}

/// The non-master's check of the master's decision.
fn accept_decision(block: &Block) -> Result<Outcome, Failure> {
    match block.get("banana-decision-version") {
        Some(version) if *version == BANANA_VERSION.to_string() => {}
        other => {
            let shown = other.map_or_else(|| "None".to_owned(), |v| python_repr(v));
            return refused(format!("the peer decided on banana version {shown}"));
        }
    }
    let table = block.get("initial-vocab-table-index").map_or("", String::as_str);
    let (index, hash4) = table.split_once(' ').unwrap_or((table, ""));
    let index = int(index, "initial-vocab-table-index")?;
    if !(VOCAB_TABLES.0..=VOCAB_TABLES.1).contains(&index) {
        return refused(format!("the peer chose unknown vocabulary table {index}"));
    }
    if index > 0 && hash4 != vocab_hash4(index) {
        return refused(format!("the peer's vocabulary table {index} differs from ours (hash {hash4})"));
    }
    let connection = block.get("current-connection").map_or("", String::as_str);
    let (incarnation, seqnum) = connection.split_once(' ').unwrap_or((connection, ""));
    let digits = !seqnum.is_empty() && seqnum.bytes().all(|b| b.is_ascii_digit());
    let seqnum = if digits { seqnum.parse().unwrap_or(0) } else { 0 };
    let master_connection = (!incarnation.is_empty()).then(|| (incarnation.to_owned(), seqnum));
    Ok(Outcome { seqnum, master_connection })
}

/// The TubID a client's upgrade request asks for; refusals say what the client is told.
fn parse_request(header: &[u8]) -> Result<String, Failure> {
    let first = first_line(header);
    let words: Vec<&[u8]> = first.split(|b| WHITESPACE.contains(b)).filter(|w| !w.is_empty()).collect();
    let path = match words[..] {
        [_, path, _] if first.starts_with(b"GET ") && path.starts_with(b"/id/") => &path[4..],
        _ => return refused("internal server error, see logs"),
    };
    if path.is_empty() {
        return refused("secure Tubs require encryption");
    }
    // Each byte that is not ASCII shows as U+FFFD in the refusal.
    Ok(path.iter().map(|&b| if b.is_ascii() { char::from(b) } else { char::REPLACEMENT_CHARACTER }).collect())
}

/// Accept the server's `101` reply; a refusal carries the server's reason.
fn check_upgrade_reply(header: &[u8]) -> Result<(), Failure> {
    let first = first_line(header);
    let mut words = first.split(|b| WHITESPACE.contains(b)).filter(|w| !w.is_empty());
    if words.nth(1) != Some(b"101") {
        let text = String::from_utf8_lossy(first);
        let reason = match text.split_once(": ") {
            Some((_, reason)) if text.starts_with("HTTP/1.1 500") => reason,
            _ => &text,
        };
        return refused(format!("the server refused the connection: {reason}"));
    }
    if !header.windows(16).any(|w| w == b"Upgrade: TLS/1.0") {
        return refused("the server's reply does not upgrade to TLS");
    }
    Ok(())
}

/// What Python's `bytes.split()` and `bytes.strip()` take for whitespace.
const WHITESPACE: &[u8] = b" \t\n\r\x0b\x0c";

fn first_line(header: &[u8]) -> &[u8] {
    header.windows(2).position(|w| w == b"\r\n").map_or(header, |end| &header[..end])
}

/// A block's `key: value` lines (keys lowercased; a repeated key keeps its last value).
type Block = BTreeMap<String, String>;

/// Parse a block (without its final empty line); the peer's error block is a refusal.
fn decode_block(header: &[u8]) -> Result<Block, Failure> {
    let mut block = Block::new();
    for line in crlf_lines(header) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            let shown = &line[..line.len().min(80)];
            return refused(format!("malformed negotiation line {}", python_bytes_repr(shown)));
        };
        let value = &line[colon + 1..];
        let start = value.iter().position(|b| !WHITESPACE.contains(b)).unwrap_or(value.len());
        let key = String::from_utf8_lossy(&line[..colon]).to_lowercase();
        block.insert(key, String::from_utf8_lossy(&value[start..]).into_owned());
    }
    if let Some(error) = block.get("error") {
        return refused(format!("remote negotiation error: {error}"));
    }
    Ok(block)
}

/// The lines of `header`, split at `\r\n` only (a lone `\r` or `\n` stays in its line).
fn crlf_lines(header: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at + 1 < header.len() {
        if &header[at..at + 2] == b"\r\n" {
            lines.push(&header[start..at]);
            at += 2;
            start = at;
        } else {
            at += 1;
        }
    }
    lines.push(&header[start..]);
    lines
}

fn pair(text: &str) -> Result<(i64, i64), Failure> {
    let (low, high) = text.split_once(' ').unwrap_or((text, ""));
    Ok((int(low, text)?, int(high, text)?))
}

fn int(text: &str, what: &str) -> Result<i64, Failure> {
    match text.trim().parse() {
        Ok(value) => Ok(value),
        Err(_) => refused(format!("malformed negotiation value {}", python_repr(what))),
    }
}

/// Text quoted as Python's `repr` of a `str` shows it (as the messages foolscap users know do).
fn python_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut out = String::from(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => out.extend(['\\', c]),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Bytes quoted as Python's `repr` of `bytes` shows them.
fn python_bytes_repr(bytes: &[u8]) -> String {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') { b'"' } else { b'\'' };
    let mut out = String::from("b");
    out.push(char::from(quote));
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b if b == quote => out.extend(['\\', char::from(b)]),
            0x20..=0x7e => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(char::from(quote));
    out
}

/// Gathers one phase's header: the bytes up to the first empty line. What follows stays
/// buffered for the next phase.
#[derive(Debug, Default)]
struct HeaderReader {
    buffer: Vec<u8>,
    /// How far the buffer has been searched for the end of a header.
    searched: usize,
}

impl HeaderReader {
    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next header (without its final empty line), once complete.
    fn next_header(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        let from = self.searched.saturating_sub(3);
        let end = self.buffer[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at);
        let Some(end) = end else {
            self.searched = self.buffer.len();
            if self.buffer.len() > HEADER_LIMIT {
                return refused(format!("negotiation header longer than {HEADER_LIMIT} bytes"));
            }
            return Ok(None);
        };
        if end > HEADER_LIMIT {
            return refused(format!("negotiation header longer than {HEADER_LIMIT} bytes"));
        }
        let header = self.buffer[..end].to_vec();
        self.buffer.drain(..end + 4);
        self.searched = 0;
        Ok(Some(header))
    }

    fn take_rest(&mut self) -> Vec<u8> {
        self.searched = 0;
        std::mem::take(&mut self.buffer)
    }
}
