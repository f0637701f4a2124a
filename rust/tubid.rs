//! foolscap identities and addresses: TubIDs (the hash of a Tub's certificate) and FURLs
//! (`pb://TUBID@HINT,HINT/NAME`), parsed and formatted as foolscap does.

use std::fmt;

use sha1::{Digest, Sha1};

/// RFC 4648 base32, lowercase, as foolscap writes TubIDs and swissnums.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A TubID is 160 bits: 32 base32 characters.
pub const TUB_ID_LEN: usize = 32;

/// Lowercase unpadded base32 of `bytes`.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Whether every character is in the base32 alphabet (either case, as foolscap accepts).
pub fn is_base32(s: &str) -> bool {
    s.bytes().all(|c| ALPHABET.contains(&c.to_ascii_lowercase()))
}

/// foolscap's TubID: base32 of SHA-1 over the certificate's DER encoding.
pub fn tub_id(certificate_der: &[u8]) -> String {
    base32(&Sha1::digest(certificate_der))
}

/// What is wrong with a FURL or hint; the message names the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FurlError(pub String);

impl fmt::Display for FurlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FurlError {}

/// `pb://TUBID@HINTS/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Furl {
    pub tub_id: String,
    /// Connection hints, as written (see [`Hint::parse`]).
    pub hints: Vec<String>,
    /// The swissnum: the rest after the `/` that ends the hints.
    pub name: String,
}

impl Furl {
    /// Parse as foolscap does: only the first 32 characters of the TubID count (the rest is
    /// reserved for extensions), hints may be absent but none may be empty.
    pub fn parse(furl: &str) -> Result<Furl, FurlError> {
        let rest = furl
            .strip_prefix("pb://")
            .ok_or_else(|| FurlError(format!("a FURL starts with 'pb://': {}", shorten(furl))))?;
        let (tub, rest) = rest.split_once('@').ok_or_else(|| FurlError("a FURL needs '@' after the TubID".into()))?;
        if tub.is_empty() {
            return Err(FurlError("the FURL's TubID is empty".into()));
        }
        let (hints, name) =
            rest.split_once('/').ok_or_else(|| FurlError("a FURL needs '/' and a name after the hints".into()))?;
        if name.is_empty() {
            return Err(FurlError("the FURL's name (after the hints) is empty".into()));
        }
        let tub_id: String = tub.chars().take(TUB_ID_LEN).collect();
        if tub_id.len() < TUB_ID_LEN || !is_base32(&tub_id) {
            return Err(FurlError(format!("'{tub_id}' is not a valid TubID (32 base32 characters)")));
        }
        let hints: Vec<String> =
            if hints.is_empty() { Vec::new() } else { hints.split(',').map(str::to_owned).collect() };
        if hints.iter().any(String::is_empty) {
            return Err(FurlError("no connection hint may be empty".into()));
        }
        Ok(Furl { tub_id: tub_id.to_ascii_lowercase(), hints, name: name.to_owned() })
    }
}

impl fmt::Display for Furl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pb://{}@{}/{}", self.tub_id, self.hints.join(","), self.name)
    }
}

/// A connection hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// `tcp:HOST:PORT`, or the legacy `HOST:PORT`; an IPv6 host without its brackets.
    Tcp { host: String, port: u16 },
    /// `TYPE:...` of another type (tor, i2p, ...): kept for handlers that know it.
    Other { kind: String, rest: String },
}

impl Hint {
    pub fn parse(hint: &str) -> Result<Hint, FurlError> {
        let bad = |why: &str| FurlError(format!("bad connection hint '{}': {why}", shorten(hint)));
        if hint.is_empty() || hint.contains([',', '/']) {
            return Err(bad("a hint is TYPE:... without ',' or '/'"));
        }
        let (kind, rest) = hint.split_once(':').ok_or_else(|| bad("a hint is TYPE:... or HOST:PORT"))?;
        // Legacy HOST:PORT (a name or dotted quad, then only digits).
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            if !is_dns_name(kind) {
                return Err(bad("the host is not a DNS name or IPv4 address"));
            }
            return Ok(Hint::Tcp { host: kind.to_owned(), port: port(rest).ok_or_else(|| bad("bad port"))? });
        }
        if kind != "tcp" {
            if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad("the type must be alphanumeric"));
            }
            return Ok(Hint::Other { kind: kind.to_owned(), rest: rest.to_owned() });
        }
        let (host, port_text) = rest.rsplit_once(':').ok_or_else(|| bad("tcp hints are tcp:HOST:PORT"))?;
        let port = port(port_text).ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        let host = match host.strip_prefix('[') {
            Some(bracketed) => {
                let inner = bracketed.strip_suffix(']').ok_or_else(|| bad("an IPv6 address needs its ']'"))?;
                let (address, zone) = inner.split_once('%').unwrap_or((inner, ""));
                let hexish = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
                if address.is_empty()
                    || !address.bytes().all(hexish)
                    || !zone.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
                {
                    return Err(bad("not an IPv6 address"));
                }
                inner.to_owned()
            }
            None if is_dns_name(host) => host.to_owned(),
            None => return Err(bad("the host is not a DNS name, IPv4 address or [IPv6] address")),
        };
        Ok(Hint::Tcp { host, port })
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p > 0)
}

/// A FURL or hint quoted in an error, without revealing much of a swissnum.
fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_lowercase_unpadded() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "my");
        assert_eq!(base32(b"fo"), "mzxq");
        assert_eq!(base32(b"foo"), "mzxw6");
        assert_eq!(base32(b"foob"), "mzxw6yq");
        assert_eq!(base32(b"fooba"), "mzxw6ytb");
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn tub_id_of_the_captured_digest() {
        // sha1(DER) = 7edbb582...d26b in foolscap's capture.
        let digest = hex::decode("7edbb5821917b30c37f3f32ea128f04c3963d26b").unwrap();
        assert_eq!(base32(&digest), "p3n3laqzc6zqyn7t6mxkckhqjq4whutl");
        assert_eq!(tub_id(b"").len(), TUB_ID_LEN);
    }

    #[test]
    fn furls_round_trip_and_errors_name_the_part() {
        let text = "pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutl@tcp:127.0.0.1:1234,[::1]:80/echo";
        let furl = Furl::parse(text).unwrap();
        assert_eq!(furl.hints, ["tcp:127.0.0.1:1234", "[::1]:80"]);
        assert_eq!(furl.name, "echo");
        assert_eq!(furl.to_string(), text);
        let extended = Furl::parse("pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutlEXTRA@/x/y").unwrap();
        assert_eq!(
            (extended.tub_id.as_str(), extended.hints.len(), extended.name.as_str()),
            ("p3n3laqzc6zqyn7t6mxkckhqjq4whutl", 0, "x/y")
        );
        for (bad, part) in [
            ("http://x@y/z", "pb://"),
            ("pb://abc", "'@'"),
            ("pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutl@h:1", "'/'"),
            ("pb://p3n3laqzc6zqyn7t6mxkckhqjq4whut1@h:1/x", "TubID"),
            ("pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutl@a:1,,b:2/x", "empty"),
            ("pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutl@h:1/", "name"),
        ] {
            let err = Furl::parse(bad).unwrap_err();
            assert!(err.0.contains(part), "{bad}: {err}");
        }
    }

    #[test]
    fn hints() {
        let tcp = |h: &str, p| Hint::Tcp { host: h.into(), port: p };
        assert_eq!(Hint::parse("tcp:example.org:80"), Ok(tcp("example.org", 80)));
        assert_eq!(Hint::parse("example.org:80"), Ok(tcp("example.org", 80)));
        assert_eq!(Hint::parse("10.0.0.1:9"), Ok(tcp("10.0.0.1", 9)));
        assert_eq!(Hint::parse("tcp:[::1]:80"), Ok(tcp("::1", 80)));
        assert_eq!(Hint::parse("tcp:[fe80::1%en0]:80"), Ok(tcp("fe80::1%en0", 80)));
        assert_eq!(
            Hint::parse("tor:abc.onion:80"),
            Ok(Hint::Other { kind: "tor".into(), rest: "abc.onion:80".into() })
        );
        for bad in ["tcp:host:0", "tcp:host:99999", "tcp:[::1:80", "tcp:ho st:1", "tcp:host", "noport", "t-r:x:1", ""] {
            assert!(Hint::parse(bad).is_err(), "{bad}");
        }
    }
}
