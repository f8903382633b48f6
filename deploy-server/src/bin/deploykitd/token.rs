//! Tokens the daemon makes itself: the demo's admin token, and a bootstrap token when the
//! configuration has none.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// A new random token in the server's format: `dk_` and 43 characters of base64url (32
/// bytes from the thread's cryptographically secure generator).
pub(crate) fn generate() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("dk_{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_differ() {
        let (one, two) = (generate(), generate());
        assert_eq!(one.len(), 3 + 43);
        assert!(one.starts_with("dk_"));
        assert!(
            one[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(one, two);
    }
}
