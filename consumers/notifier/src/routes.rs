//! The routing file: who hears about which uploads.
//!
//! ```toml
//! [[route]]
//! name = "ikea-germany"            # in logs, metrics and dead letters
//! country = "DE"                   # each match field is optional; `*` matches any run of
//! store_category = "retail_chain"  # characters, the comparison ignores case
//! chain = "ikea"
//! store_id = "berlin-*"
//! outcomes = ["completed", "failed", "late"]   # the default
//! webhook = "https://hooks.example.com/skuflow"
//! webhook_secret_env = "SKUFLOW_SECRET_IKEA"   # or webhook_secret_file = "/secrets/ikea"
//! email = ["uploads@ikea-berlin.example"]      # needs --smtp-host
//! ```
//!
//! Every route an upload matches is notified, by webhook, e-mail or both (a route names at
//! least one). Secrets are read when the file is loaded and never logged; a webhook without one
//! is refused (a store must be able to check who signed).
//! The file is read again when it changes; a file that no longer parses is reported and the
//! routes loaded before stay in force.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context};
use lettre::message::Mailbox;
use serde::Deserialize;
use skuflow_platform::secret::Secret;
use skuflow_schemas::{FileEvent, FileStatus, StoreCategory};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    route: Vec<RouteEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    name: String,
    country: Option<String>,
    store_category: Option<String>,
    chain: Option<String>,
    store_id: Option<String>,
    outcomes: Option<Vec<String>>,
    webhook: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    email: Option<Vec<String>>,
}

/// A webhook endpoint and the secret its deliveries are signed with.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
}

/// One route: which uploads, and where they are told.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    country: Option<String>,
    store_category: Option<String>,
    chain: Option<String>,
    store_id: Option<String>,
    outcomes: Vec<FileStatus>,
    pub webhook: Option<Webhook>,
    /// Addresses told by e-mail, in one message.
    pub email: Vec<Mailbox>,
}

impl Route {
    /// Whether the route wants to hear about `ev`.
    pub fn matches(&self, ev: &FileEvent) -> bool {
        let category = ev.store_category.map(|c| match c {
            StoreCategory::RetailChain => "retail_chain",
            StoreCategory::Individual => "individual",
        });
        self.outcomes.contains(&ev.status)
            && field_matches(&self.country, ev.country.as_deref())
            && field_matches(&self.store_category, category)
            && field_matches(&self.chain, ev.chain.as_deref())
            && field_matches(&self.store_id, ev.store_id.as_deref())
    }
}

fn field_matches(pattern: &Option<String>, value: Option<&str>) -> bool {
    match (pattern, value) {
        (None, _) => true,
        (Some(p), Some(v)) => glob(&p.to_lowercase(), &v.to_lowercase()),
        (Some(_), None) => false,
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn outcome(word: &str) -> anyhow::Result<FileStatus> {
    Ok(match word {
        "completed" => FileStatus::Completed,
        "failed" => FileStatus::Failed,
        "late" => FileStatus::Late,
        other => bail!("unknown outcome {other:?} (completed, failed, late)"),
    })
}

fn webhook(url: &str, e: &RouteEntry) -> anyhow::Result<Webhook> {
    let parsed =
        reqwest::Url::parse(url).map_err(|err| anyhow::anyhow!("webhook {url:?}: {err}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        bail!("webhook {url:?}: not an http(s) URL");
    }
    Ok(Webhook {
        url: url.to_string(),
        secret: secret(e)?,
    })
}

fn secret(entry: &RouteEntry) -> anyhow::Result<Secret> {
    match (&entry.webhook_secret_env, &entry.webhook_secret_file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
            _ => bail!("webhook_secret_env: the environment variable {var} is not set"),
        },
        (None, Some(path)) => {
            let v = std::fs::read_to_string(path)
                .with_context(|| format!("webhook_secret_file {}", path.display()))?;
            let v = v.trim_end_matches(['\n', '\r']);
            if v.is_empty() {
                bail!("webhook_secret_file {} is empty", path.display());
            }
            Ok(Secret::new(v))
        }
        (Some(_), Some(_)) => bail!("give webhook_secret_env or webhook_secret_file, not both"),
        (None, None) => {
            bail!("a webhook needs webhook_secret_env or webhook_secret_file to sign with")
        }
    }
}

/// Parses a routing file's text; errors name the route. `mail` says whether e-mail is on
/// (`--smtp-host`): without it a route naming addresses is refused.
pub fn parse(text: &str, mail: bool) -> anyhow::Result<Vec<Route>> {
    let file: RoutesFile = toml::from_str(text)?;
    let mut routes = Vec::with_capacity(file.route.len());
    for (i, e) in file.route.into_iter().enumerate() {
        let at = || format!("route {} ({:?})", i + 1, e.name);
        let outcomes = match &e.outcomes {
            None => vec![FileStatus::Completed, FileStatus::Failed, FileStatus::Late],
            Some(words) => words
                .iter()
                .map(|w| outcome(w))
                .collect::<anyhow::Result<_>>()
                .with_context(at)?,
        };
        let webhook = match &e.webhook {
            None if e.webhook_secret_env.is_some() || e.webhook_secret_file.is_some() => {
                return Err(anyhow::anyhow!("a webhook secret without a webhook")).with_context(at)
            }
            None => None,
            Some(url) => Some(webhook(url, &e).with_context(at)?),
        };
        let email = e
            .email
            .iter()
            .flatten()
            .map(|a| {
                a.parse::<Mailbox>()
                    .map_err(|err| anyhow::anyhow!("email {a:?} is not an address: {err}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(at)?;
        if !email.is_empty() && !mail {
            return Err(anyhow::anyhow!(
                "the route names e-mail addresses but no SMTP server is set (--smtp-host)"
            ))
            .with_context(at);
        }
        if webhook.is_none() && email.is_empty() {
            return Err(anyhow::anyhow!(
                "the route has neither a webhook nor an email"
            ))
            .with_context(at);
        }
        routes.push(Route {
            name: e.name,
            country: e.country,
            store_category: e.store_category,
            chain: e.chain,
            store_id: e.store_id,
            outcomes,
            webhook,
            email,
        });
    }
    Ok(routes)
}

/// The routes of a file, read again when its modification time changes.
#[derive(Debug)]
pub struct RoutesWatch {
    path: PathBuf,
    mail: bool,
    loaded_at: Option<SystemTime>,
    routes: Vec<Route>,
}

impl RoutesWatch {
    /// Loads `path`; an error here stops the process (a wrong file at start is a wrong setting).
    pub fn load(path: &Path, mail: bool) -> anyhow::Result<RoutesWatch> {
        let mut w = RoutesWatch {
            path: path.to_path_buf(),
            mail,
            loaded_at: None,
            routes: Vec::new(),
        };
        w.read()
            .with_context(|| format!("routing file {}", path.display()))?;
        tracing::info!(file = %path.display(), routes = w.routes.len(), "Routes loaded.");
        Ok(w)
    }

    fn read(&mut self) -> anyhow::Result<()> {
        let modified = std::fs::metadata(&self.path)?.modified()?;
        let text = std::fs::read_to_string(&self.path)?;
        self.routes = parse(&text, self.mail)?;
        self.loaded_at = Some(modified);
        Ok(())
    }

    /// The routes in force: the file is read again first when it changed since it was loaded.
    /// A file that does not parse leaves the earlier routes in force, and says so once.
    pub fn current(&mut self) -> &[Route] {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified());
        if let Ok(m) = modified {
            if Some(m) != self.loaded_at {
                let before = self.loaded_at;
                match self.read() {
                    Ok(()) => {
                        tracing::info!(file = %self.path.display(), routes = self.routes.len(), "Routes reloaded.")
                    }
                    Err(e) => {
                        // Not again until the file changes once more.
                        self.loaded_at = Some(m);
                        tracing::error!(file = %self.path.display(), error = %format!("{e:#}"),
                            "The routing file does not parse; the routes loaded before stay in force.");
                        if before.is_none() {
                            self.routes.clear();
                        }
                    }
                }
            }
        }
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: FileStatus, store: &str) -> FileEvent {
        let mut ev = FileEvent::new("f1", status, "skus-de", "incoming/x.csv");
        ev.country = Some("DE".into());
        ev.store_id = Some(store.into());
        ev.store_category = Some(StoreCategory::RetailChain);
        ev.chain = Some("ikea".into());
        ev
    }

    #[test]
    fn routes_match_by_pattern_and_outcome() {
        std::env::set_var("SKUFLOW_TEST_ROUTE_SECRET", "s3cr3t");
        let routes = parse(
            r#"
            [[route]]
            name = "berlin"
            country = "de"
            chain = "IKEA"
            store_id = "berlin-*"
            webhook = "https://hooks.example.com/a"
            webhook_secret_env = "SKUFLOW_TEST_ROUTE_SECRET"

            [[route]]
            name = "failures"
            outcomes = ["failed"]
            webhook = "http://127.0.0.1:9/b"
            webhook_secret_env = "SKUFLOW_TEST_ROUTE_SECRET"

            [[route]]
            name = "by-mail"
            store_id = "munich-*"
            email = ["Desk <desk@munich.example>", "ops@munich.example"]
            "#,
            true,
        )
        .unwrap();
        let names = |ev: &FileEvent| -> Vec<&str> {
            routes
                .iter()
                .filter(|r| r.matches(ev))
                .map(|r| r.name.as_str())
                .collect()
        };
        assert_eq!(
            names(&event(FileStatus::Completed, "berlin-001")),
            ["berlin"]
        );
        assert_eq!(
            names(&event(FileStatus::Failed, "berlin-001")),
            ["berlin", "failures"]
        );
        assert_eq!(
            names(&event(FileStatus::Completed, "munich-001")),
            ["by-mail"]
        );
        assert_eq!(routes[2].email.len(), 2);
        assert!(routes[2].webhook.is_none());
        assert!(names(&event(FileStatus::Accepted, "berlin-001")).is_empty());
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxc") && glob("*", ""));
    }

    #[test]
    fn bad_routes_say_which_and_why() {
        let err = |text: &str| format!("{:#}", parse(text, false).unwrap_err());
        let e = err("[[route]]\nname = \"x\"\nwebhook = \"https://h/\"\n");
        assert!(e.contains("route 1 (\"x\")") && e.contains("sign"), "{e}");
        let e =
            err("[[route]]\nname = \"y\"\nwebhook = \"ftp://h/\"\nwebhook_secret_env = \"PATH\"\n");
        assert!(e.contains("not an http(s) URL"), "{e}");
        let e = err("[[route]]\nname = \"z\"\noutcomes = [\"accepted\"]\nwebhook = \"https://h/\"\nwebhook_secret_env = \"PATH\"\n");
        assert!(e.contains("unknown outcome"), "{e}");
        let e = err("[[route]]\nname = \"w\"\nshop = \"1\"\n");
        assert!(e.contains("shop"), "{e}");
        let e = err("[[route]]\nname = \"v\"\n");
        assert!(e.contains("neither a webhook nor an email"), "{e}");
        let e = err("[[route]]\nname = \"u\"\nemail = [\"a@b.example\"]\n");
        assert!(e.contains("--smtp-host"), "{e}");
        let e = format!(
            "{:#}",
            parse(
                "[[route]]\nname = \"t\"\nemail = [\"not an address\"]\n",
                true
            )
            .unwrap_err()
        );
        assert!(
            e.contains("route 1 (\"t\")") && e.contains("not an address"),
            "{e}"
        );
    }

    #[test]
    fn the_file_is_read_again_when_it_changes_and_a_broken_one_keeps_the_routes() {
        std::env::set_var("SKUFLOW_TEST_ROUTE_SECRET2", "s");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        let route = |name: &str| {
            format!("[[route]]\nname = \"{name}\"\nwebhook = \"https://h/\"\nwebhook_secret_env = \"SKUFLOW_TEST_ROUTE_SECRET2\"\n")
        };
        std::fs::write(&path, route("one")).unwrap();
        let mut w = RoutesWatch::load(&path, false).unwrap();
        assert_eq!(w.current()[0].name, "one");
        let touch = |text: String, secs: u64| {
            std::fs::write(&path, text).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        touch(route("two"), 1_000);
        assert_eq!(w.current()[0].name, "two");
        touch("[[route]\nbroken".into(), 2_000);
        assert_eq!(w.current()[0].name, "two", "a broken file keeps the routes");
    }
}
