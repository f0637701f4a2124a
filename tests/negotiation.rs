//! foolscap negotiation (`_core::foolscap::negotiate`) driven in memory: two negotiations
//! against each other, and each role against scripted peers (plain bytes, and a bare TLS session
//! writing blocks by hand), with the bytes fed whole, one at a time and split at every point.
//! The expected bytes are stock foolscap 24.9's (`foolscap/negotiate.py`).

use _core::foolscap::negotiate::{
    error_block, refusal_reply, upgrade_request, vocab_hash4, Failure, Negotiation, Outcome, Phase, Setup, Step,
    UPGRADE_REPLY,
};
use _core::tls::{Identity, TlsSession};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The checked-in identities (`tests/vectors/tls/`), by TubID order: `MASTER` > `SLAVE` > ...
const MASTER: &str = "ec_p256.pem"; // szf2c7rays5xyts3y5xexib5hjb55zim
const SLAVE: &str = "ed25519.pem"; // 5if6pvn7chl25pt2zuy2xclfuhfgfcqc
const THIRD: &str = "foolscap_v1_other.pem"; // n44tetnvk6mtf6uzic7oo2wwdqb2doj3
const MASTER_INCARNATION: &str = "c267f56a414a6c65";
const SLAVE_INCARNATION: &str = "32134df1ff561a08";
const HOST: &str = "127.0.0.1";

fn identity(file: &str) -> Identity {
    let path = format!("{}/tests/vectors/tls/{file}", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let certificate = CertificateDer::from_pem_slice(&pem).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&pem).unwrap();
    Identity::from_der(&certificate, key.secret_der()).unwrap()
}

fn tub_id(file: &str) -> String {
    identity(file).tub_id()
}

fn setup(file: &str, incarnation: &str) -> Setup {
    Setup { identity: identity(file), incarnation: incarnation.into(), extensions: vec!["cacheable".into()] }
}

fn refused<T: std::fmt::Debug>(result: Result<T, Failure>) -> String {
    match result {
        Err(Failure::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Each way of cutting a stream into chunks the tests feed.
fn cuts(len: usize) -> Vec<Vec<std::ops::Range<usize>>> {
    let mut all = vec![vec![0..len], (0..len).map(|i| i..i + 1).collect()];
    all.extend((1..len).map(|at| vec![0..at, at..len]));
    all
}

/// Feed `data` in the chunks of `cut`; the last step, or the first failure.
fn feed(negotiation: &mut Negotiation, data: &[u8], cut: &[std::ops::Range<usize>]) -> Result<Step, Failure> {
    let mut step = Step::Pending;
    for range in cut {
        step = negotiation.receive(&data[range.clone()])?;
    }
    Ok(step)
}

// ------------------------------------------------------------------ the bytes

#[test]
fn plaintext_phase_and_block_bytes_are_foolscaps() {
    assert_eq!(
        upgrade_request("p3n3laqzc6zqyn7t6mxkckhqjq4whutl", HOST),
        b"GET /id/p3n3laqzc6zqyn7t6mxkckhqjq4whutl HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Upgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n"
    );
    assert_eq!(
        UPGRADE_REPLY,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, PB/1.0\r\nConnection: Upgrade\r\n\r\n"
    );
    assert_eq!(
        refusal_reply("unknown TubID\r\naaaa"),
        b"HTTP/1.1 500 Internal Server Error: unknown TubID  aaaa\r\n\r\n"
    );
    assert_eq!(
        error_block("Duplicate\nconnection"),
        b"banana-decision-version: 1\r\nerror: Duplicate connection\r\n\r\n"
    );
    // foolscap.vocab.hashVocabTable(0) and (1).
    assert_eq!((vocab_hash4(0), vocab_hash4(1)), ("da39".to_owned(), "bb33".to_owned()));
}

// ------------------------------------------------------------------ two negotiations

/// Move bytes both ways (in chunks of at most `chunk`) until neither side has any; the master's
/// Tub accepts the connection as number 7.
fn converse(client: &mut Negotiation, server: &mut Negotiation, chunk: usize) -> Result<(), (bool, Failure)> {
    fn deliver(to: &mut Negotiation, data: &[u8], chunk: usize) -> Result<(), Failure> {
        for piece in data.chunks(chunk) {
            if to.receive(piece)? == Step::Decide {
                to.decide(7)?;
            }
        }
        Ok(())
    }
    loop {
        let (to_server, to_client) = (client.take(), server.take());
        if to_server.is_empty() && to_client.is_empty() {
            return Ok(());
        }
        deliver(server, &to_server, chunk).map_err(|e| (true, e))?;
        deliver(client, &to_client, chunk).map_err(|e| (false, e))?;
    }
}

fn pair(client_file: &str, server_file: &str, last: Option<(String, i64)>) -> (Negotiation, Negotiation) {
    let client =
        Negotiation::client(&setup(client_file, "c1c1c1c1c1c1c1c1"), &tub_id(server_file), HOST, last).unwrap();
    let server = Negotiation::server(&setup(server_file, "5e5e5e5e5e5e5e5e")).unwrap();
    (client, server)
}

/// Banana bytes go both ways through the sessions `finish` hands over.
fn banana_flows(client: &mut Negotiation, server: &mut Negotiation) {
    let (mut client_tls, client_rest) = client.finish().unwrap();
    let (mut server_tls, server_rest) = server.finish().unwrap();
    assert!(client_rest.is_empty() && server_rest.is_empty());
    assert!(client.finish().is_none());
    client_tls.write(b"\x01\x80call").unwrap();
    server_tls.write(b"\x01\x80answer").unwrap();
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    server_tls.feed(&client_tls.take(), &mut at_server).unwrap();
    client_tls.feed(&server_tls.take(), &mut at_client).unwrap();
    assert_eq!((&at_server[..], &at_client[..]), (&b"\x01\x80call"[..], &b"\x01\x80answer"[..]));
}

#[test]
fn client_and_server_negotiate_whole_and_a_byte_at_a_time() {
    // Either role may be the master: the greater TubID decides.
    for (client_file, server_file) in [(SLAVE, MASTER), (MASTER, SLAVE)] {
        for chunk in [usize::MAX, 1] {
            let (mut client, mut server) = pair(client_file, server_file, None);
            assert_eq!(client.phase(), Phase::Upgrade);
            converse(&mut client, &mut server, chunk).unwrap();
            assert_eq!((client.phase(), server.phase()), (Phase::Done, Phase::Done));
            let (master, slave, master_incarnation) = match client_file {
                MASTER => (&client, &server, "c1c1c1c1c1c1c1c1"),
                _ => (&server, &client, "5e5e5e5e5e5e5e5e"),
            };
            assert_eq!(master.outcome(), Some(&Outcome { seqnum: 7, master_connection: None }));
            let master_connection = Some((master_incarnation.to_owned(), 7));
            assert_eq!(slave.outcome(), Some(&Outcome { seqnum: 7, master_connection }));
            let seen_by_server = server.peer().unwrap();
            assert_eq!(seen_by_server.tub_id, tub_id(client_file));
            assert_eq!(seen_by_server.incarnation, "c1c1c1c1c1c1c1c1");
            assert!(seen_by_server.client && seen_by_server.last_connection.is_none());
            assert_eq!(seen_by_server.extensions, ["cacheable"]);
            let seen_by_client = client.peer().unwrap();
            assert_eq!((&seen_by_client.tub_id, seen_by_client.client), (&tub_id(server_file), false));
            banana_flows(&mut client, &mut server);
        }
    }
}

#[test]
fn the_client_says_its_last_connection() {
    let last = Some(("5e5e5e5e5e5e5e5e".to_owned(), 3));
    let (mut client, mut server) = pair(SLAVE, MASTER, last.clone());
    converse(&mut client, &mut server, usize::MAX).unwrap();
    assert_eq!(server.peer().unwrap().last_connection, last);
}

#[test]
fn the_master_may_refuse_a_duplicate() {
    let (mut client, mut server) = pair(SLAVE, MASTER, None);
    let mut step = Step::Pending;
    while step != Step::Decide {
        step = server.receive(&client.take()).unwrap();
        client.receive(&server.take()).unwrap();
    }
    assert_eq!(server.phase(), Phase::Deciding);
    server.refuse("Duplicate connection");
    assert_eq!(server.phase(), Phase::Failed);
    assert_eq!(refused(client.receive(&server.take())), "remote negotiation error: Duplicate connection");
    assert_eq!(refused(server.decide(1)), "Duplicate connection");
    // Told once: nothing more is sent for a later refusal.
    server.refuse("timed out");
    assert!(server.take().is_empty());
}

#[test]
fn decide_out_of_turn_changes_nothing() {
    let (mut client, _) = pair(SLAVE, MASTER, None);
    assert_eq!(refused(client.decide(1)), "no decision is awaited in the upgrade phase");
    assert_eq!(client.phase(), Phase::Upgrade);
}

// ------------------------------------------------------------------ scripted peers

/// A peer that speaks TLS but writes its negotiation blocks by hand.
struct Scripted {
    tls: TlsSession,
    heard: Vec<u8>,
}

impl Scripted {
    /// A client (presenting `identity`, if any) that asked `server` for `target` and was let in.
    fn client_of(server: &mut Negotiation, identity_file: Option<&str>, target: &str) -> Scripted {
        assert_eq!(server.receive(&upgrade_request(target, HOST)), Ok(Step::Pending));
        // The server's TLS waits for the ClientHello.
        assert_eq!(server.take(), UPGRADE_REPLY);
        let identity = identity_file.map(identity);
        Scripted { tls: TlsSession::client(identity.as_ref()).unwrap(), heard: Vec::new() }
    }

    /// A server (as `identity`) that answered `client`'s request with the upgrade.
    fn server_of(client: &mut Negotiation, identity_file: &str) -> Scripted {
        assert!(client.take().starts_with(b"GET /id/"));
        assert_eq!(client.receive(UPGRADE_REPLY), Ok(Step::Pending));
        Scripted { tls: TlsSession::server(&identity(identity_file)).unwrap(), heard: Vec::new() }
    }

    /// Send `plain` in one TLS record.
    fn say(&mut self, plain: &[u8]) -> &mut Self {
        self.tls.write(plain).unwrap();
        self
    }

    /// Move bytes both ways until neither side has any: what `ours` got to, or its failure
    /// (whose last bytes reach us too).
    fn talk(&mut self, ours: &mut Negotiation) -> Result<Step, Failure> {
        let mut step = Step::Pending;
        loop {
            let to_peer = ours.take();
            self.tls.feed(&to_peer, &mut self.heard).unwrap();
            let to_us = self.tls.take();
            if to_peer.is_empty() && to_us.is_empty() {
                return Ok(step);
            }
            if !to_us.is_empty() {
                match ours.receive(&to_us) {
                    Ok(next) => step = next,
                    Err(failure) => {
                        let last = ours.take();
                        self.tls.feed(&last, &mut self.heard).unwrap();
                        return Err(failure);
                    }
                }
            }
        }
    }

    /// The blocks heard, each with its final empty line.
    fn blocks(&self) -> Vec<String> {
        let text = String::from_utf8(self.heard.clone()).unwrap();
        text.split_inclusive("\r\n\r\n").map(str::to_owned).collect()
    }
}

/// A hello as stock foolscap writes it (no pbfast extensions).
fn stock_hello(file: &str, incarnation: &str, client: bool) -> String {
    stock_hello_claiming(&tub_id(file), incarnation, client)
}

fn stock_hello_claiming(tub_id: &str, incarnation: &str, client: bool) -> String {
    let last = if client { "last-connection: none 0\r\n" } else { "" };
    format!(
        "banana-negotiation-range: 3 3\r\ninitial-vocab-table-range: 0 1\r\n{last}\
         my-incarnation: {incarnation}\r\nmy-tub-id: {tub_id}\r\n\r\n"
    )
}

#[test]
fn the_server_s_hello_and_decision_are_foolscaps() {
    let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
    let mut peer = Scripted::client_of(&mut server, Some(SLAVE), &tub_id(MASTER));
    assert_eq!(peer.talk(&mut server), Ok(Step::Pending));
    assert_eq!(
        peer.blocks(),
        [format!(
            "banana-negotiation-range: 3 3\r\ninitial-vocab-table-range: 0 1\r\n\
             my-incarnation: {MASTER_INCARNATION}\r\nmy-tub-id: {}\r\npbfast-extensions: cacheable\r\n\r\n",
            tub_id(MASTER)
        )]
    );
    // The client's hello, one byte per TLS record.
    for byte in stock_hello(SLAVE, SLAVE_INCARNATION, true).bytes() {
        peer.say(&[byte]);
    }
    assert_eq!(peer.talk(&mut server), Ok(Step::Decide));
    let theirs = server.peer().unwrap();
    assert_eq!((theirs.incarnation.as_str(), theirs.client), (SLAVE_INCARNATION, true));
    assert!(theirs.extensions.is_empty(), "a stock Tub announces no extensions");
    assert_eq!(server.decide(1), Ok(Step::Negotiated));
    assert_eq!(peer.talk(&mut server), Ok(Step::Pending));
    assert_eq!(
        peer.blocks()[1],
        format!(
            "banana-decision-version: 3\r\ncurrent-connection: {MASTER_INCARNATION} 1\r\n\
             initial-vocab-table-index: 1 bb33\r\n\r\n"
        )
    );
}

#[test]
fn the_client_s_hello_is_foolscaps() {
    let last = Some((MASTER_INCARNATION.to_owned(), 3));
    let mut client = Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), &tub_id(MASTER), HOST, last).unwrap();
    let mut peer = Scripted::server_of(&mut client, MASTER);
    assert_eq!(peer.talk(&mut client), Ok(Step::Pending));
    assert_eq!(
        peer.blocks(),
        [format!(
            "banana-negotiation-range: 3 3\r\ninitial-vocab-table-range: 0 1\r\n\
             last-connection: {MASTER_INCARNATION} 3\r\nmy-incarnation: {SLAVE_INCARNATION}\r\n\
             my-tub-id: {}\r\npbfast-extensions: cacheable\r\n\r\n",
            tub_id(SLAVE)
        )]
    );
}

/// The decision a stock master sends.
fn decision(incarnation: &str, seqnum: i64) -> String {
    format!(
        "banana-decision-version: 3\r\ncurrent-connection: {incarnation} {seqnum}\r\n\
         initial-vocab-table-index: 1 bb33\r\n\r\n"
    )
}

#[test]
fn the_decision_and_banana_split_at_every_point() {
    // The master's hello, decision and first banana bytes, cut into two TLS records anywhere:
    // the slave finishes at the decision and hands the banana bytes on.
    let banana = b"\x02\x80\x04\x82call\x81\x81";
    let mut stream = stock_hello(MASTER, MASTER_INCARNATION, false).into_bytes();
    stream.extend(decision(MASTER_INCARNATION, 4).as_bytes());
    stream.extend(banana);
    for at in 0..=stream.len() {
        let mut client = Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), &tub_id(MASTER), HOST, None).unwrap();
        let mut peer = Scripted::server_of(&mut client, MASTER);
        assert_eq!(peer.talk(&mut client), Ok(Step::Pending));
        for record in [&stream[..at], &stream[at..]] {
            if !record.is_empty() {
                peer.say(record);
            }
        }
        assert_eq!(peer.talk(&mut client), Ok(Step::Negotiated), "cut at {at}");
        let master_connection = Some((MASTER_INCARNATION.to_owned(), 4));
        assert_eq!(client.outcome(), Some(&Outcome { seqnum: 4, master_connection }));
        let (_, rest) = client.finish().unwrap();
        assert_eq!(rest, banana, "cut at {at}");
    }
}

// ------------------------------------------------------------------ the plaintext phase

#[test]
fn the_server_reads_the_request_and_client_hello_cut_anywhere() {
    let mut stream = upgrade_request(&tub_id(MASTER), HOST);
    stream.extend(TlsSession::client(Some(&identity(SLAVE))).unwrap().take());
    for cut in cuts(stream.len()) {
        let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
        assert_eq!(feed(&mut server, &stream, &cut), Ok(Step::Pending));
        assert_eq!(server.phase(), Phase::Hello);
        let out = server.take();
        // The reply, then the server's first handshake record.
        assert_eq!(&out[..UPGRADE_REPLY.len()], UPGRADE_REPLY);
        assert_eq!(&out[UPGRADE_REPLY.len()..][..2], b"\x16\x03");
    }
}

#[test]
fn the_client_reads_the_reply_cut_anywhere() {
    for cut in cuts(UPGRADE_REPLY.len()) {
        let mut client = Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), &tub_id(MASTER), HOST, None).unwrap();
        assert_eq!(client.take(), upgrade_request(&tub_id(MASTER), HOST));
        // Nothing but the request until the server agrees.
        assert!(client.take().is_empty());
        assert_eq!(feed(&mut client, UPGRADE_REPLY, &cut), Ok(Step::Pending));
        assert_eq!(client.phase(), Phase::Hello);
        assert_eq!(&client.take()[..2], b"\x16\x03", "the ClientHello follows");
    }
}

#[test]
fn the_server_refuses_bad_requests_in_plaintext() {
    let other = tub_id(THIRD);
    let long = [&b"GET /id/"[..], &[b'a'; 5000]].concat();
    let long_ended = [&b"GET /id/"[..], &[b'a'; 4089], b"\r\n\r\n"].concat();
    let cases: Vec<(Vec<u8>, String)> = vec![
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), "internal server error, see logs".into()),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "internal server error, see logs".into()),
        (b"POST /id/x HTTP/1.1\r\n\r\n".to_vec(), "internal server error, see logs".into()),
        (b"GET /id/x\r\n\r\n".to_vec(), "internal server error, see logs".into()),
        (b"GET /id/ HTTP/1.1\r\n\r\n".to_vec(), "secure Tubs require encryption".into()),
        (upgrade_request(&other, HOST), format!("unknown TubID {other}")),
        (b"GET /id/\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), "unknown TubID \u{fffd}\u{fffd}".into()),
        (long, "negotiation header longer than 4096 bytes".into()),
        (long_ended, "negotiation header longer than 4096 bytes".into()),
    ];
    for (request, reason) in cases {
        let mut every = cuts(request.len());
        if request.len() > 200 {
            every.truncate(2); // whole and a byte at a time
        }
        for cut in every {
            let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
            assert_eq!(refused(feed(&mut server, &request, &cut)), reason);
            assert_eq!(server.phase(), Phase::Failed);
            assert_eq!(server.take(), refusal_reply(&reason));
            // The same failure again, and nothing more to send.
            assert_eq!(refused(server.receive(b"more")), reason);
            server.close();
            assert!(server.take().is_empty());
        }
    }
}

#[test]
fn the_client_reads_refusals_and_odd_replies() {
    let cases = [
        (refusal_reply("unknown TubID abc"), "the server refused the connection: unknown TubID abc"),
        (b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec(), "the server refused the connection: HTTP/1.1 404 Not Found"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), "the server refused the connection: SSH-2.0-OpenSSH_9.6"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PB/1.0\r\n\r\n".to_vec(),
            "the server's reply does not upgrade to TLS",
        ),
    ];
    for (reply, reason) in cases {
        for cut in cuts(reply.len()) {
            let mut client =
                Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), &tub_id(MASTER), HOST, None).unwrap();
            client.take();
            assert_eq!(refused(feed(&mut client, &reply, &cut)), reason);
            // A client cannot tell a server that did not upgrade.
            assert!(client.take().is_empty());
        }
    }
}

#[test]
fn refusals_before_tls_are_told_only_by_the_server() {
    let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
    server.receive(b"GET /id/").unwrap();
    server.refuse("negotiation timed out");
    assert_eq!(server.take(), refusal_reply("negotiation timed out"));
    let mut client = Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), &tub_id(MASTER), HOST, None).unwrap();
    client.take();
    client.refuse("negotiation timed out");
    client.close();
    assert!(client.take().is_empty());
}

// ------------------------------------------------------------------ refusals inside TLS

/// The server's refusal of a client (as `client_file`, or with no certificate) saying `hello`.
fn server_refuses(client_file: Option<&str>, hello: &[u8]) -> String {
    let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
    let mut peer = Scripted::client_of(&mut server, client_file, &tub_id(MASTER));
    assert_eq!(peer.talk(&mut server), Ok(Step::Pending));
    let reason = refused(peer.say(hello).talk(&mut server));
    assert_eq!(server.phase(), Phase::Failed);
    assert_eq!(peer.blocks().last().unwrap().as_bytes(), error_block(&reason));
    reason
}

#[test]
fn the_server_refuses_bad_hellos_with_an_error_block() {
    let slave = stock_hello(SLAVE, SLAVE_INCARNATION, true);
    let third = tub_id(THIRD);
    let cases = [
        (
            Some(SLAVE),
            "no colon on this line\r\n\r\n".to_owned(),
            "malformed negotiation line b'no colon on this line'".to_owned(),
        ),
        (
            Some(SLAVE),
            format!("x-padding: {}\r\n", "y".repeat(5000)),
            "negotiation header longer than 4096 bytes".into(),
        ),
        (Some(SLAVE), "banana-negotiation-range: 3 3\r\n\r\n".into(), "the peer's hello has no my-tub-id".into()),
        (Some(SLAVE), "my-tub-id: x\r\n\r\n".into(), "the peer's hello has no banana-negotiation-range".into()),
        (Some(SLAVE), slave.replace("range: 3 3", "range: 3 x"), "malformed negotiation value '3 x'".into()),
        (Some(SLAVE), slave.replace("none 0", "abc x"), "malformed negotiation value 'last-connection'".into()),
        (
            Some(SLAVE),
            stock_hello_claiming(&third, SLAVE_INCARNATION, true),
            format!("TubID mismatch: the peer claims {third} but its certificate is {}", tub_id(SLAVE)),
        ),
        (None, slave.clone(), "you must use a certificate to claim a TubID".into()),
        (
            Some(MASTER),
            stock_hello(MASTER, SLAVE_INCARNATION, true),
            "a Tub cannot connect to itself over the network".into(),
        ),
        (
            Some(SLAVE),
            slave.replace("range: 3 3", "range: 4 5"),
            "no banana version in common: ours (3, 3), theirs (4, 5)".into(),
        ),
        (Some(SLAVE), slave.replace("range: 0 1", "range: 2 5"), "no vocabulary table in common".into()),
        (
            Some(SLAVE),
            "banana-decision-version: 1\r\nerror: go away\r\n\r\n".into(),
            "remote negotiation error: go away".into(),
        ),
    ];
    for (client_file, hello, reason) in cases {
        assert_eq!(server_refuses(client_file, hello.as_bytes()), reason, "for {hello:?}");
    }
}

/// Our client (a slave, `SLAVE`, dialling `target`) against a scripted server (`server_file`)
/// that says `blocks`: the refusal.
fn client_refuses(target: &str, server_file: &str, blocks: &str) -> String {
    let mut client = Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), target, HOST, None).unwrap();
    let mut peer = Scripted::server_of(&mut client, server_file);
    assert_eq!(peer.talk(&mut client), Ok(Step::Pending));
    let reason = refused(peer.say(blocks.as_bytes()).talk(&mut client));
    assert_eq!(peer.blocks().last().unwrap().as_bytes(), error_block(&reason));
    reason
}

#[test]
fn the_client_refuses_bad_servers_and_decisions() {
    let (master, third) = (tub_id(MASTER), tub_id(THIRD));
    let hello = stock_hello(MASTER, MASTER_INCARNATION, false);
    assert_eq!(
        client_refuses(&third, MASTER, &hello),
        format!("connected to the wrong Tub: wanted {third}, reached {master}")
    );
    assert_eq!(
        client_refuses(&third, MASTER, &stock_hello_claiming(&third, MASTER_INCARNATION, false)),
        format!("TubID mismatch: the peer claims {third} but its certificate is {master}")
    );
    let good = decision(MASTER_INCARNATION, 1);
    for (bad, reason) in [
        (good.replace("version: 3", "version: 4"), "the peer decided on banana version '4'"),
        (good.replace("banana-decision-version: 3\r\n", ""), "the peer decided on banana version None"),
        (good.replace("1 bb33", "1 0000"), "the peer's vocabulary table 1 differs from ours (hash 0000)"),
        (good.replace("1 bb33", "7 abcd"), "the peer chose unknown vocabulary table 7"),
        (good.replace("1 bb33", "x"), "malformed negotiation value 'initial-vocab-table-index'"),
        ("error: Duplicate connection\r\n\r\n".to_owned(), "remote negotiation error: Duplicate connection"),
    ] {
        assert_eq!(client_refuses(&master, MASTER, &format!("{hello}{bad}")), reason);
    }
}

#[test]
fn a_decision_without_a_seqnum_still_negotiates() {
    // foolscap reads a missing or odd current-connection as seqnum 0 and no master connection.
    let mut client = Negotiation::client(&setup(SLAVE, SLAVE_INCARNATION), &tub_id(MASTER), HOST, None).unwrap();
    let mut peer = Scripted::server_of(&mut client, MASTER);
    let hello = stock_hello(MASTER, MASTER_INCARNATION, false);
    let odd = decision(MASTER_INCARNATION, 1).replace(&format!("{MASTER_INCARNATION} 1"), "abc x");
    assert_eq!(peer.say(format!("{hello}{odd}").as_bytes()).talk(&mut client), Ok(Step::Negotiated));
    assert_eq!(client.outcome(), Some(&Outcome { seqnum: 0, master_connection: Some(("abc".into(), 0)) }));
}

#[test]
fn a_refusal_inside_tls_is_an_error_block() {
    // A timeout while waiting for the peer's hello.
    let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
    let mut peer = Scripted::client_of(&mut server, Some(SLAVE), &tub_id(MASTER));
    peer.talk(&mut server).unwrap();
    server.refuse("negotiation timed out");
    server.close();
    peer.talk(&mut server).unwrap();
    assert_eq!(peer.blocks().last().unwrap().as_bytes(), error_block("negotiation timed out"));
    assert!(peer.tls.peer_closed(), "close() sends close_notify");
}

#[test]
fn tls_failures_leave_only_the_alert() {
    let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
    let mut stream = upgrade_request(&tub_id(MASTER), HOST);
    stream.extend(b"this is not a TLS record at all\r\n\r\n");
    match server.receive(&stream) {
        Err(Failure::Tls(_)) => {}
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(server.phase(), Phase::Failed);
    server.refuse("told nothing more");
    let out = server.take();
    assert_eq!(&out[..UPGRADE_REPLY.len()], UPGRADE_REPLY);
    assert_eq!(out[UPGRADE_REPLY.len()], 0x15, "then a TLS alert record");
}

#[test]
fn the_peer_s_close_notify_is_seen() {
    let mut server = Negotiation::server(&setup(MASTER, MASTER_INCARNATION)).unwrap();
    let mut peer = Scripted::client_of(&mut server, Some(SLAVE), &tub_id(MASTER));
    peer.talk(&mut server).unwrap();
    assert!(!server.peer_closed());
    peer.tls.close();
    assert_eq!(peer.talk(&mut server), Ok(Step::Pending));
    assert!(server.peer_closed());
}
