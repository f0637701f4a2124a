//! TLS 1.3 records once the handshake is over, protected here rather than by rustls: a record is
//! sealed in the buffer it is sent from and opened in the buffer it arrived in, so its plaintext
//! is copied once each way (rustls' unbuffered API copies a record twice to seal it, into a
//! buffer of its own and then out). rustls keeps the secrets: key updates and session tickets go
//! through its `KernelConnection`.
//!
//! RFC 8446 section 5: a record is a 5-byte header (type 23, version 3.3, length), then the
//! AEAD-sealed inner plaintext (the content, its real type, optional zero padding) and the tag;
//! the nonce is the traffic IV with the record's sequence number XORed into its last 8 bytes.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ConnectionTrafficSecrets, Error, ExtractedSecrets, InvalidMessage};

use super::Io;

const HEADER: usize = 5;
const TAG: usize = 16;
/// The most content a record carries, and the most ciphertext one may have (RFC 8446 5.2).
const MAX_CONTENT: usize = 1 << 14;
const MAX_CIPHERTEXT: usize = MAX_CONTENT + 256;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// Where the application data of the records opened goes.
enum Plaintext<'a> {
    /// At the end of this buffer.
    Append(&'a mut Vec<u8>),
    /// To the front of the records' own buffer, after the bytes of it that are plaintext so far.
    Within(usize),
}

/// What rustls still does for the connection: new secrets on key updates, tickets for clients.
pub(super) enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update(&mut self, transmit: bool) -> Result<Keys, Error> {
        let (seq, secrets) = match (self, transmit) {
            (Kernel::Client(k), true) => k.update_tx_secret()?,
            (Kernel::Client(k), false) => k.update_rx_secret()?,
            (Kernel::Server(k), true) => k.update_tx_secret()?,
            (Kernel::Server(k), false) => k.update_rx_secret()?,
        };
        Keys::new(seq, secrets)
    }
}

/// One direction's key, IV and next sequence number.
struct Keys {
    key: RecordKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Keys, Error> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(Error::General("no record protection for the negotiated cipher suite".into())),
        };
        let iv = iv.as_ref().try_into().map_err(|_| Error::General("the traffic IV is not 12 bytes".into()))?;
        Ok(Keys { key: RecordKey::new(algorithm, key.as_ref(), RecordKey::fastest())?, iv, seq })
    }

    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        nonce
    }
}

/// Which implementation protects records.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Implementation {
    Ring,
    /// graviola's AES-GCM, on x86-64 CPUs with 512-bit VAES and VPCLMULQDQ: it uses them where
    /// ring stops at 256 bits. On such a CPU it seals a full record in about two thirds of
    /// ring's time and opens one (then moves it down) in about three quarters.
    #[cfg(target_arch = "x86_64")]
    WideAesGcm,
}

impl Implementation {
    fn name(self) -> &'static str {
        match self {
            Implementation::Ring => "ring",
            #[cfg(target_arch = "x86_64")]
            Implementation::WideAesGcm => "graviola (AVX-512)",
        }
    }
}

/// Whose AES-GCM protects TLS 1.3 records on this CPU: "ring", or "graviola (AVX-512)".
pub fn aes_gcm_implementation() -> &'static str {
    RecordKey::fastest().name()
}

/// A traffic key: the AEAD that seals and opens one direction's records.
#[allow(
    clippy::large_enum_variant,
    reason = "two per connection, both large; boxing one would add a pointer chase per record"
)]
enum RecordKey {
    Ring(LessSafeKey),
    #[cfg(target_arch = "x86_64")]
    WideAesGcm(graviola::aead::AesGcm),
}

impl RecordKey {
    /// The fastest implementation of AES-GCM this CPU runs (others are ring's in any case).
    fn fastest() -> Implementation {
        #[cfg(target_arch = "x86_64")]
        {
            // graviola's own requirements, then those of its 512-bit AES-GCM.
            let wide = std::is_x86_feature_detected!("aes")
                && std::is_x86_feature_detected!("pclmulqdq")
                && std::is_x86_feature_detected!("ssse3")
                && std::is_x86_feature_detected!("avx")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("bmi1")
                && std::is_x86_feature_detected!("bmi2")
                && std::is_x86_feature_detected!("adx")
                && std::is_x86_feature_detected!("vaes")
                && std::is_x86_feature_detected!("vpclmulqdq")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl");
            if wide {
                return Implementation::WideAesGcm;
            }
        }
        Implementation::Ring
    }

    /// A key for `algorithm` (ring's for ChaCha20-Poly1305 whatever `implementation` says).
    fn new(
        algorithm: &'static aead::Algorithm,
        key: &[u8],
        implementation: Implementation,
    ) -> Result<RecordKey, Error> {
        // Checked here for both: graviola panics on a key of the wrong length.
        let ring_key = UnboundKey::new(algorithm, key)
            .map_err(|_| Error::General("the traffic key does not fit its cipher".into()))?;
        match implementation {
            #[cfg(target_arch = "x86_64")]
            Implementation::WideAesGcm if algorithm == &aead::AES_128_GCM || algorithm == &aead::AES_256_GCM => {
                Ok(RecordKey::WideAesGcm(graviola::aead::AesGcm::new(key)))
            }
            _ => Ok(RecordKey::Ring(LessSafeKey::new(ring_key))),
        }
    }

    /// Seal `in_out` where it lies; its tag.
    fn seal(&self, nonce: [u8; NONCE_LEN], header: [u8; HEADER], in_out: &mut [u8]) -> Result<[u8; TAG], Error> {
        match self {
            RecordKey::Ring(key) => {
                let nonce = Nonce::assume_unique_for_key(nonce);
                let tag = key.seal_in_place_separate_tag(nonce, Aad::from(header), in_out);
                let tag = tag.map_err(|_| Error::EncryptError)?;
                Ok(tag.as_ref().try_into().expect("a 16-byte tag"))
            }
            #[cfg(target_arch = "x86_64")]
            RecordKey::WideAesGcm(key) => {
                let mut tag = [0; TAG];
                key.encrypt(&nonce, &header, in_out, &mut tag);
                Ok(tag)
            }
        }
    }

    /// Open the sealed body (ciphertext, then tag) at `data[body..]`, its plaintext moved to the
    /// front of `data`; that plaintext.
    fn open_within<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        header: [u8; HEADER],
        data: &'a mut [u8],
        body: usize,
    ) -> Result<&'a mut [u8], Error> {
        match self {
            RecordKey::Ring(key) => {
                let nonce = Nonce::assume_unique_for_key(nonce);
                key.open_within(nonce, Aad::from(header), data, body..).map_err(|_| Error::DecryptError)
            }
            #[cfg(target_arch = "x86_64")]
            RecordKey::WideAesGcm(key) => {
                let Some(len) = data.len().checked_sub(body + TAG) else { return Err(Error::DecryptError) };
                let (ciphertext, tag) = data[body..].split_at_mut(len);
                key.decrypt(&nonce, &header, ciphertext, tag).map_err(|_| Error::DecryptError)?;
                // graviola decrypts in place only, so a landed record is moved down after (while
                // the caches hold it); one opened where it lies (`body` 0) is not copied onto itself.
                if body > 0 {
                    data.copy_within(body..body + len, 0);
                }
                Ok(&mut data[..len])
            }
        }
    }
}

/// A TLS 1.3 connection's record protection after the handshake.
pub(super) struct Traffic {
    kernel: Kernel,
    tx: Keys,
    rx: Keys,
    /// Records sealed with one key before it is replaced (the cipher suite's confidentiality
    /// limit, as rustls keeps it).
    tx_limit: u64,
    /// Key updates sent and received.
    #[cfg(test)]
    pub(super) key_updates: (u32, u32),
}

impl Traffic {
    pub(super) fn new(kernel: Kernel, secrets: ExtractedSecrets, confidentiality_limit: u64) -> Result<Traffic, Error> {
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Traffic {
            kernel,
            tx: Keys::new(tx_seq, tx)?,
            rx: Keys::new(rx_seq, rx)?,
            tx_limit: confidentiality_limit,
            #[cfg(test)]
            key_updates: (0, 0),
        })
    }

    #[cfg(test)]
    pub(super) fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    /// What `drive` does for a rustls connection: open the records in `incoming` (in place; the
    /// application data goes to `plaintext`), then seal what was held, `write` (its parts one
    /// after the other), and our close_notify if asked for, into `io.outgoing`. How much of
    /// `incoming` is done with.
    pub(super) fn step(
        &mut self,
        incoming: &mut [u8],
        io: &mut Io,
        plaintext: &mut Vec<u8>,
        write: &[&[u8]],
    ) -> (usize, Result<(), Error>) {
        let (done, read) = self.read(incoming, io, &mut Plaintext::Append(plaintext));
        let result = read.and_then(|()| {
            if !io.pending.is_empty() {
                let pending = std::mem::take(&mut io.pending);
                self.seal(APPLICATION_DATA, &[&pending], &mut io.outgoing)?;
            }
            self.seal(APPLICATION_DATA, write, &mut io.outgoing)?;
            if io.closing && !io.close_sent {
                io.close_sent = true;
                self.seal(ALERT, &[&[1, CLOSE_NOTIFY]], &mut io.outgoing)?;
            }
            Ok(())
        });
        (done, result)
    }

    /// After `error`, the fatal alert that tells the peer why (none for an alert it sent).
    pub(super) fn fail(&mut self, error: &Error, outgoing: &mut Vec<u8>) {
        let alert = match error {
            Error::AlertReceived(_) => return,
            Error::DecryptError => AlertDescription::BadRecordMac,
            Error::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
            Error::InvalidMessage(InvalidMessage::InvalidContentType | InvalidMessage::UnexpectedMessage(_)) => {
                AlertDescription::UnexpectedMessage
            }
            Error::InvalidMessage(_) => AlertDescription::DecodeError,
            _ => AlertDescription::InternalError,
        };
        drop(self.seal_record(ALERT, &[2, u8::from(alert)], outgoing));
    }

    /// Open the records in `data`, moving the application data of each down to the front of
    /// `data`, after that of the records before it (for ciphertext received straight into the
    /// buffer its plaintext is to stay in). How much of `data` is done with, how much of its
    /// front is plaintext, and the outcome.
    pub(super) fn read_within(&mut self, data: &mut [u8], io: &mut Io) -> (usize, usize, Result<(), Error>) {
        let mut produced = Plaintext::Within(0);
        let (done, result) = self.read(data, io, &mut produced);
        let Plaintext::Within(produced) = produced else { unreachable!("read within") };
        (done, produced, result)
    }

    fn read(&mut self, incoming: &mut [u8], io: &mut Io, plaintext: &mut Plaintext<'_>) -> (usize, Result<(), Error>) {
        let mut start = 0;
        while !io.peer_closed {
            let rest = &incoming[start..];
            let [kind, major, _, hi, lo, ..] = *rest else { break };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if kind != APPLICATION_DATA || major != 3 {
                return (start, Err(Error::InvalidMessage(InvalidMessage::InvalidContentType)));
            }
            if len > MAX_CIPHERTEXT {
                return (start, Err(Error::PeerSentOversizedRecord));
            }
            if rest.len() < HEADER + len {
                break; // the rest of the record has not come yet
            }
            // (Copied: plaintext moved down may overwrite the header while it is read.)
            let header = [kind, major, rest[2], hi, lo];
            let body = start + HEADER;
            let to = match plaintext {
                Plaintext::Append(_) => body,
                Plaintext::Within(produced) => *produced,
            };
            let nonce = self.rx.nonce();
            let sealed = &mut incoming[to..body + len];
            let inner = match self.rx.key.open_within(nonce, header, sealed, body - to) {
                Ok(inner) => inner,
                Err(e) => return (start, Err(e)),
            };
            self.rx.seq += 1;
            start = body + len;
            // The inner plaintext: the content, its type, then zero padding.
            let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                return (start, Err(Error::InvalidMessage(InvalidMessage::InvalidContentType)));
            };
            let (content, kind) = (&inner[..end], inner[end]);
            if content.len() > MAX_CONTENT {
                return (start, Err(Error::PeerSentOversizedRecord));
            }
            let handled = match kind {
                APPLICATION_DATA => {
                    match plaintext {
                        Plaintext::Append(buffer) => buffer.extend_from_slice(content),
                        Plaintext::Within(produced) => *produced += content.len(),
                    }
                    Ok(())
                }
                ALERT => match *content {
                    [_, CLOSE_NOTIFY] => {
                        io.peer_closed = true;
                        Ok(())
                    }
                    [_, USER_CANCELED] => Ok(()), // a warning; close_notify follows
                    [_, alert] => Err(Error::AlertReceived(AlertDescription::from(alert))),
                    _ => Err(Error::InvalidMessage(InvalidMessage::MessageTooShort)),
                },
                HANDSHAKE => self.handshake(content, &mut io.outgoing),
                _ => Err(Error::InvalidMessage(InvalidMessage::InvalidContentType)),
            };
            if let Err(e) = handled {
                return (start, Err(e));
            }
        }
        (start, Ok(()))
    }

    /// The handshake messages a record carried after the handshake: session tickets (which a
    /// client gives rustls) and key updates. A message may not span records here.
    fn handshake(&mut self, mut content: &[u8], outgoing: &mut Vec<u8>) -> Result<(), Error> {
        if content.is_empty() {
            return Err(Error::InvalidMessage(InvalidMessage::InvalidEmptyPayload));
        }
        while let [kind, a, b, c, ref rest @ ..] = *content {
            let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            if rest.len() < len {
                return Err(Error::InvalidMessage(InvalidMessage::MessageTooShort));
            }
            let (body, rest) = rest.split_at(len);
            match (kind, &mut self.kernel) {
                (NEW_SESSION_TICKET, Kernel::Client(kernel)) => kernel.handle_new_session_ticket(body)?,
                (KEY_UPDATE, _) => {
                    // Each side's keys change at a record boundary.
                    let ([requested @ (0 | 1)], []) = (body, rest) else {
                        return Err(Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate));
                    };
                    self.rx = self.kernel.update(false)?;
                    #[cfg(test)]
                    {
                        self.key_updates.1 += 1;
                    }
                    if *requested == 1 {
                        self.update_tx(outgoing)?;
                    }
                }
                _ => {
                    return Err(Error::InvalidMessage(InvalidMessage::UnexpectedMessage(
                        "a handshake message after the handshake other than a ticket or key update",
                    )))
                }
            }
            content = rest;
        }
        if content.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidMessage(InvalidMessage::MessageTooShort))
        }
    }

    /// Tell the peer our key changes (sealed with the old one), then change it.
    fn update_tx(&mut self, outgoing: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], outgoing)?;
        self.tx = self.kernel.update(true)?;
        #[cfg(test)]
        {
            self.key_updates.0 += 1;
        }
        Ok(())
    }

    /// Seal `parts`, one after the other, as records of type `kind` at the end of `outgoing`:
    /// each record's content is copied from as many parts as fill it and sealed where it lies,
    /// so a part that lives elsewhere (a large string's bytes object) is copied once, here.
    fn seal(&mut self, kind: u8, parts: &[&[u8]], outgoing: &mut Vec<u8>) -> Result<(), Error> {
        let mut left: usize = parts.iter().map(|part| part.len()).sum();
        outgoing.reserve(left + left.div_ceil(MAX_CONTENT) * (HEADER + 1 + TAG));
        let (mut parts, mut part): (_, &[u8]) = (parts.iter(), &[]);
        while left > 0 {
            if self.tx.seq + 1 >= self.tx_limit {
                self.update_tx(outgoing)?; // (the key update's own record is the last one)
            }
            let start = outgoing.len();
            outgoing.extend_from_slice(&[0; HEADER]);
            let mut room = MAX_CONTENT.min(left);
            left -= room;
            while room > 0 {
                while part.is_empty() {
                    part = parts.next().expect("the parts hold `left` more bytes");
                }
                let (now, rest) = part.split_at(part.len().min(room));
                outgoing.extend_from_slice(now);
                (part, room) = (rest, room - now.len());
            }
            self.finish_record(kind, start, outgoing)?;
        }
        Ok(())
    }

    /// Seal `content` as one record of type `kind` at the end of `outgoing`.
    pub(super) fn seal_record(&mut self, kind: u8, content: &[u8], outgoing: &mut Vec<u8>) -> Result<(), Error> {
        let start = outgoing.len();
        outgoing.extend_from_slice(&[0; HEADER]);
        outgoing.extend_from_slice(content);
        self.finish_record(kind, start, outgoing)
    }

    /// Seal the record at `outgoing[start..]`: room for its header, then its content.
    fn finish_record(&mut self, kind: u8, start: usize, outgoing: &mut Vec<u8>) -> Result<(), Error> {
        outgoing.push(kind);
        let length = outgoing.len() - start - HEADER + TAG;
        let [hi, lo] = u16::try_from(length).expect("at most one record's content").to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        outgoing[start..start + HEADER].copy_from_slice(&header);
        let nonce = self.tx.nonce();
        match self.tx.key.seal(nonce, header, &mut outgoing[start + HEADER..]) {
            Ok(tag) => {
                outgoing.extend_from_slice(&tag);
                self.tx.seq += 1;
                Ok(())
            }
            Err(e) => {
                outgoing.truncate(start);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed_by(key: &RecordKey, nonce: [u8; NONCE_LEN], header: [u8; HEADER], content: &[u8]) -> Vec<u8> {
        let mut sealed = content.to_vec();
        let tag = key.seal(nonce, header, &mut sealed).expect("sealed");
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// Every implementation this CPU runs, for `algorithm` and `key`.
    fn implementations(algorithm: &'static aead::Algorithm, key: &[u8]) -> Vec<RecordKey> {
        let mut keys = vec![RecordKey::new(algorithm, key, Implementation::Ring).unwrap()];
        if RecordKey::fastest() != Implementation::Ring {
            keys.push(RecordKey::new(algorithm, key, RecordKey::fastest()).unwrap());
        }
        keys
    }

    proptest! {
        /// Whichever implementation seals a record, each opens it, wherever its body lies after the
        /// front it is moved to, and each refuses it once any byte of it or its header changes.
        #[test]
        fn implementations_agree_byte_for_byte(
            wide_key in any::<bool>(),
            key in proptest::collection::vec(any::<u8>(), 32),
            nonce in any::<[u8; NONCE_LEN]>(),
            header in any::<[u8; HEADER]>(),
            content in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), MAX_CONTENT - 20..=MAX_CONTENT + 1),
            ],
            gap in 0usize..64,
            flip in any::<proptest::sample::Index>(),
        ) {
            let algorithm = if wide_key { &aead::AES_256_GCM } else { &aead::AES_128_GCM };
            let keys = implementations(algorithm, &key[..algorithm.key_len()]);
            let sealed = sealed_by(&keys[0], nonce, header, &content);
            for key in &keys {
                prop_assert_eq!(&sealed_by(key, nonce, header, &content), &sealed);
                let mut data = vec![0xEE; gap];
                data.extend_from_slice(&sealed);
                let opened = key.open_within(nonce, header, &mut data, gap).expect("opened");
                prop_assert_eq!(&*opened, &content[..]);

                let mut damaged = sealed.clone();
                damaged[flip.index(sealed.len())] ^= 1;
                prop_assert!(matches!(key.open_within(nonce, header, &mut damaged, 0), Err(Error::DecryptError)));
                let mut other_header = header;
                other_header[flip.index(HEADER)] ^= 0x80;
                let mut data = sealed.clone();
                prop_assert!(matches!(key.open_within(nonce, other_header, &mut data, 0), Err(Error::DecryptError)));
            }
        }
    }

    #[test]
    fn a_body_shorter_than_a_tag_is_refused() {
        for key in implementations(&aead::AES_128_GCM, &[7; 16]) {
            for len in 0..TAG {
                let mut data = vec![0; 3 + len];
                assert!(matches!(key.open_within([0; NONCE_LEN], [0; HEADER], &mut data, 3), Err(Error::DecryptError)));
            }
        }
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        for implementation in [Implementation::Ring, RecordKey::fastest()] {
            for len in [0, 15, 17, 32] {
                assert!(RecordKey::new(&aead::AES_128_GCM, &vec![1; len], implementation).is_err(), "{len}");
            }
        }
    }

    /// ChaCha20-Poly1305 stays with ring whatever the CPU.
    #[test]
    fn chacha_is_ring_s() {
        let key = RecordKey::new(&aead::CHACHA20_POLY1305, &[3; 32], RecordKey::fastest()).unwrap();
        assert!(matches!(key, RecordKey::Ring(_)));
    }
}
