//! skuflow search indexer: `sku.records.v1` into Elasticsearch, one index per country
//! (`<prefix>-<cc>`) under one alias, never dropping a document: every document ends indexed
//! or dead-lettered, and offsets are stored only after that.

pub mod bulk;
pub mod lineage;
pub mod quality;
pub mod sink;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use skuflow_platform::component::{self, Component, OffsetsHome, RowCount, SinkInfo};
use skuflow_platform::shutdown::CancellationToken;
use skuflow_platform::SinkError;

pub use elasticsearch::http::transport::Transport;
pub use sink::{EsSink, Tuning};
use skuflow_platform::secret::Secret;

/// Default consumer group.
pub const GROUP: &str = "skuflow-search-indexer";

/// How to authenticate to Elasticsearch: basic auth or an API key, and the CA of its certificate.
/// Shared by the indexer and `skuflow status`.
#[derive(Debug, Clone, Default, Args)]
pub struct EsAuth {
    /// Basic-auth user.
    #[arg(long = "es-username", env = "SKUFLOW_ES_USERNAME")]
    pub username: Option<String>,
    /// Basic-auth password. Never logged; prefer the environment variable.
    #[arg(
        long = "es-password",
        env = "SKUFLOW_ES_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,
    /// API key, as `id:key` or the base64 encoded form Elasticsearch returns. Never logged.
    #[arg(
        long = "es-api-key",
        env = "SKUFLOW_ES_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<Secret>,
    /// PEM file of the CA that signed the cluster's certificate (full verification).
    #[arg(long = "es-ca-cert", env = "SKUFLOW_ES_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// A transport to the single node at `es_url`, authenticated as `auth` says.
pub fn transport(es_url: &str, auth: &EsAuth) -> anyhow::Result<Transport> {
    let url: elasticsearch::http::Url = es_url
        .parse()
        .with_context(|| "--es-url is not a URL".to_string())?;
    if !url.username().is_empty() || url.password().is_some() {
        bail!(
            "--es-url must not carry credentials; use --es-username/--es-password or --es-api-key"
        );
    }
    let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(url)).disable_proxy();
    match (&auth.username, &auth.password, &auth.api_key) {
        (_, _, Some(key)) => {
            b = b.auth(match key.expose().split_once(':') {
                Some((id, secret)) => Credentials::ApiKey(id.into(), secret.into()),
                None => Credentials::EncodedApiKey(key.expose().to_string()),
            })
        }
        (Some(u), Some(p), None) => {
            b = b.auth(Credentials::Basic(u.clone(), p.expose().to_string()))
        }
        (Some(_), None, None) => {
            bail!("--es-username needs --es-password (or SKUFLOW_ES_PASSWORD)")
        }
        (None, Some(_), None) => bail!("--es-password needs --es-username"),
        (None, None, None) => {}
    }
    if let Some(path) = &auth.ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA certificate {}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        b = b.cert_validation(CertificateValidation::Full(cert));
    }
    b.build().context("building the Elasticsearch client")
}

/// Flags of `skuflow-search-indexer`.
#[derive(Debug, Clone, Args)]
pub struct IndexerArgs {
    /// Elasticsearch URL (no credentials in it: use the flags below).
    #[arg(
        long = "es-url",
        env = "SKUFLOW_ES_URL",
        default_value = "http://127.0.0.1:9200"
    )]
    pub es_url: String,
    #[command(flatten)]
    pub auth: EsAuth,
    /// Index name prefix: documents go to `<prefix>-<cc>`.
    #[arg(
        long = "index-prefix",
        env = "SKUFLOW_INDEX_PREFIX",
        default_value = "skus"
    )]
    pub index_prefix: String,
    /// Alias over every country's index.
    #[arg(
        long = "index-alias",
        env = "SKUFLOW_INDEX_ALIAS",
        default_value = "skus"
    )]
    pub alias: String,
    /// Prefix of the upload history's and rejected rows' indices: `<prefix>-files` and the
    /// monthly `<prefix>-rejects-YYYY.MM`.
    #[arg(
        long = "quality-index-prefix",
        env = "SKUFLOW_QUALITY_INDEX_PREFIX",
        default_value = "skuflow"
    )]
    pub quality_index_prefix: String,
    /// Alias of the upload history's index.
    #[arg(
        long = "files-alias",
        env = "SKUFLOW_FILES_ALIAS",
        default_value = "skus-files"
    )]
    pub files_alias: String,
    /// Alias over the rejected rows' monthly indices.
    #[arg(
        long = "rejects-alias",
        env = "SKUFLOW_REJECTS_ALIAS",
        default_value = "skus-rejects"
    )]
    pub rejects_alias: String,
    /// Days rejected rows stay searchable (0: for ever): a month's index is deleted once the
    /// month ended this many days ago (checked hourly).
    #[arg(
        long = "rejects-retention-days",
        env = "SKUFLOW_REJECTS_RETENTION_DAYS",
        default_value_t = 90
    )]
    pub rejects_retention_days: u32,
    /// Only the records: no upload history and rejected rows (their consumer groups
    /// `<group>-files` and `<group>-rejects` do not run).
    #[arg(long = "no-quality-indices", env = "SKUFLOW_NO_QUALITY_INDICES")]
    pub no_quality_indices: bool,
    /// Most documents per `_bulk` request.
    #[arg(
        long = "bulk-max-docs",
        env = "SKUFLOW_BULK_MAX_DOCS",
        default_value_t = 1000
    )]
    pub bulk_max_docs: usize,
    /// Most bytes per `_bulk` request.
    #[arg(
        long = "bulk-max-bytes",
        env = "SKUFLOW_BULK_MAX_BYTES",
        default_value_t = 5_000_000
    )]
    pub bulk_max_bytes: usize,
    /// Most `_bulk` requests in flight at once.
    #[arg(
        long = "max-in-flight",
        env = "SKUFLOW_MAX_IN_FLIGHT",
        default_value_t = 4
    )]
    pub max_in_flight: usize,
    /// Rounds of retrying 429/5xx documents alone before the batch is retried as a whole.
    #[arg(
        long = "item-retries",
        env = "SKUFLOW_ITEM_RETRIES",
        default_value_t = 8
    )]
    pub item_retries: u32,
    /// Timeout of one request, in milliseconds.
    #[arg(
        long = "request-timeout-ms",
        env = "SKUFLOW_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

impl IndexerArgs {
    pub fn tuning(&self) -> Tuning {
        Tuning {
            bounds: bulk::Bounds {
                max_docs: self.bulk_max_docs.max(1),
                max_bytes: self.bulk_max_bytes.max(1),
            },
            max_in_flight: self.max_in_flight.max(1),
            item_retries: self.item_retries,
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
        }
    }

    /// The transport: one node, credentials and CA from the flags.
    pub fn transport(&self) -> anyhow::Result<Transport> {
        transport(&self.es_url, &self.auth)
    }

    /// Where the upload history and the rejected rows go.
    pub fn quality_layout(&self) -> quality::QualityLayout {
        quality::QualityLayout {
            prefix: self.quality_index_prefix.clone(),
            files_alias: self.files_alias.clone(),
            rejects_alias: self.rejects_alias.clone(),
        }
    }
}

/// The search indexer as a component of the consume loop.
pub struct SearchIndexer;

#[async_trait::async_trait]
impl Component for SearchIndexer {
    const INFO: SinkInfo = SinkInfo {
        name: "search-indexer",
        label: "search",
        group: GROUP,
        offsets: OffsetsHome::Broker,
        rows: RowCount::SearchIndex,
    };
    const ABOUT: &'static str = "Indexes sku.records.v1 into Elasticsearch, one index per country";
    type Args = IndexerArgs;
    type Sink = EsSink;

    fn consume_args(args: &IndexerArgs) -> &skuflow_platform::ConsumeArgs {
        &args.consume
    }

    /// The upload history and the rejected rows, each its own consumer group beside the records'.
    fn spawn_tasks(
        args: &IndexerArgs,
        kafka: &skuflow_platform::KafkaArgs,
        topics: &skuflow_platform::TopicArgs,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if args.no_quality_indices {
            return Ok(());
        }
        let group = args.consume.group.as_deref().unwrap_or(GROUP);
        let (transport, tuning, layout) = (args.transport()?, args.tuning(), args.quality_layout());
        let (t, l) = (transport.clone(), layout.clone());
        component::spawn_group(
            move || {
                quality::QualitySink::<skuflow_schemas::FileEvent>::new(
                    sink::Bulk::new(t.clone(), tuning, "search-files"),
                    l.clone(),
                    0,
                )
            },
            format!("{group}-files"),
            &args.consume,
            kafka,
            topics,
            shutdown,
        );
        let days = args.rejects_retention_days;
        component::spawn_group(
            move || {
                quality::QualitySink::<skuflow_schemas::RejectMessage>::new(
                    sink::Bulk::new(transport.clone(), tuning, "search-rejects"),
                    layout.clone(),
                    days,
                )
            },
            format!("{group}-rejects"),
            &args.consume,
            kafka,
            topics,
            shutdown,
        );
        Ok(())
    }

    async fn build(
        args: &IndexerArgs,
        _group: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<EsSink>> {
        let sink = EsSink::new(
            args.transport()?,
            bulk::Layout {
                prefix: args.index_prefix.clone(),
            },
            args.tuning(),
        );
        // The template must be in place before the first document creates an index.
        let mut backoff = skuflow_platform::backoff::Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
        );
        loop {
            match sink.put_template(&args.alias).await {
                Ok(()) => break,
                Err(SinkError::Fatal(e)) => return Err(e),
                Err(SinkError::Retriable(e)) => {
                    let wait = backoff.next_pause();
                    tracing::warn!(attempt = backoff.attempts(), retry_in_ms = wait.as_millis() as u64, cause = %e,
                        "Elasticsearch not reachable yet; retrying the index template.");
                    if !skuflow_platform::backoff::Backoff::sleep(wait, shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
        tracing::info!(prefix = %args.index_prefix, alias = %args.alias, "Index template in place.");
        Ok(Some(sink))
    }
}

/// Runs the indexer until `shutdown`.
pub async fn run(
    args: &IndexerArgs,
    kafka: &skuflow_platform::KafkaArgs,
    topics: &skuflow_platform::TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<skuflow_platform::consume::RunStats> {
    component::run::<SearchIndexer>(args, kafka, topics, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IndexerArgs,
    }

    fn args(flags: &[&str]) -> IndexerArgs {
        let mut all = vec!["skuflow-search-indexer"];
        all.extend_from_slice(flags);
        Cli::try_parse_from(all).unwrap().args
    }

    fn err(flags: &[&str]) -> String {
        format!("{:#}", args(flags).transport().unwrap_err())
    }

    #[test]
    fn credentials_are_checked_and_never_shown() {
        assert!(err(&["--es-url=http://u:secret@es:9200"]).contains("must not carry credentials"));
        assert!(err(&["--es-username=u"]).contains("needs --es-password"));
        assert!(err(&["--es-password=p"]).contains("needs --es-username"));
        assert!(err(&["--es-url=not a url"]).contains("not a URL"));
        assert!(err(&["--es-ca-cert=/nonexistent/ca.pem"]).contains("/nonexistent/ca.pem"));
        args(&["--es-username=u", "--es-password=p"])
            .transport()
            .unwrap();
        args(&["--es-api-key=id:key"]).transport().unwrap();
        args(&["--es-api-key=aWQ6a2V5"]).transport().unwrap();
        let shown = format!(
            "{:?}",
            args(&[
                "--es-username=u",
                "--es-password=hunter2",
                "--es-api-key=id:k3y"
            ])
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("skuflow-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let e = err(&[&format!("--es-ca-cert={}", path.display())]);
        assert!(e.contains("not a PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
