//! The cluster handshake's proof of `cluster_secret` (PROTOCOL.md §8): a
//! challenge-response with HMAC-SHA256, so that the secret itself never
//! crosses the wire, a captured handshake cannot be replayed (each side's
//! proof covers the other side's fresh nonce), and both sides prove it.
//!
//! 1. dialer → acceptor: `{"coremq_replicant": {"name": N, "nonce": Nd}}`
//! 2. acceptor → dialer: `{"response": "CHALLENGE", "nonce": Na,
//!    "proof": HMAC(secret, "coremq accept" N Nd Na)}`
//! 3. dialer checks that proof, then → acceptor:
//!    `{"coremq_replicant": {"name": N, "proof": HMAC(secret, "coremq dial" N Na Nd)}}`
//! 4. acceptor → dialer: `OK: Replication request successful` or the refusal.
//!
//! The two proofs carry different labels, so neither can stand in for the
//! other. The fields are joined with a newline, which no name or nonce holds.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// An acceptor's challenge waiting for its answer (one per connection, one
/// answer each).
#[derive(Debug)]
pub(crate) struct Pending {
    /// The name the dialer gave.
    pub name: String,
    /// The dialer's nonce.
    pub dial_nonce: String,
    /// Ours.
    pub accept_nonce: String,
}

/// Longest nonce accepted from a peer.
pub(crate) const MAX_NONCE: usize = 64;

/// The text of step 2's reply.
pub(crate) const CHALLENGE: &str = "CHALLENGE";

/// A fresh nonce: 128 random bits as 32 hex digits.
pub(crate) fn nonce() -> String {
    hex(uuid::Uuid::new_v4().as_bytes())
}

/// The acceptor's proof (step 2).
pub(crate) fn accept_proof(
    secret: &str,
    name: &str,
    dial_nonce: &str,
    accept_nonce: &str,
) -> String {
    hex(
        &mac(secret, "coremq accept", name, dial_nonce, accept_nonce)
            .finalize()
            .into_bytes(),
    )
}

/// The dialer's proof (step 3).
pub(crate) fn dial_proof(secret: &str, name: &str, accept_nonce: &str, dial_nonce: &str) -> String {
    hex(&mac(secret, "coremq dial", name, accept_nonce, dial_nonce)
        .finalize()
        .into_bytes())
}

/// Whether `proof` is the acceptor's proof, compared in constant time.
pub(crate) fn accept_proof_ok(
    secret: &str,
    name: &str,
    dial_nonce: &str,
    accept_nonce: &str,
    proof: &str,
) -> bool {
    verify(
        mac(secret, "coremq accept", name, dial_nonce, accept_nonce),
        proof,
    )
}

/// Whether `proof` is the dialer's proof, compared in constant time.
pub(crate) fn dial_proof_ok(
    secret: &str,
    name: &str,
    accept_nonce: &str,
    dial_nonce: &str,
    proof: &str,
) -> bool {
    verify(
        mac(secret, "coremq dial", name, accept_nonce, dial_nonce),
        proof,
    )
}

/// Whether hex `proof` is `expected`'s tag (constant-time compare).
fn verify(expected: Hmac<Sha256>, proof: &str) -> bool {
    unhex(proof).is_some_and(|p| expected.verify_slice(&p).is_ok())
}

fn mac(secret: &str, label: &str, name: &str, first: &str, second: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    for part in [label, name, first, second] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_out_only_for_their_own_inputs() {
        let (nd, na) = (nonce(), nonce());
        assert_eq!(nd.len(), 32);
        assert_ne!(nd, na);
        let a = accept_proof("s3cret", "n1:1", &nd, &na);
        let d = dial_proof("s3cret", "n1:1", &na, &nd);
        assert_ne!(a, d, "the labels keep the two proofs apart");
        assert!(accept_proof_ok("s3cret", "n1:1", &nd, &na, &a));
        assert!(dial_proof_ok("s3cret", "n1:1", &na, &nd, &d));
        assert!(
            !dial_proof_ok("s3cret", "n1:1", &na, &nd, &a),
            "an accept proof is no dial proof"
        );
        assert!(
            !dial_proof_ok("other", "n1:1", &na, &nd, &d),
            "wrong secret"
        );
        assert!(
            !dial_proof_ok("s3cret", "n2:1", &na, &nd, &d),
            "another name"
        );
        assert!(
            !dial_proof_ok("s3cret", "n1:1", &nonce(), &nd, &d),
            "a new challenge"
        );
        assert!(!dial_proof_ok("s3cret", "n1:1", &na, &nd, "zz"));
        assert!(!dial_proof_ok("s3cret", "n1:1", &na, &nd, ""));
        assert!(!a.contains("s3cret"));
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key "key", "coremq dial\nn\na\nd\n"), as Python's
        // hmac.new(b"key", msg, "sha256").hexdigest() computes it.
        assert_eq!(dial_proof("key", "n", "a", "d"), KNOWN);
    }

    const KNOWN: &str = "7653f86f60bd5e394bce022d8545c09a1c185dd3dd30ec8f2746eec8b807bf36";
}
