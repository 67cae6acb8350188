//! E-mail over SMTP: one message per event and route to the route's addresses, with a plain-text
//! and an HTML body (file, outcome, counts, the first rejected rows, where the full report is).
//!
//! The server is reached with STARTTLS by default (or TLS from the first byte, port 465),
//! verified against the Mozilla roots and `--smtp-ca-file`; AUTH with `--smtp-username` and the
//! password from `--smtp-password-file` or the environment. A 4xx answer, a timeout or a broken
//! connection is retried with the webhooks' backoff; a 5xx answer (unknown mailbox, refused
//! credentials) is not, and the event is dead-lettered with the reason. Every message carries
//! `Skuflow-Event-Id` and a `Message-ID` made from it, the same on every redelivery.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use skuflow_platform::secret::Secret;
use skuflow_platform::shutdown::CancellationToken;
use skuflow_schemas::{FileReport, FileStatus};

use crate::delivery::{with_retries, Delivery, Failure, Policy};
use crate::webhook::{Notification, EVENT_ID_HEADER};

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or pod; mail and password travel in clear.
    None,
}

/// Flags of the e-mail channel; without `--smtp-host` no route may name addresses.
#[derive(Debug, Clone, Args)]
pub struct SmtpArgs {
    /// SMTP server that sends the notification e-mails; unset: e-mail is off.
    #[arg(long = "smtp-host", env = "SKUFLOW_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port (default: 587 with STARTTLS, 465 with TLS, 25 without).
    #[arg(long = "smtp-port", env = "SKUFLOW_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// How the SMTP connection is secured.
    #[arg(long = "smtp-tls", env = "SKUFLOW_SMTP_TLS", value_enum, default_value_t = SmtpTls::Starttls)]
    pub smtp_tls: SmtpTls,
    /// A PEM file of CA certificates the SMTP server's certificate may chain to, besides the
    /// Mozilla roots (a private CA).
    #[arg(long = "smtp-ca-file", env = "SKUFLOW_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// SMTP AUTH user name.
    #[arg(
        long = "smtp-username",
        env = "SKUFLOW_SMTP_USERNAME",
        requires = "smtp_host"
    )]
    pub smtp_username: Option<String>,
    /// SMTP AUTH password (never logged); prefer --smtp-password-file.
    #[arg(
        long = "smtp-password",
        env = "SKUFLOW_SMTP_PASSWORD",
        hide_env_values = true,
        requires = "smtp_username",
        conflicts_with = "smtp_password_file"
    )]
    pub smtp_password: Option<Secret>,
    /// A file holding the SMTP AUTH password (e.g. a mounted Kubernetes Secret).
    #[arg(long = "smtp-password-file", env = "SKUFLOW_SMTP_PASSWORD_FILE",
          value_parser = skuflow_platform::secret::from_file, requires = "smtp_username")]
    pub smtp_password_file: Option<Secret>,
    /// The sender of the e-mails, e.g. `skuflow <uploads@example.com>`.
    #[arg(long = "mail-from", env = "SKUFLOW_MAIL_FROM", requires = "smtp_host")]
    pub mail_from: Option<String>,
    /// Rejected rows listed in an e-mail; the rest are in the report and the rejects file.
    #[arg(long = "mail-rows", env = "SKUFLOW_MAIL_ROWS", default_value_t = 10)]
    pub mail_rows: usize,
}

/// The e-mail channel.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    rows: usize,
}

impl Mailer {
    /// The mailer of `args`; `None` when no SMTP server is configured.
    pub fn new(args: &SmtpArgs, timeout: std::time::Duration) -> anyhow::Result<Option<Mailer>> {
        // An empty value is an unset one (compose passes `${SKUFLOW_SMTP_HOST:-}` through).
        let set = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let Some(host) = set(&args.smtp_host) else {
            return Ok(None);
        };
        let Some(from) = set(&args.mail_from) else {
            bail!("--smtp-host needs --mail-from (the sender of the e-mails)");
        };
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("--mail-from {from:?} is not an address"))?;
        let tls = || -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(host.clone());
            if let Some(path) = &args.smtp_ca_file {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--smtp-ca-file {}", path.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .with_context(|| format!("--smtp-ca-file {}", path.display()))?;
                b = b.add_root_certificate(cert);
            }
            Ok(b.build_rustls()?)
        };
        let (tls, port) = match args.smtp_tls {
            SmtpTls::Starttls => (Tls::Required(tls()?), 587),
            SmtpTls::Tls => (Tls::Wrapper(tls()?), 465),
            SmtpTls::None => {
                tracing::warn!(
                    host = host.as_str(),
                    "--smtp-tls=none: e-mails and the SMTP password cross the network unencrypted."
                );
                (Tls::None, 25)
            }
        };
        let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
            .port(args.smtp_port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(user) = set(&args.smtp_username) {
            let Some(password) = args
                .smtp_password
                .as_ref()
                .or(args.smtp_password_file.as_ref())
                .filter(|p| !p.expose().is_empty())
            else {
                bail!("--smtp-username needs --smtp-password-file or SKUFLOW_SMTP_PASSWORD");
            };
            t = t.credentials(Credentials::new(user, password.expose().to_string()));
        }
        Ok(Some(Mailer {
            transport: t.build(),
            from,
            rows: args.mail_rows,
        }))
    }

    /// Sends the e-mail of `n` to `to` until it is accepted, refused, or the attempts run out.
    pub async fn send(
        &self,
        to: &[Mailbox],
        n: &Notification<'_>,
        report: &Result<FileReport, String>,
        policy: &Policy,
        shutdown: &CancellationToken,
    ) -> Delivery {
        let message = match self.message(to, n, report) {
            Ok(m) => m,
            Err(e) => return Delivery::Undelivered(format!("the e-mail could not be built: {e}")),
        };
        with_retries("email", &n.id, policy, shutdown, || async {
            match self.transport.send(message.clone()).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(Failure::refused(smtp_reason(&e))),
                Err(e) => Err(Failure::retry(smtp_reason(&e))),
            }
        })
        .await
    }

    fn message(
        &self,
        to: &[Mailbox],
        n: &Notification<'_>,
        report: &Result<FileReport, String>,
    ) -> anyhow::Result<Message> {
        let mail = compose(n, report, self.rows);
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject)
            .message_id(Some(format!(
                "<{}.{}@skuflow>",
                n.id,
                crate::webhook::short_digest(&[n.route])
            )))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(EVENT_ID_HEADER),
                n.id.clone(),
            ));
        for m in to {
            b = b.to(m.clone());
        }
        Ok(b.multipart(MultiPart::alternative_plain_html(mail.plain, mail.html))?)
    }
}

/// An SMTP error as a dead-letter reason: the server's code and words, never the credentials.
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    match e.status() {
        Some(code) => format!("the SMTP server answered {code}: {e}"),
        None if e.is_timeout() => "the SMTP server did not answer in time".to_string(),
        None if e.is_tls() => format!("TLS with the SMTP server failed: {e}"),
        None => format!("SMTP: {e}"),
    }
}

/// The parts of one e-mail.
#[derive(Debug)]
pub struct Mail {
    pub subject: String,
    pub plain: String,
    pub html: String,
}

use skuflow_platform::text::html_escape as esc;

/// The e-mail of `n`: what became of the upload, and its first `rows` rejected rows when the
/// report could be read (`report` is the reason when not).
pub fn compose(n: &Notification<'_>, report: &Result<FileReport, String>, rows: usize) -> Mail {
    let ev = n.upload;
    let file = format!("{}/{}", ev.bucket, ev.key);
    let rejected = ev.rows_rejected.unwrap_or(0);
    let outcome = match (ev.status, rejected) {
        (FileStatus::Failed, _) => "failed".to_string(),
        (FileStatus::Late, _) => "late: no upload by the usual time".to_string(),
        (_, 0) => "accepted".to_string(),
        (_, 1) => "accepted, 1 row rejected".to_string(),
        (_, r) => format!("accepted, {r} rows rejected"),
    };
    let subject = match (ev.status, &ev.store_id) {
        (FileStatus::Late, Some(store)) => match ev.last_modified {
            Some(last) => format!(
                "skuflow: no upload from {store} since {}",
                last.format("%Y-%m-%d %H:%M UTC")
            ),
            None => format!("skuflow: no upload from {store}"),
        },
        _ => format!("skuflow: {} {outcome}", ev.key),
    };
    let late = ev.status == FileStatus::Late;
    let file_label = if late { "Last upload" } else { "File" };
    let mut facts: Vec<(&str, String)> = vec![(file_label, file.clone()), ("Outcome", outcome)];
    if let Some(store) = &ev.store_id {
        facts.push(("Store", store.clone()));
    }
    if let Some(total) = ev.rows_total {
        facts.push((
            "Rows",
            format!(
                "{total} in the file, {} accepted, {rejected} rejected",
                ev.rows_valid.unwrap_or(0)
            ),
        ));
    }
    if let Some(reason) = &ev.reason {
        facts.push(("Reason", reason.clone()));
    }
    for w in &ev.warnings {
        facts.push(("Warning", w.clone()));
    }
    if let Some(r) = &n.report {
        facts.push(("Full report", r.clone()));
    }
    if let Some(r) = &n.rejects {
        facts.push(("Rows to fix and upload again", r.clone()));
    }
    if !late {
        facts.push(("File id", ev.file_id.clone()));
    }
    facts.push(("Event id", n.id.clone()));

    // The first rejected rows, one line per reason.
    let mut listed: Vec<[String; 5]> = Vec::new();
    let mut note = None;
    match report {
        Ok(r) => {
            for row in r.rejected_rows.iter().take(rows) {
                for reason in &row.reasons {
                    listed.push([
                        row.line.to_string(),
                        reason.column.map(|c| c.to_string()).unwrap_or_default(),
                        reason.field.clone().unwrap_or_default(),
                        reason.value.clone().unwrap_or_default(),
                        format!("{}: {}", reason.rule, reason.message),
                    ]);
                }
            }
            let shown = r.rejected_rows.len().min(rows) as u64;
            if rejected > shown {
                note = Some(format!(
                    "The first {shown} of {rejected} rejected rows; all of them are in the report."
                ));
            }
        }
        Err(why) if rejected > 0 => {
            note = Some(format!(
                "The rejected rows are not listed here: {why}. They are in the report."
            ));
        }
        Err(_) => {}
    }

    let mut plain = format!("Your upload {file} was processed.\n\n");
    for (k, v) in &facts {
        let _ = writeln!(plain, "{k}: {v}");
    }
    if !listed.is_empty() {
        plain.push_str("\nRejected rows (line, column, field, value, reason):\n");
        for [line, col, field, value, why] in &listed {
            let _ = writeln!(
                plain,
                "  line {line}, column {col}, {field} = {value:?}: {why}"
            );
        }
    }
    if let Some(note) = &note {
        let _ = writeln!(plain, "\n{note}");
    }

    let mut html = format!(
        "<!DOCTYPE html><html><body><p>Your upload <b>{}</b> was processed.</p><table>",
        esc(&file)
    );
    for (k, v) in &facts {
        let _ = write!(
            html,
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            esc(k),
            esc(v)
        );
    }
    html.push_str("</table>");
    if !listed.is_empty() {
        html.push_str("<h3>Rejected rows</h3><table border=\"1\" cellpadding=\"4\"><tr><th>Line</th><th>Column</th><th>Field</th><th>Value</th><th>Reason</th></tr>");
        for cells in &listed {
            html.push_str("<tr>");
            for c in cells {
                let _ = write!(html, "<td>{}</td>", esc(c));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }
    if let Some(note) = &note {
        let _ = write!(html, "<p>{}</p>", esc(note));
    }
    html.push_str("</body></html>");
    Mail {
        subject,
        plain,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skuflow_schemas::{FileEvent, RejectReason, ReportRow};

    fn report(rows: usize) -> FileReport {
        FileReport {
            file_id: "f1".into(),
            status: FileStatus::Completed,
            bucket: "skus-de".into(),
            key: "incoming/a.csv".into(),
            etag: None,
            last_modified: None,
            reason: None,
            rows_total: Some(10),
            rows_valid: Some(10 - rows as u64),
            rows_rejected: Some(rows as u64),
            warnings: vec![],
            rejected_rows: (0..rows)
                .map(|i| ReportRow {
                    line: i as u64 + 2,
                    raw: String::new(),
                    raw_truncated: false,
                    reasons: vec![RejectReason {
                        field: Some("unit_price".into()),
                        column: Some(4),
                        value: Some("<b>abc</b>".into()),
                        rule: "decimal".into(),
                        message: "not a decimal number".into(),
                    }],
                })
                .collect(),
            rejected_rows_cap: 1000,
            rejected_rows_truncated: false,
            gave_up_after_attempts: None,
        }
    }

    #[test]
    fn the_mail_lists_the_first_rows_and_escapes_the_html() {
        let mut ev = FileEvent::new("f1", FileStatus::Completed, "skus-de", "incoming/a.csv");
        ev.moved_to = Some("processed/a.csv".into());
        (ev.rows_total, ev.rows_valid, ev.rows_rejected) = (Some(10), Some(7), Some(3));
        let n = Notification::new(&ev, "r");
        let m = compose(&n, &Ok(report(3)), 2);
        assert_eq!(
            m.subject,
            "skuflow: incoming/a.csv accepted, 3 rows rejected"
        );
        assert!(
            m.plain
                .contains("Rows: 10 in the file, 7 accepted, 3 rejected"),
            "{}",
            m.plain
        );
        assert!(m
            .plain
            .contains("line 2, column 4, unit_price = \"<b>abc</b>\": decimal"));
        assert!(m.plain.contains("line 3,") && !m.plain.contains("line 4,"));
        assert!(m.plain.contains("The first 2 of 3 rejected rows"));
        assert!(m.plain.contains("skus-de/processed/a.csv.rejects.csv"));
        assert!(m.html.contains("&lt;b&gt;abc&lt;/b&gt;") && !m.html.contains("<b>abc"));

        let m = compose(&n, &Err("the report is missing".into()), 2);
        assert!(
            m.plain.contains("not listed here: the report is missing"),
            "{}",
            m.plain
        );
    }

    #[test]
    fn a_failed_upload_says_why() {
        let mut ev = FileEvent::new("f2", FileStatus::Failed, "skus-de", "incoming/b.csv");
        ev.reason = Some("missing required column unit_price".into());
        let n = Notification::new(&ev, "r");
        let m = compose(&n, &Err("no report".into()), 10);
        assert_eq!(m.subject, "skuflow: incoming/b.csv failed");
        assert!(m
            .plain
            .contains("Reason: missing required column unit_price"));
    }
}
