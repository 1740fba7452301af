//! Test harness: a real mqgate on a random port over a real store (a fresh PostgreSQL database per
//! test, or a temporary SQLite file), driven over HTTP exactly as a broker would.

use std::sync::Arc;

use mqgate::admin::Admin;
use mqgate::app::App;
use mqgate::clock::Clock;
use mqgate::config::Layers;
use mqgate::registry::Store;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The internal secret every test server uses.
pub const SECRET: &str = "test-internal-secret-0123456789abcdef";

/// A start time for manual clocks (2027-01-15).
pub const T0: i64 = 1_800_000_000;

/// Generous bound for what should happen soon (never a timed assertion: only a failure waits it out).
pub const SOON: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `check` until it gives `Some`, failing with `what` after `within`: the one way tests wait
/// for something that happens elsewhere (a session task, another process, the change feed).
pub async fn eventually<T, F>(
    what: &str,
    within: std::time::Duration,
    mut check: impl FnMut() -> F,
) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let polled = tokio::time::timeout(within, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    polled
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {within:?}"))
}

/// [`eventually`] for a condition.
pub async fn until<F>(what: &str, within: std::time::Duration, mut check: impl FnMut() -> F)
where
    F: std::future::Future<Output = bool>,
{
    eventually(what, within, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
}

/// Polls `/metrics` until `line` is in it (the event it counts happens in a session task).
pub async fn metric_reaches(app: &TestApp, line: &str) {
    until(&format!("metric line {line}"), SOON, || async {
        app.get_text("/metrics").await.contains(line)
    })
    .await
}

/// Runs `$body(TestApp)` once against PostgreSQL and once against SQLite.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[sqlx::test(migrations = false)]
            async fn postgres(pool: sqlx::PgPool) {
                let store = mqgate::registry::Store::Postgres(
                    mqgate::registry::pg::PgStore::from_pool(pool),
                );
                $body(store.clone()).await;
                // Let sqlx drop the test database at once: no server task may still hold it.
                store.close().await;
            }
            #[tokio::test]
            async fn sqlite() {
                let (store, _dir) = $crate::helpers::sqlite_store().await;
                $body(store).await;
            }
        }
    };
}

/// A temporary SQLite store (keep the dir alive while using it).
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("reg.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// Config layers for a test server: random port, test secret, the shipped `acl-rules/`.
pub fn test_layers() -> Layers {
    let mut l = Layers::defaults();
    l.set("listen", "127.0.0.1:0".into(), "test").unwrap();
    l.set("mqtt_addr", "127.0.0.1:0".into(), "test").unwrap();
    l.set("internal_secret", SECRET.into(), "test").unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/acl-rules");
    l.set("acl_rules_dir", rules.into(), "test").unwrap();
    l
}

/// A running server plus an admin wired to its cache.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Operator actions, invalidating the server's cache in-process.
    pub admin: Admin,
    /// The server's (manual) clock.
    pub clock: Clock,
    /// The server's gate (certificate trust, metrics).
    pub gate: Arc<mqgate::gate::Gate>,
    /// The embedded MQTT broker's address (`None` when configured off).
    pub mqtt: Option<std::net::SocketAddr>,
    /// Its TLS listener's address (`None` unless `mqtts_addr` is set).
    pub mqtts: Option<std::net::SocketAddr>,
    _stop: watch::Sender<bool>,
}

impl TestApp {
    /// Starts a server over `store` with the default test config.
    pub async fn start(store: Store) -> TestApp {
        Self::start_with(store, |_| {}).await
    }

    /// Starts a server over `store` after `tweak`ing the config layers.
    pub async fn start_with(store: Store, tweak: impl FnOnce(&mut Layers)) -> TestApp {
        let mut layers = test_layers();
        tweak(&mut layers);
        let config = layers.build().unwrap();
        let clock = Clock::manual(T0);
        let app = App::build_with(&config, store.clone(), clock.clone())
            .await
            .unwrap();
        let base = format!("http://{}", app.http_addr());
        let gate = app.gate();
        let mqtt = app.mqtt_addr();
        let mqtts = app.mqtts_addr();
        let registry = Arc::clone(gate.registry());
        let admin = Admin::new(store.clone(), clock.clone()).with_registry(registry);
        let (tx, rx) = watch::channel(false);
        tokio::spawn(app.run_until_stopped(rx));
        TestApp {
            base,
            http: reqwest::Client::new(),
            admin,
            clock,
            gate,
            mqtt,
            mqtts,
            _stop: tx,
        }
    }

    /// POSTs `body` to `path` with the internal secret; returns status, content type and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, String, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(SECRET)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ctype, r.json().await.unwrap_or(Value::Null))
    }

    /// An EMQX authn call as EMQX renders it (every placeholder a string, undefined ones `""`).
    pub async fn authn(&self, client_id: &str, username: &str, password: &str) -> Value {
        self.authn_from("10.0.0.7", client_id, username, password)
            .await
    }

    /// An EMQX authn call for a device at `peer`.
    pub async fn authn_from(
        &self,
        peer: &str,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Value {
        let body = json!({
            "clientid": client_id, "username": username, "password": password,
            "peerhost": peer, "cert_subject": "", "cert_common_name": "", "cert_pem": ""
        });
        let (status, ctype, v) = self.post("/v1/emqx/authn", &body).await;
        assert_eq!(status, 200, "{v}");
        assert!(ctype.starts_with("application/json"), "{ctype}");
        v
    }

    /// GETs a guarded ops path.
    pub async fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path).await).unwrap()
    }

    /// GETs a guarded path as text.
    pub async fn get_text(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The value of the `/metrics` series `series` (name and labels, as printed), if present.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let text = self.get_text("/metrics").await;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse().unwrap())
    }

    /// An EMQX authz call; returns the `result`.
    pub async fn authz(&self, client_id: &str, action: &str, topic: &str) -> String {
        let body = json!({
            "clientid": client_id, "username": "", "peerhost": "10.0.0.7", "topic": topic,
            "action": action, "qos": "1", "retain": "false", "cert_common_name": ""
        });
        let (status, _, v) = self.post("/v1/emqx/authz", &body).await;
        assert_eq!(status, 200, "{v}");
        v["result"].as_str().unwrap().to_string()
    }

    /// Creates tenant `tenant` (if needed) and device `client_id`; returns its token.
    pub async fn device(&self, tenant: &str, client_id: &str) -> String {
        use secrecy::ExposeSecret;
        if self.admin.tenant(tenant).await.is_err() {
            self.admin.add_tenant(tenant).await.unwrap();
        }
        let (_, token) = self
            .admin
            .add_device(tenant, client_id, None)
            .await
            .unwrap();
        token.token.expose_secret().to_string()
    }
}

/// The URL of the database `pool` is connected to (a fresh one per test).
pub async fn pg_url(pool: &sqlx::PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}
