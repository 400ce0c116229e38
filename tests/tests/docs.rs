//! The README's close-code table is what clients are built from, so it must
//! agree with the one table in `shared_proto::close`; the drop reasons
//! operators alert on must be the ones the gateway counts.

use shared_proto::{CloseCode, ReconnectAdvice};
use tests::procs::repo_root;

#[test]
fn readme_close_codes_match_the_protocol_table() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("### Close codes")
        .nth(1)
        .expect("README has a Close codes section");
    let mut documented = 0;
    for row in section.lines().take_while(|line| !line.starts_with("##")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(code) = cells.get(1).and_then(|cell| cell.parse::<u16>().ok()) else {
            continue;
        };
        let advice_text = cells.get(3).copied().unwrap_or_default();
        let code = CloseCode::from_u16(code)
            .unwrap_or_else(|| panic!("README documents {code}, which the protocol lacks"));
        let expected_words = match code.reconnect_advice() {
            ReconnectAdvice::Never => "not reconnect",
            ReconnectAdvice::AfterNewToken => "new token",
            ReconnectAdvice::Backoff => "with backoff",
            ReconnectAdvice::AfterHint => "hinted delay",
        };
        assert!(
            advice_text.contains(expected_words),
            "README advice for {} ({advice_text:?}) disagrees with {:?}",
            code.as_u16(),
            code.reconnect_advice()
        );
        documented += 1;
    }
    // Every code the gateway sends today is documented.
    for code in [
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::Forbidden,
        CloseCode::SlowConsumer,
        CloseCode::PingTimeout,
        CloseCode::RateLimited,
        CloseCode::DisconnectedByBackend,
    ] {
        assert!(
            section.contains(&format!("| {} |", code.as_u16())),
            "{} is sent but not documented",
            code.as_u16()
        );
    }
    // And the table holds nothing the README does not document.
    for row in shared_proto::close::CLOSE_CODES {
        assert!(
            section.contains(&format!("| {} |", row.code.as_u16())),
            "{} is in the table but not documented",
            row.code.as_u16()
        );
    }
    assert_eq!(documented, shared_proto::close::CLOSE_CODES.len());
}

/// The browser client decides what to do after a close from its own copy
/// of the advice; it must say what the table says, code for code.
#[test]
fn the_browser_clients_close_advice_is_the_tables() {
    let client = std::fs::read_to_string(repo_root().join("gateway/static/notifications.js"))
        .expect("notifications.js");
    let map = client
        .split("export const CLOSE_ADVICE = Object.freeze({")
        .nth(1)
        .and_then(|rest| rest.split("});").next())
        .expect("notifications.js has CLOSE_ADVICE");
    let mut seen = 0;
    for line in map.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (code, advice) = line
            .trim_end_matches(',')
            .split_once(':')
            .unwrap_or_else(|| panic!("unreadable CLOSE_ADVICE line {line:?}"));
        let code: u16 = code.trim().parse().expect("a code");
        let close = CloseCode::from_u16(code)
            .unwrap_or_else(|| panic!("the client advises on {code}, which the table lacks"));
        let expected = match close.reconnect_advice() {
            ReconnectAdvice::Never => "never",
            ReconnectAdvice::AfterNewToken => "new_token",
            ReconnectAdvice::Backoff => "backoff",
            ReconnectAdvice::AfterHint => "hint",
        };
        assert_eq!(
            advice.trim().trim_matches('"'),
            expected,
            "advice for {code}"
        );
        seen += 1;
    }
    assert_eq!(seen, shared_proto::close::CLOSE_CODES.len());
}

#[test]
fn every_drop_reason_is_documented() {
    for path in ["README.md", "docs/operations.md"] {
        let text = std::fs::read_to_string(repo_root().join(path)).expect(path);
        let row = text
            .lines()
            .find(|line| line.starts_with("| `gateway_drops_total"))
            .unwrap_or_else(|| panic!("{path} lists gateway_drops_total"));
        for reason in gateway::ops::metrics::DropReason::ALL {
            assert!(
                row.contains(reason.label()),
                "{path} does not list the drop reason {}",
                reason.label()
            );
        }
    }
}

#[test]
fn every_readiness_reason_is_documented() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let operations =
        std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("operations");
    for reason in gateway::ops::health::NotReady::ALL {
        let label = format!("`{}`", reason.label());
        assert!(readme.contains(&label), "README lacks {label}");
        assert!(
            operations.contains(&label),
            "docs/operations.md lacks {label}"
        );
    }
}
