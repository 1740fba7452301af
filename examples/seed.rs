//! Seeds a registry with N devices in one tenant and writes `client_id<TAB>token` lines, for the
//! benchmarks. `cargo run --release --example seed -- <database-url> <tenant> <count> <out-file>`

use std::io::Write;
use std::sync::Arc;

use mqgate::admin::Admin;
use mqgate::clock::Clock;
use mqgate::registry::Store;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, tenant, count, out] = args.as_slice() else {
        anyhow::bail!("usage: seed <database-url> <tenant> <count> <out-file>");
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
    Ok(())
}
