//! PostgreSQL over TLS on a real server (`ssl = on`, only `hostssl` connections allowed) with a
//! CA the test makes: every sslmode behaves as libpq's, a refused certificate is a one-line
//! error naming the host and the reason, and the warehouse loader loads over `verify-full`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::tls::{make_ca, make_cert};
use common::{produce, Pipeline, TempPostgres};
use skuflow_e2e::record_messages;
use skuflow_platform::SinkError;

/// A server that accepts TLS connections only.
fn tls_postgres(certs: &Path) -> TempPostgres {
    TempPostgres::start_with(|data| {
        for f in ["server.crt", "server.key"] {
            std::fs::copy(certs.join(f), data.join(f)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
    })
}

async fn try_connect(url: &str) -> Result<bool, SinkError> {
    let client = skuflow_platform::pg::connect(url).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_behaves_as_libpq_and_refusals_say_why() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_ca(certs.path(), "other-ca");
    make_cert(certs.path(), "ca", "server", "serverAuth");
    let pg = tls_postgres(certs.path());
    let ca = certs.path().join("ca.pem");
    let other = certs.path().join("other-ca.pem");
    let url = |host: &str, q: &str| format!("postgres://postgres@{host}:{}/postgres?{q}", pg.port);

    let ok = [
        url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        ),
        url(
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
        ),
        url("127.0.0.1", "sslmode=require"),
        url("127.0.0.1", "sslmode=prefer"),
    ];
    for u in &ok {
        match try_connect(u).await {
            Ok(ssl) => assert!(ssl, "{u}: connected without TLS"),
            Err(e) => panic!("{u}: {e}"),
        }
    }

    let refused = [
        // The certificate names 127.0.0.1, not localhost.
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            ),
            "localhost",
            "not valid for name",
        ),
        // Signed by a CA the client does not trust.
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={}", other.display()),
            ),
            "127.0.0.1",
            "UnknownIssuer",
        ),
        (
            url(
                "127.0.0.1",
                &format!("sslmode=require&sslrootcert={}", other.display()),
            ),
            "127.0.0.1",
            "UnknownIssuer",
        ),
    ];
    for (u, host, why) in &refused {
        match try_connect(u).await {
            Ok(_) => panic!("{u}: connected"),
            Err(SinkError::Fatal(e)) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains(host) && msg.contains(why) && msg.contains("TLS refused"),
                    "{u}: {msg}"
                );
                assert!(!msg.contains('\n'), "one line: {msg}");
            }
            Err(e) => panic!("{u}: not a fatal error: {e}"),
        }
    }
    // The server takes TLS connections only.
    match try_connect(&url("127.0.0.1", "sslmode=disable")).await {
        Ok(_) => panic!("connected without TLS"),
        Err(SinkError::Fatal(e)) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains("no encryption") || msg.contains("pg_hba"),
                "{msg}"
            );
        }
        Err(e) => panic!("not a fatal error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_loader_loads_over_verify_full() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_cert(certs.path(), "ca", "server", "serverAuth");
    let pg = tls_postgres(certs.path());
    let mut p = Pipeline::new().await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        certs.path().join("ca.pem").display()
    );
    p.use_database(&url);
    let records: Vec<_> = (0..50).map(|i| common::record("SE", i, 3)).collect();
    produce(
        &p.stack.brokers,
        &p.topics.records,
        &record_messages(&records),
    )
    .await;
    p.start_loader(&[]);
    p.expect_count(
        "SELECT count(*) FROM skuflow.sku_facts",
        50,
        Duration::from_secs(120),
    )
    .await;
    let db = p.db().await;
    let tls_sessions: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name <> 'psql' AND s.ssl AND a.backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "{tls_sessions}");
}
