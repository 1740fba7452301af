//! Seeds a registry with N devices in one tenant and writes `client_id<TAB>token` lines, for the
//! benchmarks. `cargo run --release --example seed -- <database-url> <tenant> <count> <out-file>
//! [<certs-dir>]`
//!
//! With `<certs-dir>` (and `MQGATE_CA_KEY_SECRET` set) it also makes a tenant CA (`ca.pem`), a
//! device certificate per device (`<client-id>.crt` / `.key`, as `mqgate cert issue` writes them)
//! and a self-signed server certificate for 127.0.0.1 (`server.pem` / `server.key`).

use std::io::Write;
use std::sync::Arc;

use mqgate::admin::Admin;
use mqgate::auth::cert::{self, KeySealer};
use mqgate::clock::Clock;
use mqgate::registry::Store;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, tenant, count, out, certs) = match args.as_slice() {
        [_, url, tenant, count, out] => (url, tenant, count, out, None),
        [_, url, tenant, count, out, certs] => (url, tenant, count, out, Some(certs)),
        _ => anyhow::bail!("usage: seed <database-url> <tenant> <count> <out-file> [<certs-dir>]"),
    };
    let count: usize = count.parse()?;
    let store = Store::connect(url).await?;
    store.migrate().await?;
    let admin = Arc::new(Admin::new(store, Clock::System));
    if admin.tenant(tenant).await.is_err() {
        admin.add_tenant(tenant).await?;
    }
    let started = std::time::Instant::now();
    let mut lines = Vec::with_capacity(count);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (0..count)
        .collect::<Vec<_>>()
        .chunks(count.div_ceil(8).max(1))
    {
        let (admin, tenant, chunk) = (Arc::clone(&admin), tenant.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for i in chunk {
                let id = format!("dev-{i:06}");
                let (_, token) = admin.add_device(&tenant, &id, None).await?;
                out.push(format!("{id}\t{}", token.token.expose_secret()));
            }
            anyhow::Ok(out)
        });
    }
    while let Some(r) = tasks.join_next().await {
        lines.extend(r??);
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for l in &lines {
        writeln!(f, "{l}")?;
    }
    eprintln!(
        "seeded {count} devices in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = certs {
        issue_certificates(&admin, tenant, &lines, std::path::Path::new(dir)).await?;
    }
    Ok(())
}

/// A tenant CA, a certificate per device and a server certificate, as files in `dir`.
async fn issue_certificates(
    admin: &Admin,
    tenant: &str,
    lines: &[String],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let secret = std::env::var("MQGATE_CA_KEY_SECRET")
        .map_err(|_| anyhow::anyhow!("issuing certificates needs MQGATE_CA_KEY_SECRET"))?;
    let sealer = KeySealer::new(&secret);
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    std::fs::create_dir_all(dir)?;
    let started = std::time::Instant::now();
    let ca = admin.ca_init(tenant, "bench", year, &sealer).await?;
    std::fs::write(
        dir.join("ca.pem"),
        cert::to_pem("CERTIFICATE", &ca.cert_der),
    )?;
    for line in lines {
        let id = line.split('\t').next().unwrap_or_default();
        let issued = admin.cert_issue(tenant, id, None, year, &sealer).await?;
        let crt = cert::to_pem("CERTIFICATE", &issued.issued.cert_der);
        std::fs::write(dir.join(format!("{id}.crt")), crt)?;
        std::fs::write(
            dir.join(format!("{id}.key")),
            issued.issued.key_pem.expose_secret(),
        )?;
    }
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    std::fs::write(dir.join("server.pem"), server.cert.pem())?;
    std::fs::write(dir.join("server.key"), server.signing_key.serialize_pem())?;
    eprintln!(
        "issued {} device certificates in {:.1}s",
        lines.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
