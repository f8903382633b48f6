//! Server-Sent Events: a response over a stream of identified messages, kept alive with
//! comments, and the `Last-Event-ID` a reconnecting client sends.
//!
//! A message's `id` is what a browser's `EventSource` (or `deployctl`) sends back as
//! `Last-Event-ID` when the connection drops; the handler resumes after it, so a client that
//! reconnects misses nothing and sees nothing twice.

use std::convert::Infallible;
use std::fmt::Display;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};

/// How often an idle stream sends a comment, so proxies and load balancers do not close
/// it for inactivity (most close after 30 to 60 seconds).
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a client waits before reconnecting after the connection drops (sent once,
/// with the first message).
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// The event type of the message that ends a stream because its source failed.
pub(crate) const ERROR_EVENT: &str = "error";

/// One message: its id (resumption point), its event type and its JSON data.
pub(crate) type SseMessage = (String, &'static str, serde_json::Value);

/// A message's JSON data: a value, or text encoded once for many watchers.
pub(crate) trait SseData: Send + 'static {
    /// The JSON text.
    fn json(&self) -> std::borrow::Cow<'_, str>;
}

impl SseData for serde_json::Value {
    fn json(&self) -> std::borrow::Cow<'_, str> {
        self.to_string().into()
    }
}

impl SseData for std::sync::Arc<str> {
    fn json(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self)
    }
}

/// An SSE response over `messages`, kept alive every [`KEEP_ALIVE`].
///
/// Each `Ok((id, event, data))` becomes `id: <id>`, `event: <event>`, `data: <json>`. An
/// `Err` ends the stream with an `error` event whose data is `{"message": <error>}` and
/// no id (a client resuming after it resumes after the last good message).
pub(crate) fn sse_response<S, E, D>(messages: S) -> Response
where
    S: Stream<Item = Result<(String, &'static str, D), E>> + Send + 'static,
    D: SseData,
    E: Display + Send + 'static,
{
    sse_response_with(messages, KEEP_ALIVE)
}

/// [`sse_response`] with a keep-alive interval of `keep_alive`.
pub(crate) fn sse_response_with<S, E, D>(messages: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Result<(String, &'static str, D), E>> + Send + 'static,
    D: SseData,
    E: Display + Send + 'static,
{
    let events = stream::unfold(
        (Box::pin(messages), true, false),
        |(mut messages, first, ended)| async move {
            if ended {
                return None;
            }
            let (event, ended) = match messages.next().await? {
                Ok((id, kind, data)) => (Event::default().id(id).event(kind).data(data.json()), false),
                Err(err) => {
                    let data = serde_json::json!({ "message": err.to_string() });
                    (Event::default().event(ERROR_EVENT).data(data.to_string()), true)
                }
            };
            let event = if first { event.retry(RETRY) } else { event };
            Some((Ok::<_, Infallible>(event), (messages, false, ended)))
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response();
    // Tells nginx-style proxies not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A layer for [`serve`](crate::serve): event streams end once `closing` turns true, so a
/// graceful shutdown is not held open by clients that follow events (their connections
/// would otherwise never finish). Other responses pass through untouched.
pub(crate) fn end_streams_on(
    router: axum::Router,
    closing: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    router.layer(axum::middleware::map_response(move |response: Response| {
        let mut closing = closing.clone();
        async move {
            let streaming = response
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
            if !streaming {
                return response;
            }
            let (parts, body) = response.into_parts();
            let closed = async move {
                // A dropped sender (the server is gone) closes the streams too.
                let _ = closing.wait_for(|closing| *closing).await;
            };
            let body = body.into_data_stream().take_until(Box::pin(closed));
            Response::from_parts(parts, axum::body::Body::from_stream(body))
        }
    }))
}

/// The `Last-Event-ID` a reconnecting client sent: trimmed, `None` when absent, empty or not
/// text.
pub(crate) fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    /// The body's chunks as text, read until the stream ends or `limit` chunks came.
    async fn chunks(response: Response, limit: usize) -> Vec<String> {
        let mut body = response.into_body().into_data_stream();
        let mut out = Vec::new();
        while out.len() < limit {
            match body.next().await {
                Some(Ok(bytes)) => out.push(String::from_utf8_lossy(&bytes).into_owned()),
                Some(Err(err)) => panic!("body error: {err}"),
                None => break,
            }
        }
        out
    }

    fn message(id: &str, n: u64) -> Result<SseMessage, String> {
        Ok((id.to_owned(), "deployment", serde_json::json!({ "n": n })))
    }

    #[tokio::test]
    async fn messages_carry_their_id_event_and_json_data_and_the_first_a_retry_hint() {
        let response = sse_response(stream::iter(vec![message("1-1", 1), message("1-2", 2)]));
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
        assert_eq!(
            response.headers().get("x-accel-buffering").map(|v| v.as_bytes()),
            Some(&b"no"[..])
        );
        let text = chunks(response, 10).await.concat();
        assert_eq!(
            text,
            "id: 1-1\nevent: deployment\ndata: {\"n\":1}\nretry: 2000\n\n\
             id: 1-2\nevent: deployment\ndata: {\"n\":2}\n\n"
        );
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_an_error_event_without_id() {
        let messages = stream::iter(vec![
            message("1-1", 1),
            Err("store unreachable".to_owned()),
            message("1-2", 2),
        ]);
        let text = chunks(sse_response(messages), 10).await.concat();
        assert!(text.contains("id: 1-1"), "{text}");
        assert!(
            text.ends_with("event: error\ndata: {\"message\":\"store unreachable\"}\n\n"),
            "{text}"
        );
        assert!(!text.contains("1-2"), "nothing after the error: {text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_sends_keep_alive_comments() {
        let messages = stream::pending::<Result<SseMessage, String>>();
        let response = sse_response_with(messages, Duration::from_secs(15));
        let started = tokio::time::Instant::now();
        let got = chunks(response, 2).await;
        assert_eq!(
            got,
            vec![": keep-alive\n\n".to_owned(), ": keep-alive\n\n".to_owned()]
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[test]
    fn last_event_id_is_trimmed_and_empty_means_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers), None);
        headers.insert("last-event-id", HeaderValue::from_static("  "));
        assert_eq!(last_event_id(&headers), None);
        headers.insert("last-event-id", HeaderValue::from_static(" 3-17 "));
        assert_eq!(last_event_id(&headers).as_deref(), Some("3-17"));
        headers.insert(
            "last-event-id",
            HeaderValue::from_bytes(&[0xff, b'1']).expect("header value"),
        );
        assert_eq!(last_event_id(&headers), None);
    }
}
