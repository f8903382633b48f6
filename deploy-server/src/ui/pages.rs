//! The dashboard's HTML: the page shell the script renders into, the login form and the
//! error page. Everything that comes from a request or a token (names, `next`) is escaped
//! with [`escape`]; no page has an inline script or style (the CSP forbids both).

use std::fmt::Write as _;

use crate::auth::Caller;

use super::assets;

/// `text` with `&`, `<`, `>`, `"` and `'` as character references: safe in element content
/// and in quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Rollouts,
    Flags,
    Incidents,
}

/// Which page a shell is: its `data-page` and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Page {
    /// Every app's rollout.
    Rollouts,
    /// One app's rollout.
    Rollout(String),
    /// Every flag.
    Flags,
    /// One flag.
    Flag(String),
    /// Incidents, alerts and silences.
    Incidents,
}

impl Page {
    fn data_page(&self) -> &'static str {
        match self {
            Self::Rollouts => "rollouts",
            Self::Rollout(_) => "rollout",
            Self::Flags => "flags",
            Self::Flag(_) => "flag",
            Self::Incidents => "incidents",
        }
    }

    fn section(&self) -> Section {
        match self {
            Self::Rollouts | Self::Rollout(_) => Section::Rollouts,
            Self::Flags | Self::Flag(_) => Section::Flags,
            Self::Incidents => Section::Incidents,
        }
    }

    fn title(&self) -> String {
        match self {
            Self::Rollouts => "Rollouts".to_owned(),
            Self::Rollout(app) => format!("{app} · Rollouts"),
            Self::Flags => "Flags".to_owned(),
            Self::Flag(name) => format!("{name} · Flags"),
            Self::Incidents => "Incidents".to_owned(),
        }
    }
}

/// The `<head>` every page shares: charset, viewport, title, the stylesheet.
fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} · deploykit</title>\n\
         <link rel=\"stylesheet\" href=\"{}\">\n",
        escape(title),
        assets::CSS.url(),
    );
}

/// The shell of `page` for `caller`, whose session's CSRF token is `csrf`: the header
/// (navigation, who is signed in, sign out), `#flash` and an empty `main` the script fills.
pub(crate) fn shell(page: &Page, caller: &Caller, csrf: &str) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, &page.title());
    let csrf = escape(csrf);
    let name = escape(&caller.name);
    let _ = write!(
        out,
        "<meta name=\"csrf-token\" content=\"{csrf}\">\n\
         <script src=\"{}\" defer></script></head>\n\
         <body data-page=\"{}\" data-role=\"{}\" data-user=\"{name}\"",
        assets::JS.url(),
        page.data_page(),
        caller.role,
    );
    match page {
        Page::Rollout(app) => {
            let _ = write!(out, " data-app=\"{}\"", escape(app));
        }
        Page::Flag(flag) => {
            let _ = write!(out, " data-flag=\"{}\"", escape(flag));
        }
        Page::Rollouts | Page::Flags | Page::Incidents => {}
    }
    out.push_str(
        ">\n<a class=\"skip\" href=\"#main\">Skip to content</a>\n<header><nav aria-label=\"Sections\">",
    );
    let links = [
        (Section::Rollouts, "/ui/rollouts", "Rollouts"),
        (Section::Flags, "/ui/flags", "Flags"),
        (Section::Incidents, "/ui/incidents", "Incidents"),
    ];
    for (section, href, label) in links {
        let current = if section == page.section() {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(out, "<a href=\"{href}\"{current}>{label}</a>");
    }
    let _ = write!(
        out,
        "</nav>\n<span class=\"who\">{name} ({})</span>\n\
         <form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Sign out</button></form></header>\n\
         <div id=\"flash\" role=\"status\" aria-live=\"polite\"></div>\n\
         <main id=\"main\" tabindex=\"-1\"><noscript>This dashboard needs JavaScript.</noscript></main>\n\
         </body></html>\n",
        caller.role,
    );
    out
}

/// The sign-in form: a labelled password field for the token, the page to go back to, and
/// `error` (a sentence for people) when the last attempt failed.
pub(crate) fn login(next: &str, error: Option<&str>) -> String {
    let mut out = String::with_capacity(1536);
    head(&mut out, "Sign in");
    out.push_str("</head>\n<body class=\"login\">\n<main id=\"main\">\n<h1>deploykit</h1>\n");
    out.push_str("<form class=\"login-form\" method=\"post\" action=\"/ui/login\">\n");
    if let Some(error) = error {
        let _ = writeln!(out, "<p class=\"error\" role=\"alert\">{}</p>", escape(error));
    }
    let _ = write!(
        out,
        "<label for=\"token\">Token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\n\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\n\
         <button type=\"submit\">Sign in</button>\n</form>\n\
         <p class=\"hint\">Sign in with a deploykit token (<code>deployctl tokens create</code> makes one). \
         Signed in already and came here from a link on another site? \
         <a href=\"{}\">Continue</a> (the session cookie is only sent along within the site).</p>\n\
         </main>\n</body></html>\n",
        escape(next),
        escape(next),
    );
    out
}

/// A page that only says what went wrong (`heading`, `detail`) with a way back.
pub(crate) fn message(heading: &str, detail: &str) -> String {
    let mut out = String::with_capacity(1024);
    head(&mut out, heading);
    let _ = write!(
        out,
        "</head>\n<body class=\"login\">\n<main id=\"main\">\n<h1>{}</h1>\n<p>{}</p>\n\
         <p><a href=\"/ui/rollouts\">Back to the dashboard</a></p>\n</main>\n</body></html>\n",
        escape(heading),
        escape(detail),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(escape("plain-name_1.2"), "plain-name_1.2");
    }
}
