//! Signing per the Standard Webhooks specification: HMAC-SHA256 over
//! `<webhook-id>.<webhook-timestamp>.<body>` with the decoded `whsec_` secret,
//! sent as `v1,<base64>`; several signatures are separated by spaces.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A signing secret: `whsec_` and the base64 of 24 to 64 random bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("must start with {PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("must be {PREFIX} and base64"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "must hold 24 to 64 bytes of key; this one holds {}",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    fn sign(&self, content: &[u8]) -> String {
        // An HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(content);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// The `webhook-signature` header: one `v1,` signature per secret.
pub fn signature(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.sign(&content)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specification_example() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_secret_signs_during_a_rotation() {
        let a = Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 32]))).unwrap();
        let b = Secret::parse(&format!("whsec_{}", STANDARD.encode([2u8; 32]))).unwrap();
        let both = signature(&[a.clone(), b], "msg_1", 1, b"{}");
        let parts: Vec<_> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[a], "msg_1", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn refuses_secrets_that_are_not_whsec_base64_of_enough_bytes() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        let short = format!("whsec_{}", STANDARD.encode([1u8; 8]));
        assert!(Secret::parse(&short).unwrap_err().contains("holds 8"));
    }
}
