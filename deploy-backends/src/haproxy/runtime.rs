//! HAProxy's runtime API: one command per connection over the stats socket, and parsing of
//! what it answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_core::BackendError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::excerpt;

const BACKEND: &str = "haproxy";
/// Longest answer read from the socket; anything longer is not an answer we asked for.
const MAX_ANSWER: u64 = 16 << 20;

/// A server's administrative state, as `set server ... state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// In rotation.
    Ready,
    /// Takes no new requests; in-flight ones finish.
    Drain,
    /// Out of rotation entirely.
    Maint,
}

impl ServerState {
    fn keyword(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

/// One row of `show servers state <backend>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerRow {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) port: Option<u16>,
    pub(crate) weight: u32,
    /// `srv_admin_state` bits: 0x01/0x02/0x04/0x20/0x40 maintenance, 0x08/0x10 drain.
    pub(crate) admin: u32,
}

impl ServerRow {
    pub(crate) fn state(&self) -> ServerState {
        if self.admin & (0x01 | 0x02 | 0x04 | 0x20 | 0x40) != 0 {
            ServerState::Maint
        } else if self.admin & (0x08 | 0x10) != 0 {
            ServerState::Drain
        } else {
            ServerState::Ready
        }
    }
}

/// A client for HAProxy's runtime API on a unix socket (`stats socket ... level admin`).
///
/// Every command opens its own connection (HAProxy's non-interactive mode answers and
/// closes), under a timeout, so a hung or half-dead HAProxy costs at most that timeout.
#[derive(Debug, Clone)]
pub struct HaproxyRuntime {
    socket: PathBuf,
    timeout: Duration,
}

impl HaproxyRuntime {
    /// A client for the socket at `socket`, with a 2 s timeout per command.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sets the timeout of each command.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one command and returns HAProxy's answer as text.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the socket cannot be reached or answers with
    /// something that is not text, [`BackendError::Timeout`] when it does not answer in time.
    pub async fn command(&self, command: &str) -> Result<String, BackendError> {
        if command.contains(['\n', '\r', ';']) {
            return Err(refused(format!(
                "one command per call, without separators: {command:?}"
            )));
        }
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(command.as_bytes()).await?;
            stream.write_all(b"\n").await?;
            let mut answer = Vec::new();
            stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| BackendError::Timeout {
                operation: "haproxy command",
                after: self.timeout,
            })?
            .map_err(|err| unavailable(format!("{}: {err}", self.socket.display()), Some(err)))?;
        String::from_utf8(answer).map_err(|_| unavailable(format!("answer to `{command}` is not text"), None))
    }

    /// Runs a command that answers with nothing on success (the `set` family).
    pub(crate) async fn command_quiet(&self, command: &str) -> Result<(), BackendError> {
        let answer = self.command(command).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(refusal(command, &answer))
        }
    }

    /// `show servers state <backend>`.
    pub(crate) async fn servers(&self, backend: &str) -> Result<Vec<ServerRow>, BackendError> {
        let command = Words::new("show servers state").name("backend", backend)?.done();
        let answer = self.command(&command).await?;
        if answer.starts_with("Can't find backend") {
            return Err(BackendError::NotFound {
                kind: "haproxy backend",
                name: backend.to_owned(),
            });
        }
        parse_servers_state(&answer).map_err(|why| garbage(&command, &why))
    }

    /// Current sessions of one server (`scur` of `show stat`), `None` when it is gone.
    pub(crate) async fn current_sessions(
        &self,
        backend: &str,
        server: &str,
    ) -> Result<Option<u64>, BackendError> {
        let command = Words::new("show stat")
            .name("backend", backend)?
            .keyword("4 -1")
            .done();
        let answer = self.command(&command).await?;
        parse_current_sessions(&answer, backend, server).map_err(|why| garbage(&command, &why))
    }

    /// `set server <backend>/<server> state <state>`.
    pub(crate) async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: ServerState,
    ) -> Result<(), BackendError> {
        let command = set_server_state_command(backend, server, state)?;
        self.command_quiet(&command).await
    }

    /// `set server <backend>/<server> weight <weight>`.
    pub(crate) async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: u32,
    ) -> Result<(), BackendError> {
        let command = set_weight_command(backend, server, weight)?;
        self.command_quiet(&command).await
    }

    /// `set server <backend>/<server> addr <ip> port <port>`.
    pub(crate) async fn set_address(
        &self,
        backend: &str,
        server: &str,
        address: &Address,
    ) -> Result<(), BackendError> {
        let command = set_address_command(backend, server, address)?;
        let answer = self.command(&command).await?;
        // HAProxy reports what changed ("IP changed from ...", "no need to change ...").
        let lower = answer.to_ascii_lowercase();
        if answer.trim().is_empty() || lower.contains("changed") || lower.contains("no need to change") {
            Ok(())
        } else {
            Err(refusal(&command, &answer))
        }
    }

    /// `add server <backend>/<server> <ip>:<port> weight 0` (it starts in maintenance).
    pub(crate) async fn add_server(
        &self,
        backend: &str,
        server: &str,
        address: &Address,
    ) -> Result<(), BackendError> {
        let command = add_server_command(backend, server, address)?;
        let answer = self.command(&command).await?;
        if answer.contains("New server registered") {
            Ok(())
        } else {
            Err(refusal(&command, &answer))
        }
    }

    /// `show map <file>`: the map's entries (key, value), in HAProxy's order.
    pub(crate) async fn map_entries(&self, map: &str) -> Result<Vec<(String, String)>, BackendError> {
        let command = Words::new("show map").map_path(map)?.done();
        let answer = self.command(&command).await?;
        if answer.starts_with("Unknown map identifier") {
            return Err(BackendError::NotFound {
                kind: "haproxy map",
                name: map.to_owned(),
            });
        }
        parse_map(&answer).map_err(|why| garbage(&command, &why))
    }

    /// `add map <file> <key> <value>` (a new key) or `set map <file> <key> <value>`.
    pub(crate) async fn put_map_entry(
        &self,
        map: &str,
        key: &str,
        value: &str,
        exists: bool,
    ) -> Result<(), BackendError> {
        let verb = if exists { "set map" } else { "add map" };
        let command = Words::new(verb)
            .map_path(map)?
            .map_word("map key", key)?
            .map_word("map value", value)?
            .done();
        self.command_quiet(&command).await
    }

    /// `del map <file> <key>`; a key already gone is fine.
    pub(crate) async fn delete_map_entry(&self, map: &str, key: &str) -> Result<(), BackendError> {
        let command = Words::new("del map")
            .map_path(map)?
            .map_word("map key", key)?
            .done();
        let answer = self.command(&command).await?;
        if answer.trim().is_empty() || answer.trim() == "Key not found." {
            Ok(())
        } else {
            Err(refusal(&command, &answer))
        }
    }

    /// `clear table <table>`: forgets every sticky placement.
    pub(crate) async fn clear_table(&self, table: &str) -> Result<(), BackendError> {
        let command = Words::new("clear table").name("table", table)?.done();
        self.command_quiet(&command).await
    }

    /// `del server <backend>/<server>`; `Ok(false)` when HAProxy keeps it for now (it still
    /// has connections).
    pub(crate) async fn delete_server(&self, backend: &str, server: &str) -> Result<bool, BackendError> {
        let command = Words::new("del server").server(backend, server)?.done();
        let answer = self.command(&command).await?;
        if answer.contains("Server deleted") || answer.contains("No such server") {
            Ok(true)
        } else if answer.contains("connection") || answer.contains("still") {
            Ok(false)
        } else {
            Err(refusal(&command, &answer))
        }
    }
}

/// The longest backend or server name accepted (HAProxy has no hard limit; ours keeps
/// commands short).
const MAX_NAME: usize = 128;
/// The longest host name (RFC 1123).
const MAX_HOST: usize = 253;

/// A routable server address: an IP address or an RFC 1123 host name, and a port in
/// 1..=65535. Its parts never contain whitespace or anything else HAProxy's command line
/// gives a meaning to, so it is always exactly one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Address {
    /// Parses `host:port`, `ip:port` or `[ipv6]:port`, strictly.
    ///
    /// # Errors
    /// A description of what is wrong with `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_HOST + 8 {
            return Err(format!("longer than {} bytes", MAX_HOST + 8));
        }
        if let Some((at, bad)) = text
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
        {
            return Err(format!(
                "character {bad:?} at byte {at} is not allowed in an address"
            ));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "no port (expected host:port)".to_owned())?;
        let port = parse_port(port)?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| "unclosed '[' around an IPv6 address".to_owned())?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| format!("{inner:?} in brackets is not an IPv6 address"))?;
            Host::Ip(IpAddr::V6(ip))
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else {
            validate_host_name(host)?;
            Host::Name(host.to_ascii_lowercase())
        };
        Ok(Self { host, port })
    }

    /// The host as `show servers state` reports it and `set server ... addr` takes it.
    pub(crate) fn host(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    /// The port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, with an IPv6 address in brackets: one argument of `add server`.
    fn endpoint(&self) -> String {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host(), self.port),
        }
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {text:?} is not a number in 1..=65535"));
    }
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {text:?} is not a number in 1..=65535")),
    }
}

/// An RFC 1123 host name: dot-separated labels of 1..=63 letters, digits and hyphens, not
/// starting or ending with a hyphen; 253 bytes at most.
fn validate_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host".to_owned());
    }
    if host.len() > MAX_HOST {
        return Err(format!("host name longer than {MAX_HOST} bytes"));
    }
    for label in host.split('.') {
        let fine = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !fine {
            return Err(format!(
                "{host:?} is neither an IP address nor an RFC 1123 host name (label {label:?})"
            ));
        }
    }
    Ok(())
}

/// Checks a backend or server name: 1..=128 of `A-Z a-z 0-9 - _ . :`, so it is one
/// argument and cannot carry a `/`, an option or a command separator.
pub(crate) fn validate_name(kind: &str, name: &str) -> Result<(), BackendError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    match word_problem(name, MAX_NAME, allowed, "A-Z a-z 0-9 - _ . :") {
        None => Ok(()),
        Some(why) => Err(refused(format!("{kind} name {:?} {why}", excerpt(name)))),
    }
}

/// Why `word` is not 1..=`max` bytes of characters that are `allowed` (`shown` in the
/// reason), if it is not.
fn word_problem(word: &str, max: usize, allowed: impl Fn(char) -> bool, shown: &str) -> Option<String> {
    if word.is_empty() {
        Some("is empty".to_owned())
    } else if word.len() > max {
        Some(format!("is longer than {max} bytes"))
    } else {
        word.char_indices()
            .find(|(_, c)| !allowed(*c))
            .map(|(at, bad)| format!("has {bad:?} at byte {at} (allowed: {shown})"))
    }
}

/// A command argument refused before anything is sent.
fn refused(reason: String) -> BackendError {
    BackendError::Rejected {
        operation: "haproxy command",
        reason,
    }
}

/// The longest map file path accepted.
const MAX_MAP_PATH: usize = 256;
/// The longest map key or value accepted (a route key is `h:` + name + `=` + value).
const MAX_MAP_WORD: usize = 300;

/// Checks a map file path: absolute, 2..=256 bytes of `A-Z a-z 0-9 / . _ -`, without `..`
/// parts, so it is one argument naming a file and never a `#<id>` or an option.
pub(crate) fn validate_map_path(path: &str) -> Result<(), BackendError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-');
    let why = if !path.starts_with('/') || path.len() < 2 {
        Some("is not an absolute path".to_owned())
    } else if path.len() <= MAX_MAP_PATH && path.split('/').any(|part| part == "..") {
        Some("has a '..' part".to_owned())
    } else {
        word_problem(path, MAX_MAP_PATH, allowed, "A-Z a-z 0-9 / . _ -")
    };
    match why {
        None => Ok(()),
        Some(why) => Err(refused(format!("map path {:?} {why}", excerpt(path)))),
    }
}

/// Checks a map key or value: 1..=300 bytes of HTTP token characters (RFC 9110's `tchar`)
/// and `: = @`, so it is exactly one argument of the runtime API (no space, quote,
/// backslash or `;`).
pub(crate) fn validate_map_word(kind: &str, word: &str) -> Result<(), BackendError> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:=@".contains(c);
    match word_problem(word, MAX_MAP_WORD, tchar, "HTTP token characters and : = @") {
        None => Ok(()),
        Some(why) => Err(refused(format!("{kind} {:?} {why}", excerpt(word)))),
    }
}

/// A runtime command built word by word from keywords and validated tokens.
struct Words(String);

impl Words {
    fn new(keywords: &'static str) -> Self {
        Self(keywords.to_owned())
    }

    fn keyword(mut self, keyword: &'static str) -> Self {
        self.0.push(' ');
        self.0.push_str(keyword);
        self
    }

    fn name(mut self, kind: &str, name: &str) -> Result<Self, BackendError> {
        validate_name(kind, name)?;
        self.0.push(' ');
        self.0.push_str(name);
        Ok(self)
    }

    fn map_path(mut self, path: &str) -> Result<Self, BackendError> {
        validate_map_path(path)?;
        self.0.push(' ');
        self.0.push_str(path);
        Ok(self)
    }

    fn map_word(mut self, kind: &str, word: &str) -> Result<Self, BackendError> {
        validate_map_word(kind, word)?;
        self.0.push(' ');
        self.0.push_str(word);
        Ok(self)
    }

    /// `<backend>/<server>`, one word.
    fn server(mut self, backend: &str, server: &str) -> Result<Self, BackendError> {
        validate_name("backend", backend)?;
        validate_name("server", server)?;
        self.0.push(' ');
        self.0.push_str(backend);
        self.0.push('/');
        self.0.push_str(server);
        Ok(self)
    }

    fn number(mut self, number: impl std::fmt::Display) -> Self {
        self.0.push(' ');
        self.0.push_str(&number.to_string());
        self
    }

    fn done(self) -> String {
        self.0
    }
}

/// `add server <backend>/<server> <address> weight 0`: always 6 words.
pub(crate) fn add_server_command(
    backend: &str,
    server: &str,
    address: &Address,
) -> Result<String, BackendError> {
    let mut words = Words::new("add server").server(backend, server)?;
    words.0.push(' ');
    words.0.push_str(&address.endpoint());
    Ok(words.keyword("weight 0").done())
}

/// `set server <backend>/<server> addr <host> port <port>`: always 7 words.
pub(crate) fn set_address_command(
    backend: &str,
    server: &str,
    address: &Address,
) -> Result<String, BackendError> {
    let mut words = Words::new("set server").server(backend, server)?.keyword("addr");
    words.0.push(' ');
    words.0.push_str(&address.host());
    Ok(words.keyword("port").number(address.port()).done())
}

/// `set server <backend>/<server> state <state>`: always 5 words.
pub(crate) fn set_server_state_command(
    backend: &str,
    server: &str,
    state: ServerState,
) -> Result<String, BackendError> {
    Ok(Words::new("set server")
        .server(backend, server)?
        .keyword("state")
        .keyword(state.keyword())
        .done())
}

/// `set server <backend>/<server> weight <weight>`: always 5 words.
pub(crate) fn set_weight_command(backend: &str, server: &str, weight: u32) -> Result<String, BackendError> {
    Ok(Words::new("set server")
        .server(backend, server)?
        .keyword("weight")
        .number(weight)
        .done())
}

fn unavailable(message: String, source: Option<std::io::Error>) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND.to_owned(),
        message,
        source: source.map(|err| Box::new(err) as _),
        retry_after: None,
    }
}

fn garbage(command: &str, why: &str) -> BackendError {
    unavailable(format!("unexpected answer to `{command}`: {why}"), None)
}

fn refusal(command: &str, answer: &str) -> BackendError {
    let answer = answer.trim();
    if answer.starts_with("No such server")
        || answer.starts_with("No such backend")
        || answer.starts_with("Can't find backend")
    {
        return BackendError::NotFound {
            kind: "haproxy server",
            name: command.split_whitespace().nth(2).unwrap_or_default().to_owned(),
        };
    }
    refused(format!("`{command}`: {}", excerpt(answer)))
}

/// Parses `show servers state` (format version 1).
pub(crate) fn parse_servers_state(answer: &str) -> Result<Vec<ServerRow>, String> {
    let mut lines = answer.lines();
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => return Err(format!("expected format version 1, got {:?}", other.map(excerpt))),
    }
    let header = lines.next().ok_or("no header line")?;
    let columns: Vec<&str> = header.trim_start_matches('#').split_whitespace().collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name} in the header"))
    };
    let (name, address, admin, weight, port) = (
        column("srv_name")?,
        column("srv_addr")?,
        column("srv_admin_state")?,
        column("srv_uweight")?,
        column("srv_port")?,
    );
    let mut rows = Vec::new();
    for (index, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |at: usize| {
            fields
                .get(at)
                .copied()
                .ok_or_else(|| format!("row {} has {} fields", index + 1, fields.len()))
        };
        let number = |at: usize| -> Result<u32, String> {
            let text = field(at)?;
            text.parse()
                .map_err(|_| format!("row {}: {:?} is not a number", index + 1, excerpt(text)))
        };
        rows.push(ServerRow {
            name: field(name)?.to_owned(),
            address: field(address)?.to_owned(),
            port: field(port)?.parse().ok(),
            weight: number(weight)?,
            admin: number(admin)?,
        });
    }
    Ok(rows)
}

/// Parses `show map` rows: `<entry id> <key> <value>`.
pub(crate) fn parse_map(answer: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    for (index, line) in answer.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [id, key, value] if id.starts_with("0x") => entries.push((key.to_owned(), value.to_owned())),
            _ => {
                return Err(format!(
                    "row {} is not '<id> <key> <value>': {:?}",
                    index + 1,
                    excerpt(line)
                ));
            }
        }
    }
    Ok(entries)
}

/// Finds `scur` for one server in `show stat` CSV.
fn parse_current_sessions(answer: &str, backend: &str, server: &str) -> Result<Option<u64>, String> {
    let mut lines = answer.lines();
    let header = lines.next().ok_or("empty answer")?;
    let columns: Vec<&str> = header
        .strip_prefix("# ")
        .ok_or_else(|| format!("not a stat header: {:?}", excerpt(header)))?
        .split(',')
        .collect();
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let (px, sv, scur) = (at("pxname")?, at("svname")?, at("scur")?);
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.get(px) == Some(&backend) && fields.get(sv) == Some(&server) {
            let value = fields.get(scur).ok_or("short row")?;
            return value
                .parse()
                .map(Some)
                .map_err(|_| format!("scur {:?} is not a number", excerpt(value)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 shop 1 blue:shop-1 127.0.0.1 2 0 10 0 0 1 0 0 0 0 0 0 - 9999 - 0 0 - - 0\n3 shop 2 green:shop-2 127.0.0.1 2 8 0 0 0 1 0 0 0 0 0 0 - 9998 - 0 0 - - 0\n\n";

    fn reason(result: Result<(), BackendError>) -> String {
        match result {
            Err(BackendError::Rejected {
                operation: "haproxy command",
                reason,
            }) => reason,
            other => panic!("expected a refused argument, got {other:?}"),
        }
    }

    #[test]
    fn refused_arguments_say_what_is_wrong_with_them() {
        assert_eq!(reason(validate_name("server", "")), "server name \"\" is empty");
        let long = "a".repeat(MAX_NAME + 1);
        assert!(reason(validate_name("server", &long)).ends_with("is longer than 128 bytes"));
        assert_eq!(
            reason(validate_name("backend", "shop/x")),
            "backend name \"shop/x\" has '/' at byte 4 (allowed: A-Z a-z 0-9 - _ . :)"
        );
        assert_eq!(
            reason(validate_map_word("map key", "a b")),
            "map key \"a b\" has ' ' at byte 1 (allowed: HTTP token characters and : = @)"
        );
        assert_eq!(
            reason(validate_map_path("m.map")),
            "map path \"m.map\" is not an absolute path"
        );
        assert_eq!(
            reason(validate_map_path("/a/../b")),
            "map path \"/a/../b\" has a '..' part"
        );
        assert_eq!(
            reason(validate_map_path("/a b")),
            "map path \"/a b\" has ' ' at byte 2 (allowed: A-Z a-z 0-9 / . _ -)"
        );
        let long = format!("/{}/..", "a".repeat(MAX_MAP_PATH));
        assert!(reason(validate_map_path(&long)).ends_with("is longer than 256 bytes"));
        assert!(validate_name("server", "blue:shop-1").is_ok());
        assert!(validate_map_word("map key", "h:x-user=42").is_ok());
        assert!(validate_map_path("/tmp/routes.map").is_ok());
    }

    #[test]
    fn servers_state_parses_names_weights_and_admin_states() {
        let rows = parse_servers_state(STATE).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].name.as_str(),
                rows[0].weight,
                rows[0].port,
                rows[0].state()
            ),
            ("blue:shop-1", 10, Some(9999), ServerState::Ready)
        );
        assert_eq!(rows[1].state(), ServerState::Drain);
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        for answer in [
            "",
            "Unknown command\n",
            "2\n# srv_name\n",
            "1\n",
            "1\n# be_id be_name\n3 shop\n",
            "1\n# srv_name srv_addr srv_admin_state srv_uweight srv_port\nx 127.0.0.1 zero 1 1\n",
            "1\n# srv_name srv_addr srv_admin_state srv_uweight srv_port\nx 127.0.0.1\n",
        ] {
            assert!(parse_servers_state(answer).is_err(), "{answer:?}");
        }
        assert!(parse_current_sessions("\u{0}\u{1}", "shop", "x").is_err());
        assert!(parse_current_sessions("# pxname,svname\nshop,x\n", "shop", "x").is_err());
        assert_eq!(
            parse_current_sessions("# pxname,svname,scur\nshop,x,3\n", "shop", "x"),
            Ok(Some(3))
        );
        assert_eq!(
            parse_current_sessions("# pxname,svname,scur\nshop,x,3\n", "shop", "y"),
            Ok(None)
        );
    }
}
