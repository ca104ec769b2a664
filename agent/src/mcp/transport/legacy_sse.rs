//! The legacy HTTP+SSE binding (protocol 2024-11-05): the client opens a GET event stream
//! whose first event, `endpoint`, names the URI to POST to, with the session in its query;
//! the POSTs are answered 202 and their responses arrive as `message` events on the GET
//! stream. Both are keyed by the session that URI names.

/// The session named by a legacy endpoint URI or POST target (`?session_id=` in the Python
/// SDK, `?sessionId=` in the TypeScript SDK).
pub fn session_in(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session_id" || k == "sessionId").then(|| v.to_string())
    })
}

/// The session an `endpoint` event names, if `event` is one.
pub fn endpoint_session(event: &str, data: &[u8]) -> Option<Option<String>> {
    (event == "endpoint").then(|| session_in(&String::from_utf8_lossy(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_come_from_either_sdks_query() {
        assert_eq!(
            session_in("/messages/?session_id=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            session_in("/message?x=1&sessionId=42").as_deref(),
            Some("42")
        );
        assert_eq!(session_in("/mcp"), None);
        assert_eq!(
            endpoint_session("endpoint", b"/messages/?session_id=s"),
            Some(Some("s".into()))
        );
        assert_eq!(endpoint_session("message", b"{}"), None);
    }
}
