//! A Server-Sent Events reader: turns a byte stream into messages (id, event, data) as the
//! HTML standard's parsing rules say, comments (keep-alives) skipped.

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// The `id:` field, when the message had one.
    pub(crate) id: Option<String>,
    /// The `event:` field (`message` when absent).
    pub(crate) event: String,
    /// The `data:` lines joined by newlines.
    pub(crate) data: String,
}

/// Accumulates bytes and hands out complete messages.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds `bytes`; returns the messages they complete.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A CR LF pair is one line ending; a CR at the very end may be followed by LF
            // in the next chunk, so wait for it.
            let mut skip = 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    Some(b'\n') => skip = 2,
                    None => break,
                    Some(_) => {}
                }
            }
            let line: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(message) = self.line(&line) {
                out.push(message);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| SseMessage {
                id: self.id.clone(),
                event: event.unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            // An id with a NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_chunks_are_put_together() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b":keep-alive\n\nevent: deploy").is_empty());
        assert!(parser.feed(b"ment\ndata: {\"a\":1}\nid: 2-").is_empty());
        let got = parser.feed(b"7\nretry: 2000\n\n");
        assert_eq!(
            got,
            vec![SseMessage {
                id: Some("2-7".into()),
                event: "deployment".into(),
                data: "{\"a\":1}".into(),
            }]
        );
    }

    #[test]
    fn crlf_line_endings_multi_line_data_and_a_sticky_id() {
        let mut parser = SseParser::default();
        let got = parser.feed(b"id: 1\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r");
        assert_eq!(
            got,
            vec![SseMessage {
                id: Some("1".into()),
                event: "message".into(),
                data: "a\nb".into(),
            }]
        );
        let got = parser.feed(b"\n\r\n");
        assert_eq!(
            got,
            vec![SseMessage {
                id: Some("1".into()),
                event: "message".into(),
                data: "c".into(),
            }]
        );
    }
}
