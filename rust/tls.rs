//! TLS for foolscap connections, without I/O: a [`TlsSession`] is fed the ciphertext that
//! arrived and hands back the plaintext it carried; plaintext written to it comes back out of
//! [`TlsSession::take`] as ciphertext to send. No sockets, threads or clocks.
//!
//! foolscap authenticates by hash pinning, not by certificate chains: each side presents a
//! self-signed certificate and the layer above compares the SHA-1 of its DER (the TubID) with the
//! one the peer claims. So the verifiers here accept any end-entity certificate (no issuer, expiry
//! or name checks) but still check the handshake signatures against the certificate's key, which
//! is what proves the peer holds the private key of the TubID it claims.
//!
//! Stock foolscap makes X.509 **version 1** certificates, which webpki (rustls' usual parser)
//! refuses, so the public key is taken out of the certificate by [`public_key_info`], a small DER
//! walk, and the signatures are checked with the crypto provider's algorithms directly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnectionData, Resumption, UnbufferedClientConnection};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};

use crate::tubid;

mod records;
pub use records::aes_gcm_implementation;
use records::{Kernel, Traffic};

/// Why a session could not be made or went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// Our own certificate or private key is unusable; found before any byte is sent.
    Identity(String),
    /// The TLS exchange failed (bad record, alert, failed verification) or the session was
    /// misused; the message says which. The session is dead, but an alert for the peer may
    /// still be waiting in [`TlsSession::take`].
    Session(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Identity(message) | TlsError::Session(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for TlsError {}

/// Which end of the connection a session is: the TCP initiator is the TLS client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// ring rather than aws-lc-rs: it builds without cmake or a C++ toolchain. TLS 1.3's
/// AES-128-GCM comes first (its mandatory suite, and the one most clients prefer): it seals and
/// opens bulk data about a tenth faster than AES-256-GCM. Servers follow the client's order, so a
/// stock peer's own preference still decides when it is the client.
fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let mut provider = rustls::crypto::ring::default_provider();
        let first = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
        provider.cipher_suites.sort_by_key(|suite| suite.suite() != first);
        Arc::new(provider)
    })
}

const ALL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// How much of a drained buffer's allocation to keep for the next batch: a burst of large
/// writes should not pin that much memory for the rest of the connection.
pub const KEPT_BUFFER: usize = 256 * 1024;

/// A certificate and the private key that signs for it.
#[derive(Clone)]
pub struct Identity {
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", tubid::tub_id(self.certificate_der()))
    }
}

impl Identity {
    /// A DER certificate (any X.509 version) and its private key as PKCS#8, PKCS#1 (RSA) or
    /// SEC1 (EC) DER. RSA (2048 bits or more), ECDSA P-256/P-384 and Ed25519 keys work.
    pub fn from_der(certificate: &[u8], private_key: &[u8]) -> Result<Identity, TlsError> {
        let bad = |what: String| TlsError::Identity(what);
        let info = public_key_info(certificate)
            .map_err(|why| bad(format!("the certificate is not a DER X.509 certificate: {why}")))?;
        let key_der = PrivateKeyDer::try_from(private_key.to_vec())
            .map_err(|why| bad(format!("the private key is not PKCS#8, PKCS#1 or SEC1 DER: {why}")))?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|why| bad(format!("the private key cannot be used: {why}")))?;
        // A mismatch would only show as the peer refusing our handshake signature.
        if let Some(public) = signing_key.public_key() {
            if public.as_ref() != info.der {
                return Err(bad("the private key does not belong to the certificate".into()));
            }
        }
        Ok(Identity::unchecked(certificate, signing_key))
    }

    fn unchecked(certificate: &[u8], signing_key: Arc<dyn rustls::sign::SigningKey>) -> Identity {
        let chain = vec![CertificateDer::from(certificate.to_vec())];
        Identity { key: Arc::new(CertifiedKey::new(chain, signing_key)) }
    }

    pub fn certificate_der(&self) -> &[u8] {
        self.key.cert[0].as_ref()
    }

    /// The foolscap TubID of the certificate.
    pub fn tub_id(&self) -> String {
        tubid::tub_id(self.certificate_der())
    }
}

/// One TLS connection's state: handshake, record protection and close, bytes in and out.
///
/// Driven through rustls' unbuffered API, with buffers of its own: received ciphertext is read
/// in place from one buffer however many records it holds (rustls' buffered reader takes 4 KiB
/// at a time, zero-filling and reallocating its buffer around every record), and records are
/// encrypted straight into the buffer [`Self::take_into`] hands over. Once a TLS 1.3 handshake
/// is over, records are protected here (`tls/records.rs`), rustls keeping the secrets.
pub struct TlsSession {
    conn: Conn,
    role: Role,
    /// What the handshake settled, kept when rustls hands the records over.
    negotiated: Option<Negotiated>,
    /// Received ciphertext not processed yet (from a record boundary on, once the handshake is
    /// over).
    incoming: Vec<u8>,
    io: Io,
    failure: Option<TlsError>,
    /// Tests keep some sessions on rustls' record protection, as an independent peer.
    #[cfg(test)]
    rustls_records: bool,
}

/// A session's output and where its closing stands.
#[derive(Default)]
struct Io {
    /// Ciphertext to send.
    outgoing: Vec<u8>,
    /// Plaintext written before the keys allow sending it.
    pending: Vec<u8>,
    peer_closed: bool,
    /// close() was called: nothing more may be written.
    closing: bool,
    /// Our close_notify has been encrypted.
    close_sent: bool,
}

/// The two kinds of unbuffered rustls connection, driven alike; then, after a TLS 1.3
/// handshake, the records protected here.
enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
    Traffic(Box<Traffic>),
    /// Handing the records over failed (the session failed with it).
    Lost,
}

impl Conn {
    /// rustls' state of the connection, while rustls drives it.
    fn common(&self) -> Option<&CommonState> {
        match self {
            Conn::Client(c) => Some(c),
            Conn::Server(s) => Some(s),
            Conn::Traffic(_) | Conn::Lost => None,
        }
    }
}

/// The handshake's outcome, once rustls no longer holds the connection.
struct Negotiated {
    peer_certificate: Option<Vec<u8>>,
    protocol_version: Option<&'static str>,
    cipher_suite: Option<&'static str>,
}

/// The connection kinds' `process_tls_records`.
trait Records {
    type Data;
    fn records<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn records<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn records<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// Process the ciphertext in `incoming` (decrypted in place): the application data goes to
/// `plaintext`; what the handshake (or an alert) sends, and once the keys allow `write`'s parts
/// (and what was held), then the close_notify if asked for, go to `io.outgoing`. How many bytes of
/// `incoming` are done with (the rest is to be kept, in front of what comes next), and the
/// outcome.
fn drive<C: Records>(
    conn: &mut C,
    incoming: &mut [u8],
    io: &mut Io,
    plaintext: &mut Vec<u8>,
    mut write: &[&[u8]],
) -> (usize, Result<(), rustls::Error>) {
    let mut start = 0;
    let result = loop {
        let status = conn.records(&mut incoming[start..]);
        let discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                start += discard;
                break Err(e);
            }
        };
        let mut done = false;
        let handled = match state {
            ConnectionState::ReadTraffic(mut traffic) => loop {
                match traffic.next_record() {
                    Some(Ok(record)) => plaintext.extend_from_slice(record.payload),
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                }
            },
            ConnectionState::EncodeTlsData(mut data) => encode(&mut data, &mut io.outgoing),
            ConnectionState::TransmitTlsData(mut data) => {
                // (What was encoded waits in `outgoing` for the caller to send.)
                let sent = match data.may_encrypt_app_data() {
                    Some(mut traffic) => send(&mut traffic, io, std::mem::take(&mut write)),
                    None => Ok(()),
                };
                data.done();
                sent
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                done = true;
                send(&mut traffic, io, std::mem::take(&mut write))
            }
            ConnectionState::PeerClosed => {
                io.peer_closed = true;
                Ok(())
            }
            ConnectionState::Closed => {
                io.peer_closed = true;
                done = true;
                Ok(())
            }
            // BlockedHandshake: more is needed from the peer. (No early data is accepted.)
            _ => {
                done = true;
                Ok(())
            }
        };
        start += discard;
        if let Err(e) = handled {
            break Err(e);
        }
        if done {
            break Ok(());
        }
    };
    for part in write {
        io.pending.extend_from_slice(part); // (the keys do not allow it yet)
    }
    (start, result)
}

/// After a failure: encode the alert rustls queued for the peer, if any. rustls hands a queued
/// record over before reading anything, so the failing bytes are not read again (which would
/// queue a second fatal alert).
fn encode_alert<C: Records>(conn: &mut C, incoming: &mut [u8], io: &mut Io) {
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.records(incoming).state {
        drop(encode(&mut data, &mut io.outgoing));
    }
}

/// How many more bytes complete the TLS record `partial` starts (its 5-byte header, then its
/// length's worth), counting the header first if it is not all there.
fn record_missing(partial: &[u8]) -> usize {
    match partial {
        [_, _, _, hi, lo, ..] => (5 + usize::from(u16::from_be_bytes([*hi, *lo]))).saturating_sub(partial.len()),
        _ => 5 - partial.len(),
    }
}

/// Encode a handshake record (or an alert) at the end of `outgoing`.
fn encode<Data>(data: &mut EncodeTlsData<'_, Data>, outgoing: &mut Vec<u8>) -> Result<(), rustls::Error> {
    let at = outgoing.len();
    let mut room = 4096;
    loop {
        outgoing.resize(at + room, 0);
        match data.encode(&mut outgoing[at..]) {
            Ok(written) => {
                outgoing.truncate(at + written);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => room = required_size,
            Err(e) => {
                outgoing.truncate(at);
                return Err(rustls::Error::General(format!("encoding a TLS record failed: {e}")));
            }
        }
    }
}

/// Encrypt what was held, then `data`'s parts, at the end of `io.outgoing`; then our
/// close_notify if asked for.
fn send<Data>(traffic: &mut WriteTraffic<'_, Data>, io: &mut Io, data: &[&[u8]]) -> Result<(), rustls::Error> {
    if !io.pending.is_empty() {
        let pending = std::mem::take(&mut io.pending);
        encrypt(traffic, &mut io.outgoing, &pending)?;
    }
    for part in data {
        encrypt(traffic, &mut io.outgoing, part)?;
    }
    if io.closing && !io.close_sent {
        io.close_sent = true;
        let at = io.outgoing.len();
        io.outgoing.resize(at + 64, 0);
        let written = traffic
            .queue_close_notify(&mut io.outgoing[at..])
            .map_err(|e| rustls::Error::General(format!("encrypting close_notify failed: {e}")))?;
        io.outgoing.truncate(at + written);
    }
    Ok(())
}

/// Encrypt `data` into records at the end of `outgoing` (rustls writes each straight there).
fn encrypt<Data>(
    traffic: &mut WriteTraffic<'_, Data>,
    outgoing: &mut Vec<u8>,
    data: &[u8],
) -> Result<(), rustls::Error> {
    let at = outgoing.len();
    let mut room = records_room(data.len());
    loop {
        outgoing.resize(at + room, 0);
        match traffic.encrypt(data, &mut outgoing[at..]) {
            Ok(written) => {
                outgoing.truncate(at + written);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => room = required_size,
            Err(e) => {
                outgoing.truncate(at);
                return Err(rustls::Error::General(format!("encrypting data failed: {e}")));
            }
        }
    }
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("role", &self.role)
            .field("handshaking", &self.is_handshaking())
            .field("peer_tub_id", &self.peer_tub_id())
            .field("failure", &self.failure)
            .finish()
    }
}

/// Room for the records of `len` bytes of application data: a record per 16 KiB, each with at
/// most a header, an explicit nonce (TLS 1.2), a content type byte and a tag (rustls says how
/// much if this is not enough).
fn records_room(len: usize) -> usize {
    len + (len / (16 << 10) + 1) * 64
}

impl TlsSession {
    /// A TLS client, presenting `identity` when the server asks for a certificate (foolscap
    /// servers refuse a client that claims a TubID without one).
    pub fn client(identity: Option<&Identity>) -> Result<TlsSession, TlsError> {
        TlsSession::with_versions(Role::Client, identity, ALL_VERSIONS)
    }

    /// A TLS server: it asks the client for a certificate but goes on without one.
    pub fn server(identity: &Identity) -> Result<TlsSession, TlsError> {
        TlsSession::with_versions(Role::Server, Some(identity), ALL_VERSIONS)
    }

    fn with_versions(
        role: Role,
        identity: Option<&Identity>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Result<TlsSession, TlsError> {
        TlsSession::configured(role, identity, versions, provider().clone())
    }

    fn configured(
        role: Role,
        identity: Option<&Identity>,
        versions: &[&'static SupportedProtocolVersion],
        crypto: Arc<CryptoProvider>,
    ) -> Result<TlsSession, TlsError> {
        let verifier = Arc::new(AnyCertificate { algorithms: crypto.signature_verification_algorithms });
        let builder_failed = |e: rustls::Error| TlsError::Session(format!("cannot set up TLS: {e}"));
        let conn = match role {
            Role::Client => {
                let builder = ClientConfig::builder_with_provider(crypto)
                    .with_protocol_versions(versions)
                    .map_err(builder_failed)?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier);
                let mut config = match identity {
                    Some(identity) => {
                        builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())))
                    }
                    None => builder.with_no_client_auth(),
                };
                // foolscap sends no SNI; each session has its own config, so a resumption cache
                // would never be used.
                config.enable_sni = false;
                config.resumption = Resumption::disabled();
                // (`records` takes the traffic secrets once the handshake is over.)
                config.enable_secret_extraction = true;
                // The name is neither sent nor checked, only required by the API.
                let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
                Conn::Client(UnbufferedClientConnection::new(Arc::new(config), name).map_err(builder_failed)?)
            }
            Role::Server => {
                let identity =
                    identity.ok_or_else(|| TlsError::Identity("a TLS server needs a certificate and key".into()))?;
                let mut config = ServerConfig::builder_with_provider(crypto)
                    .with_protocol_versions(versions)
                    .map_err(builder_failed)?
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
                config.session_storage = Arc::new(NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
                config.enable_secret_extraction = true;
                Conn::Server(UnbufferedServerConnection::new(Arc::new(config)).map_err(builder_failed)?)
            }
        };
        let mut session = TlsSession {
            conn,
            role,
            negotiated: None,
            incoming: Vec::new(),
            io: Io::default(),
            failure: None,
            #[cfg(test)]
            rustls_records: false,
        };
        // A client's hello is ready at once.
        session.step(&mut Vec::new(), &[])?;
        Ok(session)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Process received ciphertext and append the plaintext it completes to `plaintext`.
    ///
    /// On a failure the session is dead: this and later calls return the same error, and the
    /// alert telling the peer why (if any) is waiting in [`Self::take`]. Plaintext that arrived
    /// in the same call before the failure is dropped with the connection.
    pub fn feed(&mut self, data: &[u8], plaintext: &mut Vec<u8>) -> Result<(), TlsError> {
        self.check_alive()?;
        if self.io.peer_closed {
            return Ok(()); // nothing is read after the peer's close_notify
        }
        self.incoming.extend_from_slice(data);
        let start = plaintext.len();
        self.step(plaintext, &[]).inspect_err(|_| plaintext.truncate(start))
    }

    /// [`Self::feed`], decrypting `data` in place (it is scratch space, a read buffer): only a
    /// record cut by its end is copied, to be completed by the next chunk.
    pub fn feed_in_place(&mut self, mut data: &mut [u8], plaintext: &mut Vec<u8>) -> Result<(), TlsError> {
        self.check_alive()?;
        if self.io.peer_closed {
            return Ok(());
        }
        if self.is_handshaking() {
            return self.feed(data, plaintext); // (handshake messages may span records)
        }
        let start = plaintext.len();
        // The record the last chunk cut: completed from this one, and read from the session's
        // buffer.
        while !self.incoming.is_empty() && !data.is_empty() {
            let (done, rest) = data.split_at_mut(record_missing(&self.incoming).min(data.len()));
            self.incoming.extend_from_slice(done);
            data = rest;
            if record_missing(&self.incoming) == 0 {
                self.step(plaintext, &[]).inspect_err(|_| plaintext.truncate(start))?;
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        let (done, result) = self.process(data, plaintext, &[]);
        if !self.io.peer_closed {
            self.incoming.extend_from_slice(&data[done..]);
        }
        result.map_err(|e| self.failed(e)).inspect_err(|_| plaintext.truncate(start))
    }

    /// Ready `buffer` to receive ciphertext straight after its end, to be opened there by
    /// [`Self::open_landed`] (its plaintext moved down onto the end: the bytes are not copied
    /// out of a read buffer first). Only once the records are protected here (TLS 1.3 after the
    /// handshake); None otherwise, or once the session has failed or the peer has closed. The
    /// record the last chunk cut is copied after `buffer`'s end, and the returned offset from
    /// there is where the next bytes go, with room for at least `room` of them.
    pub fn prepare_landing(&mut self, buffer: &mut Vec<u8>, room: usize) -> Option<usize> {
        if !matches!(self.conn, Conn::Traffic(_)) || self.failure.is_some() || self.io.peer_closed {
            return None;
        }
        let cut = self.incoming.len();
        buffer.reserve(cut + room);
        // (Kept in `incoming` too, until the bytes come: a read may fail, and a feed follow.)
        let spare = &mut buffer.spare_capacity_mut()[..cut];
        for (to, &byte) in spare.iter_mut().zip(&self.incoming) {
            to.write(byte);
        }
        Some(cut)
    }

    /// Open the records received straight after `buffer`'s end (see [`Self::prepare_landing`]),
    /// the `landed` bytes that came and the cut record before them: their application data
    /// is appended to `buffer`, where it already lies, and a record cut by their end is kept
    /// for the next chunk. As [`Self::feed`] otherwise.
    ///
    /// # Safety
    ///
    /// `landed` bytes were written into `buffer`'s spare capacity from the offset
    /// `prepare_landing` returned, and neither `buffer` nor the session changed since it did.
    pub unsafe fn open_landed(&mut self, buffer: &mut Vec<u8>, landed: usize) -> Result<(), TlsError> {
        self.check_alive()?;
        let Conn::Traffic(records) = &mut self.conn else {
            return Err(TlsError::Session("no records were made ready to receive".into()));
        };
        let start = buffer.len();
        let total = self.incoming.len() + landed;
        assert!(buffer.capacity() - start >= total, "more bytes landed than there was room for");
        // SAFETY: the caller's contract: the cut record and the bytes that came are there.
        unsafe { buffer.set_len(start + total) };
        self.incoming.clear();
        let (done, produced, result) = records.read_within(&mut buffer[start..], &mut self.io);
        if !self.io.peer_closed {
            self.incoming.extend_from_slice(&buffer[start + done..]);
        }
        match result {
            Ok(()) => {
                buffer.truncate(start + produced);
                Ok(())
            }
            Err(e) => {
                buffer.truncate(start);
                Err(self.failed(e))
            }
        }
    }

    /// Queue application data. Before the handshake completes it is held and sent as soon as
    /// the keys allow.
    pub fn write(&mut self, data: &[u8]) -> Result<(), TlsError> {
        self.write_parts(&[data])
    }

    /// Queue `parts` as application data, one after the other: records are filled from as
    /// many as it takes, each part copied once, as it is sealed. Nothing to write is no error,
    /// whatever the session's state.
    pub fn write_parts(&mut self, parts: &[&[u8]]) -> Result<(), TlsError> {
        if parts.iter().all(|part| part.is_empty()) {
            return Ok(());
        }
        self.check_alive()?;
        if self.io.closing {
            return Err(TlsError::Session("cannot write to a TLS session after close()".into()));
        }
        // (Plaintext read meanwhile would be a peer's data before our `feed`: none is, as
        // every feed reads all it can.)
        let mut read = Vec::new();
        self.step(&mut read, parts)?;
        debug_assert!(read.is_empty());
        Ok(())
    }

    /// Run `f` on all the ciphertext to send now (possibly none), then forget it.
    pub fn take_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let result = f(&self.io.outgoing);
        self.io.outgoing.clear();
        self.io.outgoing.shrink_to(KEPT_BUFFER);
        result
    }

    /// All the ciphertext to send now (possibly none), appended to `buffer` (which becomes the
    /// session's next buffer for records when it is empty: the ciphertext is not copied).
    pub fn take_into(&mut self, mut buffer: Vec<u8>) -> Vec<u8> {
        if buffer.is_empty() {
            std::mem::swap(&mut buffer, &mut self.io.outgoing);
            return buffer;
        }
        buffer.extend_from_slice(&self.io.outgoing);
        self.io.outgoing.clear();
        buffer
    }

    /// All the ciphertext to send now (possibly none).
    pub fn take(&mut self) -> Vec<u8> {
        self.take_with(<[u8]>::to_vec)
    }

    /// Queue a close_notify alert (once the handshake allows: before, nothing goes); nothing
    /// may be written after it.
    pub fn close(&mut self) {
        if !self.io.closing {
            self.io.closing = true;
            if self.failure.is_none() {
                drop(self.step(&mut Vec::new(), &[]));
            }
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.common().is_some_and(CommonState::is_handshaking)
    }

    /// The peer's end-entity certificate (DER), once the handshake has checked its signature.
    /// None for a client that sent no certificate.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match (&self.negotiated, self.conn.common()) {
            (Some(negotiated), _) => negotiated.peer_certificate.as_deref(),
            (None, Some(common)) => common.peer_certificates().and_then(|chain| chain.first()).map(|c| c.as_ref()),
            (None, None) => None,
        }
    }

    /// The foolscap TubID of [`Self::peer_certificate`].
    pub fn peer_tub_id(&self) -> Option<String> {
        self.peer_certificate().map(tubid::tub_id)
    }

    /// Whether the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.io.peer_closed
    }

    /// The failure that ended the session, if one did.
    pub fn failure(&self) -> Option<&TlsError> {
        self.failure.as_ref()
    }

    /// `"TLSv1_3"` or `"TLSv1_2"`, once negotiated.
    pub fn protocol_version(&self) -> Option<&'static str> {
        match (&self.negotiated, self.conn.common()) {
            (Some(negotiated), _) => negotiated.protocol_version,
            (None, common) => common?.protocol_version()?.as_str(),
        }
    }

    /// The negotiated cipher suite's IANA-style name, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub fn cipher_suite(&self) -> Option<&'static str> {
        match (&self.negotiated, self.conn.common()) {
            (Some(negotiated), _) => negotiated.cipher_suite,
            (None, common) => common?.negotiated_cipher_suite()?.suite().as_str(),
        }
    }

    /// Process what has been received, read the application data into `plaintext`, write what
    /// the handshake (or an alert) has to send and, once the keys allow, `write` (and what was
    /// held), then the close_notify if asked for. A failure is the session's from then on.
    fn step(&mut self, plaintext: &mut Vec<u8>, write: &[&[u8]]) -> Result<(), TlsError> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let (done, result) = self.process(&mut incoming, plaintext, write);
        // Read in place however many records came; only what is left is moved to the front.
        incoming.drain(..done);
        if self.io.peer_closed {
            incoming = Vec::new(); // nothing is read after the peer's close_notify
        }
        self.incoming = incoming;
        result.map_err(|e| self.failed(e))
    }

    /// [`Self::step`] over `incoming`: how much of it is done with, and the outcome. When a
    /// TLS 1.3 handshake completes, the records are handed over and the rest is read by them.
    fn process(
        &mut self,
        incoming: &mut [u8],
        plaintext: &mut Vec<u8>,
        write: &[&[u8]],
    ) -> (usize, Result<(), rustls::Error>) {
        let (done, result) = match &mut self.conn {
            Conn::Client(c) => drive(c, incoming, &mut self.io, plaintext, write),
            Conn::Server(s) => drive(s, incoming, &mut self.io, plaintext, write),
            Conn::Traffic(records) => return records.step(incoming, &mut self.io, plaintext, write),
            Conn::Lost => return (0, Err(rustls::Error::General("the TLS records were lost".into()))),
        };
        if result.is_err() || self.is_handshaking() || self.protocol_version() != Some("TLSv1_3") {
            return (done, result);
        }
        #[cfg(test)]
        if self.rustls_records {
            return (done, result);
        }
        if let Err(e) = self.hand_over_records() {
            return (done, Err(e));
        }
        let Conn::Traffic(records) = &mut self.conn else { unreachable!("the records were just handed over") };
        let (more, result) = records.step(&mut incoming[done..], &mut self.io, plaintext, &[]);
        (done + more, result)
    }

    /// Take the traffic secrets out of rustls and protect the records here from now on.
    fn hand_over_records(&mut self) -> Result<(), rustls::Error> {
        self.negotiated = Some(Negotiated {
            peer_certificate: self.peer_certificate().map(<[u8]>::to_vec),
            protocol_version: self.protocol_version(),
            cipher_suite: self.cipher_suite(),
        });
        let (secrets, kernel, suite) = match std::mem::replace(&mut self.conn, Conn::Lost) {
            Conn::Client(c) => {
                let (secrets, kernel) = c.dangerous_into_kernel_connection()?;
                let suite = kernel.negotiated_cipher_suite();
                (secrets, Kernel::Client(kernel), suite)
            }
            Conn::Server(s) => {
                let (secrets, kernel) = s.dangerous_into_kernel_connection()?;
                let suite = kernel.negotiated_cipher_suite();
                (secrets, Kernel::Server(kernel), suite)
            }
            other => {
                self.conn = other;
                return Ok(());
            }
        };
        let limit = match suite {
            rustls::SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            rustls::SupportedCipherSuite::Tls12(suite) => suite.common.confidentiality_limit,
        };
        self.conn = Conn::Traffic(Box::new(Traffic::new(kernel, secrets, limit)?));
        Ok(())
    }

    /// The session failed with `error`: the alert for the peer is encoded, the failure kept.
    fn failed(&mut self, error: rustls::Error) -> TlsError {
        match &mut self.conn {
            Conn::Client(c) => encode_alert(c, &mut self.incoming, &mut self.io),
            Conn::Server(s) => encode_alert(s, &mut self.incoming, &mut self.io),
            Conn::Traffic(records) => records.fail(&error, &mut self.io.outgoing),
            Conn::Lost => {}
        }
        let message = self.describe(&error);
        self.fail(message)
    }
    fn check_alive(&self) -> Result<(), TlsError> {
        match &self.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, message: String) -> TlsError {
        let error = TlsError::Session(message);
        self.failure = Some(error.clone());
        error
    }

    fn failure_prefix(&self) -> &'static str {
        if self.is_handshaking() {
            "TLS handshake failed"
        } else {
            "TLS connection failed"
        }
    }

    /// A rustls error in words, naming the handshake message whose signature failed.
    fn describe(&self, error: &rustls::Error) -> String {
        use rustls::Error as E;
        let prefix = self.failure_prefix();
        match error {
            E::InvalidCertificate(CertificateError::BadSignature) => {
                // In TLS 1.2 a server signs its key exchange; otherwise CertificateVerify is signed.
                let tls12 = self.protocol_version() == Some("TLSv1_2");
                let message =
                    if self.role == Role::Client && tls12 { "ServerKeyExchange" } else { "CertificateVerify" };
                format!("{prefix}: the peer's {message} signature is invalid for its certificate's key")
            }
            E::InvalidCertificate(CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }) => {
                format!("{prefix}: the peer signed with a scheme that does not fit its certificate's key")
            }
            E::InvalidCertificate(CertificateError::BadEncoding) => {
                format!("{prefix}: the peer's certificate is not a DER X.509 certificate")
            }
            E::AlertReceived(alert) => format!("{prefix}: the peer sent the alert {}", alert_name(*alert)),
            E::InvalidMessage(kind) => format!("{prefix}: the peer sent malformed TLS data ({kind:?})"),
            other => format!("{prefix}: {other}"),
        }
    }
}

/// An alert as RFC 8446 names it, e.g. `decrypt_error`.
fn alert_name(alert: AlertDescription) -> String {
    let Some(camel) = alert.as_str() else {
        return format!("{}", u8::from(alert));
    };
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// The verifier for both ends: any certificate is acceptable, but the handshake signature must
/// be made by its key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn check_parses(certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        public_key_info(certificate.as_ref()).map(drop).map_err(|_| CertificateError::BadEncoding.into())
    }

    /// TLS 1.2 does not tie a signature scheme to one algorithm (ECDSA's curve is the key's), so
    /// every algorithm the scheme maps to and that fits the key is tried.
    fn verify_tls12(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let info = public_key_info(certificate.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
        let candidates = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algorithms)| *algorithms)
            .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        let mut fitting = candidates.iter().filter(|alg| alg.public_key_alg_id().as_ref() == info.algorithm).peekable();
        if fitting.peek().is_none() {
            return Err(CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id: candidates
                    .first()
                    .map(|a| a.signature_alg_id().as_ref().to_vec())
                    .unwrap_or_default(),
                public_key_algorithm_id: info.algorithm.to_vec(),
            }
            .into());
        }
        if fitting.any(|alg| alg.verify_signature(info.key, message, dss.signature()).is_ok()) {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(CertificateError::BadSignature.into())
        }
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let info = public_key_info(certificate.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
        let spki = SubjectPublicKeyInfoDer::from(info.der);
        rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        AnyCertificate::check_parses(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// The layer above refuses a client that claims a TubID without a certificate, with a
    /// clearer message than a TLS alert.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        AnyCertificate::check_parses(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A certificate's SubjectPublicKeyInfo, in the pieces signature checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKeyInfo<'a> {
    /// The whole SubjectPublicKeyInfo element.
    pub der: &'a [u8],
    /// The contents of its AlgorithmIdentifier: the algorithm OID and its parameters.
    pub algorithm: &'a [u8],
    /// The subjectPublicKey bits.
    pub key: &'a [u8],
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
/// `[0] EXPLICIT Version`: present in v2 and v3 certificates, absent in v1.
const VERSION_TAG: u8 = 0xa0;

/// The SubjectPublicKeyInfo of a DER X.509 certificate of any version. Only the structure up to
/// the key is checked: nothing here trusts the certificate, the handshake signature does.
pub fn public_key_info(certificate: &[u8]) -> Result<PublicKeyInfo<'_>, &'static str> {
    let mut outer = Der(certificate);
    let (certificate, _) = outer.expect(SEQUENCE, "the certificate is not a SEQUENCE")?;
    if !outer.0.is_empty() {
        return Err("bytes follow the certificate");
    }
    let (tbs, _) = Der(certificate).expect(SEQUENCE, "no tbsCertificate")?;
    let mut tbs = Der(tbs);
    if tbs.0.first() == Some(&VERSION_TAG) {
        tbs.element()?;
    }
    tbs.expect(INTEGER, "no serial number")?;
    tbs.expect(SEQUENCE, "no signature algorithm")?;
    tbs.expect(SEQUENCE, "no issuer")?;
    tbs.expect(SEQUENCE, "no validity")?;
    tbs.expect(SEQUENCE, "no subject")?;
    let (spki, der) = tbs.expect(SEQUENCE, "no subject public key info")?;
    let mut spki = Der(spki);
    let (algorithm, _) = spki.expect(SEQUENCE, "no public key algorithm")?;
    let (bits, _) = spki.expect(BIT_STRING, "no public key")?;
    if !spki.0.is_empty() {
        return Err("bytes follow the public key");
    }
    match bits {
        [0, key @ ..] => Ok(PublicKeyInfo { der, algorithm, key }),
        _ => Err("the public key is not a whole number of bytes"),
    }
}

/// A cursor over DER elements (single-byte tags, definite lengths).
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element: its tag, contents and whole encoding.
    fn element(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), &'static str> {
        const TRUNCATED: &str = "truncated DER";
        let input = self.0;
        let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
        if tag & 0x1f == 0x1f {
            return Err("multi-byte DER tags do not occur in certificates");
        }
        let (&first, rest) = rest.split_first().ok_or(TRUNCATED)?;
        let (length, rest) = match first {
            0..=0x7f => (usize::from(first), rest),
            0x81..=0x84 => {
                let count = usize::from(first & 0x7f);
                let (digits, rest) = (rest.get(..count).ok_or(TRUNCATED)?, &rest[count..]);
                (digits.iter().fold(0usize, |acc, &d| (acc << 8) | usize::from(d)), rest)
            }
            _ => return Err("unsupported DER length"),
        };
        let contents = rest.get(..length).ok_or(TRUNCATED)?;
        let header = input.len() - rest.len();
        self.0 = &rest[length..];
        Ok((tag, contents, &input[..header + length]))
    }

    /// The next element's contents and whole encoding, if it has tag `tag`.
    fn expect(&mut self, tag: u8, missing: &'static str) -> Result<(&'a [u8], &'a [u8]), &'static str> {
        match self.element() {
            Ok((found, contents, whole)) if found == tag => Ok((contents, whole)),
            Ok(_) => Err(missing),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    const FOOLSCAP: &str = "foolscap_v1.pem";
    const FOOLSCAP_OTHER: &str = "foolscap_v1_other.pem";
    const EC_P256: &str = "ec_p256.pem";
    const ED25519: &str = "ed25519.pem";
    const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

    /// A checked-in identity: `tests/vectors/tls/generate.py` made them, the foolscap ones with
    /// stock foolscap's `createCertificate()` (X.509 v1, RSA 2048) and `dumpPEM()`.
    fn pem(file: &str) -> Vec<u8> {
        let path = format!("{}/tests/vectors/tls/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    fn certificate_der(file: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(&pem(file)).unwrap().to_vec()
    }

    fn key_der(file: &str) -> Vec<u8> {
        PrivateKeyDer::from_pem_slice(&pem(file)).unwrap().secret_der().to_vec()
    }

    fn identity(file: &str) -> Identity {
        Identity::from_der(&certificate_der(file), &key_der(file)).unwrap()
    }

    /// The certificate of `certificate_file` with the key of `key_file`, skipping the check
    /// that they match: a peer that cannot sign for the certificate it shows.
    fn impostor(certificate_file: &str, key_file: &str) -> Identity {
        let key = PrivateKeyDer::try_from(key_der(key_file)).unwrap();
        Identity::unchecked(&certificate_der(certificate_file), provider().key_provider.load_private_key(key).unwrap())
    }

    /// The TubID foolscap computed for a checked-in identity.
    fn foolscap_tub_id(file: &str) -> String {
        let path = format!("{}/tests/vectors/tls/identities.json", env!("CARGO_MANIFEST_DIR"));
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let record = doc["identities"].as_array().unwrap().iter().find(|r| r["file"] == file).unwrap();
        record["tub_id"].as_str().unwrap().to_owned()
    }

    #[derive(Default)]
    struct Received {
        client: Vec<u8>,
        server: Vec<u8>,
    }

    /// Move bytes both ways until neither side has anything to send.
    fn pump(client: &mut TlsSession, server: &mut TlsSession) -> Result<Received, (Role, TlsError)> {
        let mut received = Received::default();
        loop {
            let to_server = client.take();
            let to_client = server.take();
            if to_server.is_empty() && to_client.is_empty() {
                return Ok(received);
            }
            server.feed(&to_server, &mut received.server).map_err(|e| (Role::Server, e))?;
            client.feed(&to_client, &mut received.client).map_err(|e| (Role::Client, e))?;
        }
    }

    fn session_pair(
        client: Option<&Identity>,
        server: &Identity,
        versions: &[&'static SupportedProtocolVersion],
    ) -> (TlsSession, TlsSession) {
        (
            TlsSession::with_versions(Role::Client, client, versions).unwrap(),
            TlsSession::with_versions(Role::Server, Some(server), versions).unwrap(),
        )
    }

    #[test]
    fn foolscap_v1_identities_handshake_and_carry_data_both_ways() {
        for (versions, expected) in [(ALL_VERSIONS, "TLSv1_3"), (TLS12_ONLY, "TLSv1_2")] {
            let (client_id, server_id) = (identity(FOOLSCAP), identity(FOOLSCAP_OTHER));
            let (mut client, mut server) = session_pair(Some(&client_id), &server_id, versions);
            assert!(client.is_handshaking() && server.is_handshaking());
            assert_eq!(client.peer_certificate(), None);
            pump(&mut client, &mut server).unwrap();
            assert!(!client.is_handshaking() && !server.is_handshaking());
            assert_eq!((client.protocol_version(), server.protocol_version()), (Some(expected), Some(expected)));
            assert!(client.cipher_suite().is_some() && client.cipher_suite() == server.cipher_suite());
            if expected == "TLSv1_3" {
                assert_eq!(client.cipher_suite(), Some("TLS13_AES_128_GCM_SHA256"));
            }

            assert_eq!(client.peer_certificate(), Some(&certificate_der(FOOLSCAP_OTHER)[..]));
            assert_eq!(server.peer_certificate(), Some(&certificate_der(FOOLSCAP)[..]));
            assert_eq!(client.peer_tub_id(), Some(foolscap_tub_id(FOOLSCAP_OTHER)));
            assert_eq!(server.peer_tub_id(), Some(foolscap_tub_id(FOOLSCAP)));
            assert_eq!(client_id.tub_id(), foolscap_tub_id(FOOLSCAP));

            client.write(b"hello from the client").unwrap();
            server.write(b"hello from the server").unwrap();
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            client.write(&big).unwrap();
            let received = pump(&mut client, &mut server).unwrap();
            assert_eq!(received.client, b"hello from the server");
            assert_eq!(&received.server[..21], b"hello from the client");
            assert_eq!(&received.server[21..], &big[..]);
        }
    }

    #[test]
    fn v3_ec_and_ed25519_identities_work_in_both_versions() {
        for versions in [ALL_VERSIONS, TLS12_ONLY] {
            for (client_file, server_file) in [(EC_P256, ED25519), (ED25519, FOOLSCAP), (FOOLSCAP, EC_P256)] {
                let (mut client, mut server) =
                    session_pair(Some(&identity(client_file)), &identity(server_file), versions);
                pump(&mut client, &mut server).unwrap_or_else(|e| panic!("{client_file} -> {server_file}: {e:?}"));
                assert_eq!(server.peer_tub_id(), Some(foolscap_tub_id(client_file)));
                assert_eq!(client.peer_tub_id(), Some(foolscap_tub_id(server_file)));
            }
        }
    }

    #[test]
    fn a_server_whose_key_does_not_match_its_certificate_is_refused() {
        for (versions, signed) in [(ALL_VERSIONS, "CertificateVerify"), (TLS12_ONLY, "ServerKeyExchange")] {
            let (mut client, mut server) =
                session_pair(Some(&identity(FOOLSCAP)), &impostor(FOOLSCAP_OTHER, FOOLSCAP), versions);
            let (side, error) = pump(&mut client, &mut server).err().expect("the handshake must fail");
            assert_eq!(side, Role::Client);
            let expected = format!("TLS handshake failed: the peer's {signed} signature is invalid");
            assert!(error.to_string().starts_with(&expected), "{error}");
            assert_eq!(client.peer_certificate(), None);
            // The alert is still there to send, and tells the server why.
            let alert = client.take();
            assert!(!alert.is_empty());
            let err = server.feed(&alert, &mut Vec::new()).unwrap_err();
            assert_eq!(err.to_string(), "TLS handshake failed: the peer sent the alert decrypt_error");
            // A dead session keeps failing the same way.
            assert_eq!(client.feed(b"more", &mut Vec::new()), Err(error.clone()));
            assert_eq!(client.write(b"x"), Err(error));
        }
    }

    #[test]
    fn a_client_whose_key_does_not_match_its_certificate_is_refused() {
        let cases = [
            (FOOLSCAP_OTHER, "the peer's CertificateVerify signature is invalid"),
            // An Ed25519 signature cannot come from the certificate's RSA key at all.
            (ED25519, "the peer signed with a scheme that does not fit its certificate's key"),
        ];
        for versions in [ALL_VERSIONS, TLS12_ONLY] {
            for (key_file, expected) in cases {
                let (mut client, mut server) =
                    session_pair(Some(&impostor(FOOLSCAP, key_file)), &identity(FOOLSCAP_OTHER), versions);
                let (side, error) = pump(&mut client, &mut server).err().expect("the handshake must fail");
                assert_eq!(side, Role::Server);
                assert!(error.to_string().contains(expected), "{error}");
                assert_eq!(server.peer_tub_id(), None);
            }
        }
    }

    #[test]
    fn a_certificate_swapped_on_the_wire_is_caught_by_the_signature_check() {
        // TLS 1.2 sends certificates in the clear: put another Tub's certificate (same length)
        // in place of the real one, as an attacker claiming that TubID would.
        let (real, claimed) = (certificate_der(FOOLSCAP), certificate_der(FOOLSCAP_OTHER));
        assert_eq!(real.len(), claimed.len());
        let (mut client, mut server) = session_pair(Some(&identity(ED25519)), &identity(FOOLSCAP), TLS12_ONLY);
        let hello = client.take();
        server.feed(&hello, &mut Vec::new()).unwrap();
        let mut flight = server.take();
        let at = flight.windows(real.len()).position(|w| w == real).expect("the certificate is sent in the clear");
        flight[at..at + real.len()].copy_from_slice(&claimed);
        let error = client.feed(&flight, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("ServerKeyExchange signature is invalid"), "{error}");
        assert_eq!(client.peer_tub_id(), None);
    }

    #[test]
    fn a_client_without_a_certificate_is_let_in_anonymously() {
        for versions in [ALL_VERSIONS, TLS12_ONLY] {
            let (mut client, mut server) = session_pair(None, &identity(FOOLSCAP), versions);
            client.write(b"anonymous").unwrap();
            let received = pump(&mut client, &mut server).unwrap();
            assert!(!server.is_handshaking());
            assert_eq!(server.peer_certificate(), None);
            assert_eq!(server.peer_tub_id(), None);
            assert_eq!(client.peer_tub_id(), Some(foolscap_tub_id(FOOLSCAP)));
            assert_eq!(received.server, b"anonymous");
        }
    }

    #[test]
    fn writes_before_the_handshake_are_sent_after_it() {
        let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), ALL_VERSIONS);
        client.write(b"early ").unwrap();
        server.write(b"eager ").unwrap();
        client.write(b"words").unwrap();
        let received = pump(&mut client, &mut server).unwrap();
        assert_eq!(received.server, b"early words");
        assert_eq!(received.client, b"eager ");
    }

    #[test]
    fn records_are_read_in_place_however_the_chunks_cut_them() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 4, 5, 6, 1000, 16_384 + 22, 65_536, usize::MAX] {
            let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), ALL_VERSIONS);
            pump(&mut client, &mut server).unwrap();
            client.write(&big).unwrap();
            client.write(b"tail").unwrap();
            let mut flight = client.take();
            let mut received = Vec::new();
            for piece in flight.chunks_mut(chunk.min(1 << 20)) {
                server.feed_in_place(piece, &mut received).unwrap();
            }
            assert_eq!(received.len(), big.len() + 4, "chunks of {chunk}");
            assert!(received.starts_with(&big) && received.ends_with(b"tail"), "chunks of {chunk}");
            assert!(server.incoming.is_empty());
        }
    }

    #[test]
    fn byte_at_a_time_delivery_works() {
        let (mut client, mut server) = session_pair(Some(&identity(ED25519)), &identity(FOOLSCAP), ALL_VERSIONS);
        client.write(b"trickle").unwrap();
        let mut received = Vec::new();
        for _ in 0..10 {
            for byte in client.take() {
                server.feed(&[byte], &mut received).unwrap();
            }
            for byte in server.take() {
                client.feed(&[byte], &mut Vec::new()).unwrap();
            }
        }
        assert!(!server.is_handshaking());
        assert_eq!(received, b"trickle");
    }

    #[test]
    fn close_notify_reaches_the_peer_after_the_data() {
        let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(FOOLSCAP_OTHER), ALL_VERSIONS);
        pump(&mut client, &mut server).unwrap();
        client.write(b"last words").unwrap();
        client.close();
        client.close();
        assert!(client.write(b"too late").unwrap_err().to_string().contains("after close()"));
        let mut received = Vec::new();
        server.feed(&client.take(), &mut received).unwrap();
        assert_eq!(received, b"last words");
        assert!(server.peer_closed());
        assert!(!client.peer_closed());
        // Bytes after close_notify are ignored.
        server.feed(b"ignored", &mut received).unwrap();
        assert_eq!(received, b"last words");
        server.close();
        client.feed(&server.take(), &mut Vec::new()).unwrap();
        assert!(client.peer_closed());
    }

    #[test]
    fn close_notify_is_seen_however_it_arrives() {
        for versions in [ALL_VERSIONS, TLS12_ONLY] {
            // With the last data in one chunk, or one byte at a time, from either side.
            for byte_at_a_time in [false, true] {
                for client_closes in [true, false] {
                    let (mut client, mut server) =
                        session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), versions);
                    pump(&mut client, &mut server).unwrap();
                    let (closer, other) =
                        if client_closes { (&mut client, &mut server) } else { (&mut server, &mut client) };
                    closer.write(b"bye").unwrap();
                    closer.close();
                    let flight = closer.take();
                    let mut received = Vec::new();
                    if byte_at_a_time {
                        for byte in &flight {
                            assert!(!other.peer_closed());
                            other.feed(&[*byte], &mut received).unwrap();
                        }
                    } else {
                        other.feed(&flight, &mut received).unwrap();
                    }
                    assert_eq!(received, b"bye", "{versions:?} {byte_at_a_time} {client_closes}");
                    assert!(other.peer_closed() && !closer.peer_closed());
                    // The answer: whatever is still queued, then our own close_notify.
                    other.write(b"late answer").unwrap();
                    other.close();
                    let mut answer = Vec::new();
                    closer.feed(&other.take(), &mut answer).unwrap();
                    assert_eq!(answer, b"late answer");
                    assert!(closer.peer_closed());
                    assert!(closer.take().is_empty() && other.take().is_empty());
                }
            }
            // Both sides close at once: each sees the other's close_notify.
            let (mut client, mut server) = session_pair(Some(&identity(ED25519)), &identity(FOOLSCAP), versions);
            pump(&mut client, &mut server).unwrap();
            client.close();
            server.close();
            pump(&mut client, &mut server).unwrap();
            assert!(client.peer_closed() && server.peer_closed());
        }
    }

    #[test]
    fn garbage_fails_cleanly_with_an_alert() {
        for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0], &[0u8; 64]] {
            let mut server = TlsSession::server(&identity(FOOLSCAP)).unwrap();
            let error = server.feed(garbage, &mut Vec::new()).unwrap_err();
            assert!(error.to_string().starts_with("TLS handshake failed: "), "{error}");
            assert_eq!(server.failure(), Some(&error));
            let _alert = server.take();
            assert_eq!(server.feed(b"", &mut Vec::new()), Err(error));
        }
        // Garbage after the handshake: a record that does not decrypt.
        let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), ALL_VERSIONS);
        pump(&mut client, &mut server).unwrap();
        let error = server
            .feed(
                &[
                    0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                    20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
                ],
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(error.to_string().starts_with("TLS connection failed: "), "{error}");
        assert!(!server.take().is_empty(), "a bad_record_mac alert is queued");
    }

    /// The ring provider with TLS 1.3 keys replaced every `limit` records.
    fn provider_with_limit(limit: u64) -> Arc<CryptoProvider> {
        let mut crypto = (**provider()).clone();
        for suite in &mut crypto.cipher_suites {
            if let rustls::SupportedCipherSuite::Tls13(base) = *suite {
                let common = rustls::CipherSuiteCommon { confidentiality_limit: limit, ..base.common };
                let limited = rustls::Tls13CipherSuite { common, ..*base };
                *suite = rustls::SupportedCipherSuite::Tls13(Box::leak(Box::new(limited)));
            }
        }
        Arc::new(crypto)
    }

    /// A TLS 1.3 session whose records rustls keeps protecting, renewing its keys every `limit`
    /// records (and asking the peer to renew its own): the independent peer for `records`.
    fn rustls_peer(role: Role, identity: Option<&Identity>, limit: u64) -> TlsSession {
        let mut session = TlsSession::configured(role, identity, ALL_VERSIONS, provider_with_limit(limit)).unwrap();
        session.rustls_records = true;
        session
    }

    fn traffic(session: &mut TlsSession) -> &mut records::Traffic {
        match &mut session.conn {
            Conn::Traffic(traffic) => traffic,
            _ => panic!("the records were not handed over"),
        }
    }

    /// Distinct bytes for each round and side, across many records.
    fn payload(round: u32, side: u8) -> Vec<u8> {
        (0..40_000 + round * 97).map(|i| (i as u8).wrapping_mul(31) ^ side ^ round as u8).collect()
    }

    #[test]
    fn records_are_handed_over_after_a_tls13_handshake() {
        for (versions, handed_over) in [(ALL_VERSIONS, true), (TLS12_ONLY, false)] {
            let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), versions);
            client.write(b"early").unwrap();
            pump(&mut client, &mut server).unwrap();
            for session in [&client, &server] {
                assert_eq!(matches!(session.conn, Conn::Traffic(_)), handed_over);
                assert!(session.cipher_suite().is_some() && !session.is_handshaking());
            }
            assert_eq!(client.peer_certificate(), Some(&certificate_der(EC_P256)[..]));
            assert_eq!(server.peer_tub_id(), Some(foolscap_tub_id(FOOLSCAP)));
        }
    }

    #[test]
    fn key_updates_both_ways_with_rustls_protecting_the_peer() {
        for ours_is_client in [true, false] {
            let (client_id, server_id) = (identity(FOOLSCAP), identity(EC_P256));
            let (mut client, mut server) = if ours_is_client {
                (TlsSession::client(Some(&client_id)).unwrap(), rustls_peer(Role::Server, Some(&server_id), 7))
            } else {
                (rustls_peer(Role::Client, Some(&client_id), 7), TlsSession::server(&server_id).unwrap())
            };
            pump(&mut client, &mut server).unwrap();
            let (ours, theirs) = if ours_is_client { (&mut client, &mut server) } else { (&mut server, &mut client) };
            assert!(matches!(theirs.conn, Conn::Client(_) | Conn::Server(_)));
            traffic(ours).set_tx_limit(5);
            for round in 0..12 {
                ours.write(&payload(round, 1)).unwrap();
                theirs.write(&payload(round, 2)).unwrap();
                let (mut at_ours, mut at_theirs) = (Vec::new(), Vec::new());
                for _ in 0..4 {
                    theirs.feed(&ours.take(), &mut at_theirs).unwrap();
                    ours.feed(&theirs.take(), &mut at_ours).unwrap();
                }
                assert_eq!(at_theirs, payload(round, 1), "round {round}");
                assert_eq!(at_ours, payload(round, 2), "round {round}");
            }
            // Ours renewed its key every few records, and rustls asked for more renewals.
            let (sent, received) = traffic(ours).key_updates;
            assert!(sent >= 6 && received >= 3, "{sent} sent, {received} received");
        }
    }

    #[test]
    fn parts_written_together_arrive_as_one_stream_in_full_records() {
        let parts: [Vec<u8>; 7] = [
            vec![],
            b"head".to_vec(),
            payload(0, 1),
            vec![7; 3],
            payload(1, 2)[..16384].to_vec(),
            vec![],
            payload(2, 3),
        ];
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let whole = parts.concat();
        for versions in [ALL_VERSIONS, TLS12_ONLY] {
            let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), versions);
            // Before the handshake the parts are held; after it they are sealed as they come.
            client.write_parts(&parts).unwrap();
            assert_eq!(pump(&mut client, &mut server).unwrap().server, whole);
            if versions == ALL_VERSIONS {
                traffic(&mut client).set_tx_limit(3); // key updates between the parts' records
            }
            for _ in 0..3 {
                client.write_parts(&parts).unwrap();
                let records = client.take();
                if versions == ALL_VERSIONS {
                    // Each record filled from as many parts as it takes: no more records than
                    // the bytes need (besides the key updates').
                    let (mut at, mut data_records) = (0, 0);
                    while at < records.len() {
                        let len = usize::from(u16::from_be_bytes([records[at + 3], records[at + 4]]));
                        data_records += usize::from(len > 64);
                        at += 5 + len;
                    }
                    assert_eq!(data_records, whole.len().div_ceil(16384));
                }
                let mut received = Vec::new();
                server.feed(&records, &mut received).unwrap();
                assert_eq!(received, whole);
            }
            assert!(client.write_parts(&[&[], &[]]).is_ok() && client.take().is_empty());
        }
    }

    /// Deliver `stream` to `receiver` chunk by chunk (sizes cycling through `chunks`), received
    /// straight after `buffer`'s end when the session allows it (two chunks in three, to mix
    /// the two ways), else through a read buffer.
    fn land(receiver: &mut TlsSession, buffer: &mut Vec<u8>, stream: &[u8], chunks: &[usize]) -> Result<(), TlsError> {
        let mut sizes = chunks.iter().cycle();
        let (mut at, mut turn) = (0, 0);
        while at < stream.len() {
            let n = (*sizes.next().unwrap()).min(stream.len() - at);
            let chunk = &stream[at..at + n];
            (at, turn) = (at + n, turn + 1);
            match receiver.prepare_landing(buffer, n).filter(|_| turn % 3 != 0) {
                Some(offset) => {
                    let spare = &mut buffer.spare_capacity_mut()[offset..offset + n];
                    for (to, &byte) in spare.iter_mut().zip(chunk) {
                        to.write(byte);
                    }
                    // SAFETY: the bytes were just written where `prepare_landing` said.
                    unsafe { receiver.open_landed(buffer, n)? };
                }
                None => receiver.feed_in_place(&mut chunk.to_vec(), buffer)?,
            }
        }
        Ok(())
    }

    /// A server after the handshake, and what its client sends it: payloads each followed by a
    /// one-byte write, with key updates among them, then close_notify; and the plaintext.
    fn records_to_land() -> (TlsSession, Vec<u8>, Vec<u8>) {
        let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), ALL_VERSIONS);
        pump(&mut client, &mut server).unwrap();
        traffic(&mut client).set_tx_limit(4);
        let (mut stream, mut sent) = (Vec::new(), Vec::new());
        for round in 0..6 {
            client.write(&payload(round, 5)).unwrap();
            client.write(b"-").unwrap();
            stream.extend(client.take());
            sent.extend(payload(round, 5));
            sent.push(b'-');
        }
        client.close();
        stream.extend(client.take());
        (server, stream, sent)
    }

    #[test]
    fn records_received_straight_into_the_plaintext_buffer() {
        for chunks in [&[100_000][..], &[3, 5, 16_000, 16_406, 70_001], &[1, 2, 4, 4_093]] {
            let (mut server, stream, sent) = records_to_land();
            let mut buffer = b"held ".to_vec();
            land(&mut server, &mut buffer, &stream, chunks).unwrap();
            assert_eq!(buffer, [&b"held "[..], &sent].concat(), "{chunks:?}");
            assert!(server.io.peer_closed && server.prepare_landing(&mut buffer, 10).is_none());
        }
        // A damaged record fails the session, and nothing of the chunk it came in is kept.
        let (mut server, mut stream, _) = records_to_land();
        let middle = stream.len() / 2;
        stream[middle] ^= 1;
        let mut buffer = Vec::new();
        assert!(land(&mut server, &mut buffer, &stream, &[1, stream.len()]).is_err());
        assert!(buffer.is_empty());
        assert!(server.prepare_landing(&mut buffer, 10).is_none());
        assert!(!server.take().is_empty(), "the alert that tells the peer why");
    }

    #[test]
    fn key_updates_between_two_sessions_protecting_their_own_records() {
        let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), ALL_VERSIONS);
        pump(&mut client, &mut server).unwrap();
        traffic(&mut client).set_tx_limit(3);
        traffic(&mut server).set_tx_limit(4);
        for round in 0..6 {
            client.write(&payload(round, 1)).unwrap();
            server.write(&payload(round, 2)).unwrap();
            let received = pump(&mut client, &mut server).unwrap();
            assert_eq!((received.server, received.client), (payload(round, 1), payload(round, 2)));
        }
        assert_eq!(traffic(&mut client).key_updates.0, traffic(&mut server).key_updates.1);
        assert_eq!(traffic(&mut server).key_updates.0, traffic(&mut client).key_updates.1);
        assert!(traffic(&mut client).key_updates.0 >= 4);
    }

    #[test]
    fn hostile_records_after_the_handshake_fail_with_the_right_alert() {
        // (What the peer seals, or the raw bytes sent, and the alert our server answers with.)
        type Hostile = fn(&mut TlsSession) -> Vec<u8>;
        let cases: [(&str, Hostile, &str); 7] = [
            ("a plaintext handshake record", |_| vec![22, 3, 3, 0, 4, 20, 0, 0, 0], "unexpected_message"),
            ("an oversized record", |_| [&[23, 3, 3, 0x42, 0x01][..], &[0; 0x4201]].concat(), "record_overflow"),
            ("a record cut short of its tag", |_| vec![23, 3, 3, 0, 3, 1, 2, 3], "bad_record_mac"),
            ("an unknown inner type", |peer| sealed(peer, 99, b"x"), "unexpected_message"),
            ("a Finished after the handshake", |peer| sealed(peer, 22, &[20, 0, 0, 1, 0]), "unexpected_message"),
            ("a bad key update", |peer| sealed(peer, 22, &[24, 0, 0, 1, 7]), "decode_error"),
            ("a ticket sent to a server", |peer| sealed(peer, 22, &[4, 0, 0, 0]), "unexpected_message"),
        ];
        fn sealed(peer: &mut TlsSession, kind: u8, content: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            traffic(peer).seal_record(kind, content, &mut out).unwrap();
            out
        }
        for (what, hostile, alert) in cases {
            let (mut client, mut server) = session_pair(Some(&identity(FOOLSCAP)), &identity(EC_P256), ALL_VERSIONS);
            pump(&mut client, &mut server).unwrap();
            let bytes = hostile(&mut client);
            let error = server.feed(&bytes, &mut Vec::new()).unwrap_err();
            assert!(error.to_string().starts_with("TLS connection failed: "), "{what}: {error}");
            let told = client.feed(&server.take(), &mut Vec::new()).unwrap_err();
            assert_eq!(told.to_string(), format!("TLS connection failed: the peer sent the alert {alert}"), "{what}");
            assert_eq!(server.write(b"more").unwrap_err(), error, "{what}: the session stays failed");
        }
    }

    #[test]
    fn identities_are_checked_when_made() {
        let err = |cert: &[u8], key: &[u8]| Identity::from_der(cert, key).unwrap_err().to_string();
        let (cert, key) = (certificate_der(FOOLSCAP), key_der(FOOLSCAP));
        assert!(err(&cert, &key_der(FOOLSCAP_OTHER)).contains("does not belong to the certificate"));
        assert!(err(&cert, &key_der(EC_P256)).contains("does not belong to the certificate"));
        assert!(err(&cert[..100], &key).contains("not a DER X.509 certificate"));
        assert!(err(&cert, b"not a key").contains("not PKCS#8, PKCS#1 or SEC1 DER"));
        assert!(matches!(TlsSession::with_versions(Role::Server, None, ALL_VERSIONS), Err(TlsError::Identity(_))));
    }

    #[test]
    fn public_key_info_of_v1_and_v3_certificates() {
        for (file, version_present) in [(FOOLSCAP, false), (EC_P256, true), (ED25519, true)] {
            let cert = certificate_der(file);
            // The tbsCertificate starts with [0] EXPLICIT version only in v2 and v3.
            let (tbs, _) = Der(Der(&cert).expect(SEQUENCE, "").unwrap().0).expect(SEQUENCE, "").unwrap();
            assert_eq!(tbs[0] == VERSION_TAG, version_present, "{file}");
            let info = public_key_info(&cert).unwrap();
            let key = PrivateKeyDer::try_from(key_der(file)).unwrap();
            let signing_key = provider().key_provider.load_private_key(key).unwrap();
            assert_eq!(signing_key.public_key().unwrap().as_ref(), info.der, "{file}");
            assert!(info.der.ends_with(info.key));
        }
        let ed25519 = certificate_der(ED25519);
        let ed = public_key_info(&ed25519).unwrap();
        assert_eq!((ed.algorithm, ed.key.len()), (&[0x06, 0x03, 0x2b, 0x65, 0x70][..], 32));
    }

    #[test]
    fn public_key_info_refuses_every_truncation_and_trailing_bytes() {
        let cert = certificate_der(FOOLSCAP);
        for len in 0..cert.len() {
            assert!(public_key_info(&cert[..len]).is_err(), "{len}");
        }
        let mut longer = cert.clone();
        longer.push(0);
        assert_eq!(public_key_info(&longer), Err("bytes follow the certificate"));
        assert_eq!(public_key_info(&[0x30, 0x80]), Err("unsupported DER length"));
        assert_eq!(public_key_info(&[0x1f, 0x00]), Err("multi-byte DER tags do not occur in certificates"));
    }

    #[test]
    fn alert_names_follow_the_rfc() {
        assert_eq!(alert_name(AlertDescription::DecryptError), "decrypt_error");
        assert_eq!(alert_name(AlertDescription::BadRecordMac), "bad_record_mac");
        assert_eq!(alert_name(AlertDescription::from(0xfe)), "254");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..4)) {
            let mut server = TlsSession::server(&identity(ED25519)).unwrap();
            let mut client = TlsSession::client(None).unwrap();
            for chunk in &chunks {
                let _ = server.feed(chunk, &mut Vec::new());
                let _ = client.feed(chunk, &mut Vec::new());
                server.take();
                client.take();
            }
            let _ = public_key_info(&chunks[0]);
        }
    }
}
