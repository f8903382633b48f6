//! `deployctl`: deploykit's control plane from the command line.
//!
//! ```text
//! export DEPLOYCTL_SERVER=http://127.0.0.1:7070 DEPLOYCTL_TOKEN=dk_...
//! deployctl rollouts list
//! deployctl rollouts watch shop          # live view until the rollout ends
//! deployctl rollouts promote shop --full
//! deployctl --output json rollouts history shop
//! ```
//!
//! Every command prints the server's answer as text, or verbatim with `--output json`.
//! Errors go to standard error with the server's code and the offending field, and the exit
//! status is 1 (2 for a command line clap rejects). `rollouts watch` exits when the rollout
//! ends: 0 when it completed, 3 when it rolled back or failed (so a script can gate on it).

mod client;
mod render;
mod sse;
mod watch;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use deploy_strategies::control::{HistoryEntry, IntentRecord};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Api, CliError, decode, path_segment};
use crate::render::RolloutView;

/// deploykit's control plane from the command line.
#[derive(Debug, Parser)]
#[command(name = "deployctl", version, about, propagate_version = true)]
struct Cli {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "DEPLOYCTL_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// The bearer token (`dk_...`).
    #[arg(long, global = true, env = "DEPLOYCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How answers are printed.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// The server's JSON (one JSON object per line for `watch`).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rollouts: status, history, events and operator intents.
    #[command(subcommand)]
    Rollouts(Rollouts),
    /// Feature flags.
    #[command(subcommand)]
    Flags(Flags),
    /// Incidents.
    #[command(subcommand)]
    Incidents(Incidents),
    /// Alert silences.
    #[command(subcommand)]
    Silences(Silences),
    /// API tokens (admin).
    #[command(subcommand)]
    Tokens(Tokens),
}

#[derive(Debug, Args)]
struct AppArg {
    /// The app.
    app: String,
}

#[derive(Debug, Subcommand)]
enum Rollouts {
    /// Every app with its rollout's state.
    List,
    /// An app's rollout: phase, step, weights, pause, last analysis, pending intents.
    Get(AppArg),
    /// Follows an app's rollout until it ends (redrawn in place on a terminal).
    Watch(AppArg),
    /// Starts rolling VERSION out.
    Start {
        /// The app.
        app: String,
        /// The version to roll out.
        #[arg(id = "new_version", value_name = "VERSION")]
        version: String,
    },
    /// Holds the rollout after its current step.
    Pause(AppArg),
    /// Lifts an operator's pause.
    Resume(AppArg),
    /// Stops the rollout and rolls back.
    Abort(AppArg),
    /// Ends the current pause step (or accepts an inconclusive analysis).
    Promote {
        /// The app.
        app: String,
        /// Skips every remaining step and analysis: straight to full promotion.
        #[arg(long)]
        full: bool,
    },
    /// Back to the previous version (aborts a running rollout).
    Undo(AppArg),
    /// The app's last rollouts, newest first.
    History(AppArg),
    /// The app's intents, oldest first, with what became of them.
    Intents(AppArg),
}

#[derive(Debug, Subcommand)]
enum Flags {
    /// Every flag.
    List,
    /// One flag.
    Get {
        /// The flag.
        name: String,
    },
    /// Turns a flag on.
    Enable {
        /// The flag.
        name: String,
    },
    /// Turns a flag off.
    Disable {
        /// The flag.
        name: String,
    },
    /// Sets a flag's rollout percentage.
    Rollout {
        /// The flag.
        name: String,
        /// 0 to 100.
        percentage: u32,
    },
    /// Evaluates a flag for a context.
    Eval {
        /// The flag.
        name: String,
        /// A context field (`userId=42`, `plan=pro`); repeatable.
        #[arg(long = "context", short = 'c', value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Incidents {
    /// Incidents, optionally of one status.
    List {
        /// Only incidents in this status (`open`, `acknowledged`, `resolved`).
        #[arg(long)]
        status: Option<String>,
    },
    /// Acknowledges an incident.
    Ack {
        /// The incident.
        id: String,
    },
    /// Resolves an incident.
    Resolve {
        /// The incident.
        id: String,
        /// What was done.
        #[arg(long)]
        summary: String,
    },
}

#[derive(Debug, Subcommand)]
enum Silences {
    /// Silences.
    List,
    /// Mutes alerts matching every matcher for a while.
    Add {
        /// `name=value`, `name!=value`, `name=~regex` or `name!~regex`; repeatable.
        #[arg(long = "matcher", short = 'm', required = true, value_name = "MATCHER")]
        matchers: Vec<String>,
        /// How long (`90s`, `15m`, `2h`, `1d`).
        #[arg(long)]
        duration: String,
        /// Why.
        #[arg(long)]
        comment: String,
    },
    /// Ends a silence now.
    Expire {
        /// The silence.
        id: String,
    },
}

/// A token's role.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    /// Reads everything.
    Viewer,
    /// Reads and operates (intents, flags, incidents, silences).
    Operator,
    /// Everything, tokens and audit included.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Tokens {
    /// Tokens (never their secrets).
    List,
    /// Creates a token and prints its secret (shown once).
    Create {
        /// Its name (audit entries carry it).
        name: String,
        /// Its role.
        #[arg(long, value_enum)]
        role: Role,
        /// Limits it to these apps; repeatable (none: every app).
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Limits it to these environments; repeatable (none: every environment).
        #[arg(long = "environment")]
        environments: Vec<String>,
    },
    /// Revokes a token.
    Revoke {
        /// The token.
        name: String,
    },
}

/// Prints what a command got back.
struct Printer {
    output: Output,
}

impl Printer {
    fn lines(&self, json: &Value, text: impl FnOnce() -> Vec<String>) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        match self.output {
            Output::Json => {
                let pretty = serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string());
                writeln!(stdout, "{pretty}")?;
            }
            Output::Text => {
                for line in text() {
                    writeln!(stdout, "{line}")?;
                }
            }
        }
        stdout.flush()?;
        Ok(())
    }

    fn generic(&self, json: &Value) -> Result<(), CliError> {
        self.lines(json, || render::generic(json))
    }
}

/// `KEY=VALUE` split, or a usage error naming `flag`.
fn key_value(flag: &str, text: &str) -> Result<(String, String), CliError> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(CliError::Usage(format!("{flag} must be KEY=VALUE, got '{text}'"))),
    }
}

/// A silence duration in seconds: a positive number and a unit (`s`, `m`, `h`, `d`).
fn parse_duration(text: &str) -> Result<u64, CliError> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let scale = match unit {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86_400),
        _ => None,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .zip(scale)
        .and_then(|(n, scale)| n.checked_mul(scale))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--duration must be a positive number with a unit (90s, 15m, 2h, 1d), got '{text}'"
            ))
        })
}

/// Checks a matcher's form: a label name, an operator, a value.
fn check_matcher(text: &str) -> Result<(), CliError> {
    let op = text.find(['=', '!']).filter(|at| *at > 0);
    let rest = op.map(|at| &text[at..]);
    let valid = rest.is_some_and(|rest| ["=~", "!~", "!=", "="].iter().any(|op| rest.starts_with(op)));
    if valid {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--matcher must be name=value, name!=value, name=~regex or name!~regex, got '{text}'"
        )))
    }
}

async fn intent(
    api: &Api,
    printer: &Printer,
    app: &str,
    action: &str,
    body: Option<Value>,
) -> Result<(), CliError> {
    let path = format!("/api/rollouts/{}/{action}", path_segment(app));
    let answer = api.call(Method::POST, &path, body.as_ref()).await?;
    let record: IntentRecord = decode(&format!("POST {path}"), answer.clone())?;
    printer.lines(&answer, || {
        vec![format!("{}: {}", record.app, render::intent(&record))]
    })
}

async fn rollouts(api: &Api, printer: &Printer, command: Rollouts) -> Result<(), CliError> {
    match command {
        Rollouts::List => {
            let answer = api.get("/api/rollouts").await?;
            let views: Vec<RolloutView> = decode("GET /api/rollouts", answer.clone())?;
            printer.lines(&answer, || render::rollout_table(&views))
        }
        Rollouts::Get(AppArg { app }) => {
            let path = format!("/api/rollouts/{}", path_segment(&app));
            let answer = api.get(&path).await?;
            let view: RolloutView = decode(&format!("GET {path}"), answer.clone())?;
            printer.lines(&answer, || {
                render::rollout(&view, chrono::Utc::now().timestamp_millis(), usize::MAX)
            })
        }
        Rollouts::Watch(AppArg { app }) => {
            let mode = watch::Mode::new(printer.output, std::io::stdout().is_terminal());
            if watch::watch(api, &app, mode).await? {
                Ok(())
            } else {
                Err(CliError::NotCompleted)
            }
        }
        Rollouts::Start { app, version } => {
            intent(api, printer, &app, "start", Some(json!({ "version": version }))).await
        }
        Rollouts::Pause(AppArg { app }) => intent(api, printer, &app, "pause", None).await,
        Rollouts::Resume(AppArg { app }) => intent(api, printer, &app, "resume", None).await,
        Rollouts::Abort(AppArg { app }) => intent(api, printer, &app, "abort", None).await,
        Rollouts::Promote { app, full } => {
            let action = if full { "promote-full" } else { "promote" };
            intent(api, printer, &app, action, None).await
        }
        Rollouts::Undo(AppArg { app }) => intent(api, printer, &app, "undo", None).await,
        Rollouts::History(AppArg { app }) => {
            let path = format!("/api/rollouts/{}/history", path_segment(&app));
            let answer = api.get(&path).await?;
            let entries: Vec<HistoryEntry> = decode(&format!("GET {path}"), answer.clone())?;
            printer.lines(&answer, || render::history_table(&entries))
        }
        Rollouts::Intents(AppArg { app }) => {
            let path = format!("/api/rollouts/{}/intents", path_segment(&app));
            let answer = api.get(&path).await?;
            let records: Vec<IntentRecord> = decode(&format!("GET {path}"), answer.clone())?;
            printer.lines(&answer, || {
                if records.is_empty() {
                    vec!["(none)".into()]
                } else {
                    records.iter().map(render::intent).collect()
                }
            })
        }
    }
}

async fn flags(api: &Api, printer: &Printer, command: Flags) -> Result<(), CliError> {
    let flag = |name: &str| format!("/api/flags/{}", path_segment(name));
    let answer = match command {
        Flags::List => api.get("/api/flags").await?,
        Flags::Get { name } => api.get(&flag(&name)).await?,
        Flags::Enable { name } => {
            api.call(Method::POST, &format!("{}/enable", flag(&name)), None)
                .await?
        }
        Flags::Disable { name } => {
            api.call(Method::POST, &format!("{}/disable", flag(&name)), None)
                .await?
        }
        Flags::Rollout { name, percentage } => {
            let body = json!({ "percentage": percentage });
            api.call(Method::PUT, &format!("{}/rollout", flag(&name)), Some(&body))
                .await?
        }
        Flags::Eval { name, context } => {
            let mut fields = Map::new();
            for pair in &context {
                let (key, value) = key_value("--context", pair)?;
                fields.insert(key, Value::String(value));
            }
            let body = json!({ "context": fields });
            api.call(Method::POST, &format!("{}/evaluate", flag(&name)), Some(&body))
                .await?
        }
    };
    printer.generic(&answer)
}

async fn incidents(api: &Api, printer: &Printer, command: Incidents) -> Result<(), CliError> {
    let incident = |id: &str| format!("/api/incidents/{}", path_segment(id));
    let answer = match command {
        Incidents::List { status } => match status {
            Some(status) => {
                api.get(&format!("/api/incidents?status={}", path_segment(&status)))
                    .await?
            }
            None => api.get("/api/incidents").await?,
        },
        Incidents::Ack { id } => {
            api.call(Method::POST, &format!("{}/acknowledge", incident(&id)), None)
                .await?
        }
        Incidents::Resolve { id, summary } => {
            let body = json!({ "summary": summary });
            api.call(Method::POST, &format!("{}/resolve", incident(&id)), Some(&body))
                .await?
        }
    };
    printer.generic(&answer)
}

async fn silences(api: &Api, printer: &Printer, command: Silences) -> Result<(), CliError> {
    let answer = match command {
        Silences::List => api.get("/api/silences").await?,
        Silences::Add {
            matchers,
            duration,
            comment,
        } => {
            for matcher in &matchers {
                check_matcher(matcher)?;
            }
            let seconds = parse_duration(&duration)?;
            let body = json!({ "matchers": matchers, "duration_seconds": seconds, "comment": comment });
            api.call(Method::POST, "/api/silences", Some(&body)).await?
        }
        Silences::Expire { id } => {
            api.call(
                Method::DELETE,
                &format!("/api/silences/{}", path_segment(&id)),
                None,
            )
            .await?
        }
    };
    printer.generic(&answer)
}

async fn tokens(api: &Api, printer: &Printer, command: Tokens) -> Result<(), CliError> {
    let answer = match command {
        Tokens::List => api.get("/api/tokens").await?,
        Tokens::Create {
            name,
            role,
            apps,
            environments,
        } => {
            let mut body = json!({ "name": name, "role": role.name() });
            // Without a scope the token reaches what the creating token reaches.
            if !apps.is_empty() || !environments.is_empty() {
                body["scope"] = json!({ "apps": apps, "environments": environments });
            }
            api.call(Method::POST, "/api/tokens", Some(&body)).await?
        }
        Tokens::Revoke { name } => {
            api.call(
                Method::DELETE,
                &format!("/api/tokens/{}", path_segment(&name)),
                None,
            )
            .await?
        }
    };
    printer.generic(&answer)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let api = Api::new(&cli.server, cli.token)?;
    let printer = Printer { output: cli.output };
    match cli.command {
        Command::Rollouts(command) => rollouts(&api, &printer, command).await,
        Command::Flags(command) => flags(&api, &printer, command).await,
        Command::Incidents(command) => incidents(&api, &printer, command).await,
        Command::Silences(command) => silences(&api, &printer, command).await,
        Command::Tokens(command) => tokens(&api, &printer, command).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("deployctl: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`deployctl ... | head`) is not an error worth a message.
        Err(CliError::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // The watch already said how the rollout ended.
        Err(CliError::NotCompleted) => ExitCode::from(3),
        Err(err) => {
            eprintln!("deployctl: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_promote_takes_full() {
        let cli = Cli::try_parse_from([
            "deployctl",
            "rollouts",
            "promote",
            "shop",
            "--full",
            "--output",
            "json",
            "--server",
            "http://h:1",
        ])
        .expect("parses");
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.server, "http://h:1");
        assert!(matches!(
            cli.command,
            Command::Rollouts(Rollouts::Promote { full: true, .. })
        ));
    }

    #[test]
    fn silence_arguments_are_checked() {
        assert_eq!(parse_duration("2h").ok(), Some(7200));
        assert_eq!(parse_duration("90s").ok(), Some(90));
        assert_eq!(parse_duration("1d").ok(), Some(86_400));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("2 hours").is_err());
        assert!(parse_duration("").is_err());
        for ok in ["env=prod", "env!=prod", "svc=~api.*", "svc!~x"] {
            assert!(check_matcher(ok).is_ok(), "{ok}");
        }
        for bad in ["env", "=prod", "!x"] {
            assert!(check_matcher(bad).is_err(), "{bad}");
        }
        assert_eq!(
            key_value("--context", "userId=42").ok(),
            Some(("userId".to_owned(), "42".to_owned()))
        );
        assert!(key_value("--context", "=42").is_err());
    }
}
