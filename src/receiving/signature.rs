//! `X-Hub-Signature` verification: HMAC-SHA1 of the exact request body, keyed with the app's client
//! secret. Pure: bytes in, a verdict out.

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// The header Intercom signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature";

const PREFIX: &str = "sha1=";
const MAC_LEN: usize = 20;

/// One Intercom app's `client_secret`. Its `Debug` never shows the value; [`ExposeSecret`] hands it on.
#[derive(Clone, Debug)]
pub struct ClientSecret {
    value: SecretString,
    /// The HMAC keyed once, cloned per verification. Its `Debug` shows no state.
    keyed: HmacSha1,
}

impl ClientSecret {
    /// Rejects an empty (or whitespace-only) secret: a receiver must fail closed.
    pub fn new(value: impl Into<String>) -> Result<Self, SecretError> {
        let value = SecretString::from(value.into());
        if value.expose_secret().trim().is_empty() {
            return Err(SecretError::Empty);
        }
        let keyed = HmacSha1::new_from_slice(value.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        Ok(Self { value, keyed })
    }

    /// The `X-Hub-Signature` header value for `body`: `sha1=<40 lower-case hex>`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(body);
        format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
    }

    fn matches(&self, body: &[u8], tag: &[u8; MAC_LEN]) -> bool {
        let mut mac = self.keyed.clone();
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(tag).is_ok()
    }
}

/// The secret itself, for callers that must hand it on (never log it).
impl ExposeSecret<str> for ClientSecret {
    fn expose_secret(&self) -> &str {
        self.value.expose_secret()
    }
}

/// The secrets a receiver accepts: one normally, two while rotating. Never empty.
#[derive(Clone, Debug)]
pub struct ClientSecrets(Vec<ClientSecret>);

impl ClientSecrets {
    /// Parses `INTERCOM_CLIENT_SECRET`: one or more secrets separated by commas. Whitespace around each
    /// is ignored; an empty list or an empty entry is an error.
    pub fn parse(list: &str) -> Result<Self, SecretError> {
        if list.trim().is_empty() {
            return Err(SecretError::NoSecrets);
        }
        let secrets = list
            .split(',')
            .enumerate()
            .map(|(index, s)| ClientSecret::new(s.trim()).map_err(|_| SecretError::EmptyEntry { index }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(secrets))
    }

    pub fn new(secrets: Vec<ClientSecret>) -> Result<Self, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::NoSecrets);
        }
        Ok(Self(secrets))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first secret: the one used to sign outgoing test deliveries.
    pub fn primary(&self) -> &ClientSecret {
        &self.0[0]
    }

    /// Verifies `header` (the `X-Hub-Signature` value, if present) against `body` with every secret.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<Verified, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let tag = parse_header(header)?;
        self.0
            .iter()
            .position(|secret| secret.matches(body, &tag))
            .map(|secret_index| Verified { secret_index })
            .ok_or(SignatureError::Mismatch)
    }
}

/// A successful verification: which configured secret matched (its position in the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub secret_index: usize,
}

fn parse_header(raw: &[u8]) -> Result<[u8; MAC_LEN], SignatureError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| SignatureError::Malformed(Malformed::NotText))?
        .trim();
    if text.is_empty() {
        return Err(SignatureError::Malformed(Malformed::Empty));
    }
    let hex_part = match text.split_once('=') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("sha1") => rest.trim(),
        _ => return Err(SignatureError::Malformed(Malformed::WrongPrefix)),
    };
    if hex_part.len() != MAC_LEN * 2 {
        return Err(SignatureError::Malformed(Malformed::WrongLength {
            found: hex_part.len(),
        }));
    }
    let mut tag = [0u8; MAC_LEN];
    hex::decode_to_slice(hex_part, &mut tag).map_err(|_| SignatureError::Malformed(Malformed::NotHex))?;
    Ok(tag)
}

/// Why a delivery's signature was refused. Each maps to a 401; none is retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Hub-Signature header is missing")]
    Missing,
    #[error("the X-Hub-Signature header is malformed: {0}")]
    Malformed(Malformed),
    #[error("the X-Hub-Signature does not match the body for any configured client secret")]
    Mismatch,
}

impl SignatureError {
    /// A short stable code, for JSON errors and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the header is empty")]
    Empty,
    #[error("the header is not text")]
    NotText,
    #[error("the header was sent more than once")]
    Repeated,
    #[error("expected the prefix \"sha1=\"")]
    WrongPrefix,
    #[error("expected 40 hex digits after \"sha1=\", found {found} characters")]
    WrongLength { found: usize },
    #[error("the digest is not hexadecimal")]
    NotHex,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a client secret must not be empty")]
    Empty,
    #[error("no client secret is configured")]
    NoSecrets,
    #[error("client secret number {} in the comma-separated list is empty", index + 1)]
    EmptyEntry { index: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed outside this code, with
    /// `openssl dgst -sha1 -hmac <secret> < file` over each fixture's exact bytes.
    const FIXTURE_SECRET: &str = "test-client-secret";
    const FIXTURE_VECTORS: &[(&str, &str)] = &include!("../../tests/fixtures/signature_vectors.in");

    fn secrets(list: &str) -> ClientSecrets {
        ClientSecrets::parse(list).unwrap()
    }

    #[test]
    fn rfc2202_vector() {
        // RFC 2202, test case 2.
        let secret = ClientSecret::new("Jefe").unwrap();
        assert_eq!(
            secret.sign(b"what do ya want for nothing?"),
            "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn every_fixture_verifies_with_its_independent_vector() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/events/notifications");
        let s = secrets(FIXTURE_SECRET);
        assert!(
            FIXTURE_VECTORS.len() >= 10,
            "one vector per captured notification"
        );
        for (file, expected) in FIXTURE_VECTORS {
            let body = std::fs::read(format!("{dir}/{file}")).unwrap();
            let header = format!("sha1={expected}");
            assert_eq!(
                s.verify(Some(header.as_bytes()), &body),
                Ok(Verified { secret_index: 0 }),
                "{file}"
            );
            assert_eq!(s.primary().sign(&body), header, "{file}");
        }
    }

    #[test]
    fn accepts_upper_case_and_surrounding_whitespace() {
        let s = secrets("Jefe");
        let body = b"what do ya want for nothing?";
        for header in [
            "sha1=EFFCDF6AE5EB2FA2D27416D5F184DF9C259A7C79",
            "  sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79\t",
            "SHA1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ] {
            assert!(s.verify(Some(header.as_bytes()), body).is_ok(), "{header:?}");
        }
    }

    #[test]
    fn distinct_errors() {
        let s = secrets("Jefe");
        let body = b"what do ya want for nothing?";
        let check = |h: Option<&str>| s.verify(h.map(str::as_bytes), body).unwrap_err();
        assert_eq!(check(None), SignatureError::Missing);
        assert_eq!(check(Some("")), SignatureError::Malformed(Malformed::Empty));
        assert_eq!(
            check(Some("sha256=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")),
            SignatureError::Malformed(Malformed::WrongPrefix)
        );
        assert_eq!(
            check(Some("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")),
            SignatureError::Malformed(Malformed::WrongPrefix)
        );
        assert_eq!(
            check(Some("sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c7")),
            SignatureError::Malformed(Malformed::WrongLength { found: 39 })
        );
        assert_eq!(
            check(Some("sha1=zffcdf6ae5eb2fa2d27416d5f184df9c259a7c79")),
            SignatureError::Malformed(Malformed::NotHex)
        );
        assert_eq!(
            check(Some("sha1=0000000000000000000000000000000000000000")),
            SignatureError::Mismatch
        );
        assert_eq!(
            s.verify(Some(&[0xff, 0xfe]), body).unwrap_err(),
            SignatureError::Malformed(Malformed::NotText)
        );
    }

    #[test]
    fn any_configured_secret_verifies_and_reports_its_index() {
        let s = secrets("old-secret, Jefe ,third");
        assert_eq!(s.len(), 3);
        let header = "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79";
        assert_eq!(
            s.verify(Some(header.as_bytes()), b"what do ya want for nothing?"),
            Ok(Verified { secret_index: 1 })
        );
        let other = secrets("old-secret,third");
        assert_eq!(
            other.verify(Some(header.as_bytes()), b"what do ya want for nothing?"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn empty_secrets_are_rejected() {
        assert_eq!(ClientSecrets::parse("").unwrap_err(), SecretError::NoSecrets);
        assert_eq!(ClientSecrets::parse("  ").unwrap_err(), SecretError::NoSecrets);
        assert_eq!(
            ClientSecrets::parse("a,,b").unwrap_err(),
            SecretError::EmptyEntry { index: 1 }
        );
        assert_eq!(
            ClientSecrets::parse("a, ").unwrap_err(),
            SecretError::EmptyEntry { index: 1 }
        );
        assert_eq!(ClientSecret::new(" ").unwrap_err(), SecretError::Empty);
        assert_eq!(ClientSecrets::new(vec![]).unwrap_err(), SecretError::NoSecrets);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = secrets("super-secret-value,another-one");
        let shown = format!("{s:?} {:?}", s.primary());
        assert!(!shown.contains("super-secret-value"), "{shown}");
        assert!(!shown.contains("another-one"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
        // Handed on only when asked for.
        assert_eq!(s.primary().expose_secret(), "super-secret-value");
    }
}
