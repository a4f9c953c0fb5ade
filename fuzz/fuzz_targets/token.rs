//! Bearer, join and server tokens (`skiff_api::token`), as read from an Authorization
//! header, `skiff agent --token` and `skiff server --token`. Parsing never panics; each
//! form prints back (canonically: trimmed, the CA hash in lowercase) to a string that
//! parses to the same token; a join token is never also a server token; and no token's
//! Debug form depends on its secret, so a log line cannot leak one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::token::{JoinToken, Role, ServerToken, Token};

skiff_fuzz::cap_allocations!();

/// A secret of the right shape that differs from `secret`.
fn other_secret(secret: &str) -> String {
    let other = "0".repeat(secret.len());
    if other == secret {
        "1".repeat(secret.len())
    } else {
        other
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = skiff_fuzz::text(data) else {
        return;
    };
    if let Some(role) = Role::parse(input) {
        assert_eq!(role.as_str(), input);
    }
    if let Some(token) = Token::parse(input) {
        assert_eq!(token.to_string(), input.trim());
        assert_eq!(Token::parse(&token.to_string()), Some(token.clone()));
        let other = Token {
            secret: other_secret(&token.secret),
            ..token.clone()
        };
        assert_eq!(
            format!("{token:?}"),
            format!("{other:?}"),
            "Debug shows the secret"
        );
    }
    let join = JoinToken::parse(input);
    let server = ServerToken::parse(input);
    assert!(
        join.is_err() || server.is_err(),
        "{input:?} reads as both a join token and a server token"
    );
    if let Ok(join) = join {
        let printed = join.to_string();
        assert_eq!(
            JoinToken::parse(&printed),
            Ok(join.clone()),
            "{input:?} printed as {printed:?}"
        );
        let mut other = join.clone();
        other.token.secret = other_secret(&join.token.secret);
        assert_eq!(
            format!("{join:?}"),
            format!("{other:?}"),
            "Debug shows the secret"
        );
    }
    if let Ok(server) = server {
        let printed = server.to_string();
        assert_eq!(
            ServerToken::parse(&printed),
            Ok(server.clone()),
            "{input:?} printed as {printed:?}"
        );
        let other = ServerToken {
            secret: other_secret(&server.secret),
            ..server.clone()
        };
        assert_eq!(
            format!("{server:?}"),
            format!("{other:?}"),
            "Debug shows the secret"
        );
    }
});
