//! Fuzzes the parser of browser → gateway frames
//! (`shared_proto::parse_client_frame`). Invariants: never panics; a frame
//! it accepts is a JSON object; a token it hands back is non-empty and is
//! the object's `token` string; an unknown type is reported truncated to 64
//! characters. It must not do I/O.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shared_proto::{parse_client_frame, ClientFrame, ClientFrameError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(text) {
        Ok(frame) => {
            let object = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(object)) => object,
                other => panic!("accepted a frame that is not a JSON object: {other:?}"),
            };
            match frame {
                ClientFrame::Auth { token } | ClientFrame::Refresh { token } => {
                    assert!(!token.is_empty(), "empty token accepted");
                    assert_eq!(
                        object.get("token").and_then(Value::as_str),
                        Some(token.as_str()),
                        "token is not the frame's token field"
                    );
                }
                ClientFrame::Ping => {
                    assert_eq!(object.get("type").and_then(Value::as_str), Some("ping"));
                }
            }
        }
        Err(ClientFrameError::UnknownType(kind)) => {
            assert!(kind.chars().count() <= 64, "unknown type kept untruncated");
        }
        Err(_) => {}
    }
});
