//! The cluster handshake's proof of `cluster_secret` (PROTOCOL.md §8): a
//! challenge-response with HMAC-SHA256, so that the secret itself never
//! crosses the wire, a captured handshake cannot be replayed (each side's
//! proof covers the other side's fresh nonce), and both sides prove it.
//!
//! 1. dialer → acceptor: `{"coremq_replicant": {"name": D, "nonce": Nd}}`
//! 2. acceptor → dialer: `{"response": "CHALLENGE", "name": A, "nonce": Na}`
//! 3. dialer → acceptor:
//!    `{"coremq_replicant": {"name": D, "proof": HMAC(secret, "coremq dial" D A Na Nd)}}`
//! 4. acceptor checks that proof → dialer: `{"response": "OK: Replication
//!    request successful", "proof": HMAC(secret, "coremq accept" D A Nd Na)}`
//!    or the refusal; the dialer checks the proof before it uses the link.
//!
//! The dialer proves first: an HMAC over values the other side knows lets
//! whoever receives it test guesses of the secret offline, and the acceptor
//! is whoever reaches the client port, the dialer only a listed address.
//! (Nodes that proved the acceptor first, in step 2, are still dialled:
//! their proof is checked there.)
//!
//! D is the dialer's own `cluster_nodes` entry, A the acceptor's: the dialer
//! takes it from the entry it dialed, the acceptor from its own. Both proofs
//! name both ends, so a proof made on one link cannot be relayed onto
//! another: without A, a party listening on the address of a node that is
//! down could have passed the dialer's challenge to a live node (or back to
//! the dialer itself) and its answer back again, and been linked as that
//! node. The two proofs carry different labels, so neither can stand in for
//! the other. The fields are joined with a newline, which no name or nonce
//! holds.

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

/// The two ends of a link, by their `cluster_nodes` entries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ends<'a> {
    /// The dialer's own entry (the name it sends).
    pub dialer: &'a str,
    /// The acceptor's entry: the one the dialer dialed, the acceptor's own.
    pub acceptor: &'a str,
}

/// The acceptor's proof (step 2).
pub(crate) fn accept_proof(
    secret: &str,
    ends: Ends<'_>,
    dial_nonce: &str,
    accept_nonce: &str,
) -> String {
    hex(
        &mac(secret, "coremq accept", ends, dial_nonce, accept_nonce)
            .finalize()
            .into_bytes(),
    )
}

/// The dialer's proof (step 3).
pub(crate) fn dial_proof(
    secret: &str,
    ends: Ends<'_>,
    accept_nonce: &str,
    dial_nonce: &str,
) -> String {
    hex(&mac(secret, "coremq dial", ends, accept_nonce, dial_nonce)
        .finalize()
        .into_bytes())
}

/// Whether `proof` is the acceptor's proof, compared in constant time.
pub(crate) fn accept_proof_ok(
    secret: &str,
    ends: Ends<'_>,
    dial_nonce: &str,
    accept_nonce: &str,
    proof: &str,
) -> bool {
    verify(
        mac(secret, "coremq accept", ends, dial_nonce, accept_nonce),
        proof,
    )
}

/// Whether `proof` is the dialer's proof, compared in constant time.
pub(crate) fn dial_proof_ok(
    secret: &str,
    ends: Ends<'_>,
    accept_nonce: &str,
    dial_nonce: &str,
    proof: &str,
) -> bool {
    verify(
        mac(secret, "coremq dial", ends, accept_nonce, dial_nonce),
        proof,
    )
}

/// Whether hex `proof` is `expected`'s tag (constant-time compare).
fn verify(expected: Hmac<Sha256>, proof: &str) -> bool {
    unhex(proof).is_some_and(|p| expected.verify_slice(&p).is_ok())
}

fn mac(secret: &str, label: &str, ends: Ends<'_>, first: &str, second: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    for part in [label, ends.dialer, ends.acceptor, first, second] {
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

    const ENDS: Ends<'static> = Ends {
        dialer: "n1:1",
        acceptor: "n2:1",
    };

    #[test]
    fn proofs_check_out_only_for_their_own_inputs() {
        let (nd, na) = (nonce(), nonce());
        assert_eq!(nd.len(), 32);
        assert_ne!(nd, na);
        let a = accept_proof("s3cret", ENDS, &nd, &na);
        let d = dial_proof("s3cret", ENDS, &na, &nd);
        assert_ne!(a, d, "the labels keep the two proofs apart");
        assert!(accept_proof_ok("s3cret", ENDS, &nd, &na, &a));
        assert!(dial_proof_ok("s3cret", ENDS, &na, &nd, &d));
        assert!(
            !dial_proof_ok("s3cret", ENDS, &na, &nd, &a),
            "an accept proof is no dial proof"
        );
        assert!(!dial_proof_ok("other", ENDS, &na, &nd, &d), "wrong secret");
        let dialer = Ends {
            dialer: "n3:1",
            ..ENDS
        };
        assert!(
            !dial_proof_ok("s3cret", dialer, &na, &nd, &d),
            "another dialer"
        );
        assert!(
            !accept_proof_ok("s3cret", dialer, &nd, &na, &a),
            "another dialer"
        );
        // A node that was dialed as n2 but is n3 cannot answer for n2: its
        // proof names n3 (the relay of a challenge to another node).
        let acceptor = Ends {
            acceptor: "n3:1",
            ..ENDS
        };
        let relayed = accept_proof("s3cret", acceptor, &nd, &na);
        assert!(!accept_proof_ok("s3cret", ENDS, &nd, &na, &relayed));
        assert!(!dial_proof_ok("s3cret", acceptor, &na, &nd, &d));
        // Nor can a field slide from one end to the other.
        let swapped = Ends {
            dialer: "n2:1",
            acceptor: "n1:1",
        };
        assert!(!dial_proof_ok("s3cret", swapped, &na, &nd, &d));
        assert!(
            !dial_proof_ok("s3cret", ENDS, &nonce(), &nd, &d),
            "a new challenge"
        );
        assert!(!dial_proof_ok("s3cret", ENDS, &na, &nd, "zz"));
        assert!(!dial_proof_ok("s3cret", ENDS, &na, &nd, ""));
        assert!(!a.contains("s3cret"));
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key "key", "coremq dial\nd\nA\na\nn\n"), as Python's
        // hmac.new(b"key", msg, "sha256").hexdigest() computes it.
        let ends = Ends {
            dialer: "d",
            acceptor: "A",
        };
        assert_eq!(dial_proof("key", ends, "a", "n"), KNOWN);
    }

    const KNOWN: &str = "f20a421133601e82f5d695725de0a6d9af6a407e6cd6e6a43d2a9c33a3ffd671";
}
