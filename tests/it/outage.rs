//! A registry outage, on a real PostgreSQL the test controls: a throwaway cluster stopped and
//! started again, and a TCP proxy in front of it that stops forwarding (a database that silently
//! drops packets). Every answer must still arrive within the decision deadline; cached devices keep
//! their answer, uncached ones are denied, readiness says so, and everything resumes by itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mqgate::registry::{Store, TenantId};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::{SECRET, T0, TestApp, until};

/// The decision deadline the tests configure.
const DEADLINE: &str = "1s";
/// "Within the deadline", with room for a loaded two-core CI box.
const IN_TIME: Duration = Duration::from_secs(3);
/// How long recovery may take ("within a few seconds"), generously.
const RECOVERY: Duration = Duration::from_secs(20);

/// A PostgreSQL cluster of its own (initdb in a temporary directory), so the test can stop it.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bindir() -> PathBuf {
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let candidates = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    from_pg_config
        .into_iter()
        .chain(candidates)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .expect("PostgreSQL server binaries (initdb, pg_ctl) are needed")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Cluster {
    /// Creates and starts a cluster on a spare loopback port.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            // initdb refuses to run as root: the cluster runs as `postgres`.
            let _ = std::process::Command::new("useradd")
                .args(["--system", "--no-create-home", "postgres"])
                .output();
            let chown = std::process::Command::new("chown")
                .args(["postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster {
            bin: pg_bindir(),
            dir,
            port,
        };
        let data = c.data();
        c.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"],
        )
        .await;
        c.resume().await;
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `postgres://…` of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn run(&self, tool: &str, args: &[&str]) {
        let bin = self.bin.join(tool);
        let mut c = if is_root() {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            tokio::process::Command::new(bin)
        };
        let out = c.args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (again) on the same port.
    pub async fn resume(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data();
        let args = [
            "-D", &data, "-l", &log, "-w", "-t", "60", "start", "-o", &options,
        ];
        self.run("pg_ctl", &args).await;
    }

    /// Stops it (`fast`: sessions are terminated; `immediate`: the server is killed).
    pub async fn stop(&self, mode: &str) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])
            .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if is_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_ctl)
                .args(args)
                .output()
        } else {
            std::process::Command::new(pg_ctl).args(args).output()
        };
    }
}

/// A TCP proxy that can stop forwarding without closing anything: to whoever is on either side,
/// the peer went silent (packets dropped), as on a broken network path.
pub struct Proxy {
    addr: SocketAddr,
    flowing: watch::Sender<bool>,
}

impl Proxy {
    /// Forwards a local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (flowing, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    // A connection made while paused hangs until forwarding resumes.
                    wait_flowing(&mut rx.clone()).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, rx.clone()));
                    tokio::spawn(pump(sr, cw, rx));
                });
            }
        });
        Proxy { addr, flowing }
    }

    /// `postgres://…` through the proxy.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr)
    }

    /// Stops forwarding (bytes wait in the socket buffers).
    pub fn pause(&self) {
        self.flowing.send_replace(false);
    }

    /// Forwards again, in order, whatever waited.
    pub fn resume(&self) {
        self.flowing.send_replace(true);
    }
}

async fn wait_flowing(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|f| *f).await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_flowing(&mut flowing).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read while flowing, but hold what was read if forwarding stopped meanwhile.
        wait_flowing(&mut flowing).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A server over `url` with a 1 s decision deadline; tenant `acme` with `dev-1` (cached by one
/// allowed CONNECT) and `dev-2` (never asked about, so not cached). Returns the two tokens.
/// The devices exist before the server starts (and it warms no cache), so no late change
/// notification can drop `dev-1` from the cache behind the test's back.
async fn server_with_two_devices(url: &str) -> (TestApp, String, String) {
    use secrecy::ExposeSecret;
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let admin = mqgate::admin::Admin::new(store.clone(), mqgate::clock::Clock::manual(T0));
    admin.add_tenant("acme").await.unwrap();
    let mut tokens = Vec::new();
    for client_id in ["dev-1", "dev-2"] {
        let (_, t) = admin.add_device("acme", client_id, None).await.unwrap();
        tokens.push(t.token.expose_secret().to_string());
    }
    let app = TestApp::start_with(store, |l| {
        l.set("decision_timeout", DEADLINE.into(), "test").unwrap();
        l.set("warm_cache", "false".into(), "test").unwrap();
    })
    .await;
    let (t1, t2) = (tokens.remove(0), tokens.remove(0));
    assert_eq!(app.authn("dev-1", "", &t1).await["result"], "allow");
    (app, t1, t2)
}

/// Sends `requests` EMQX authn calls pipelined on one HTTP/1.1 connection, as EMQX does; returns
/// each answer's `result`, in order, and how long all took.
async fn pipelined(app: &TestApp, requests: &[(&str, &str)]) -> (Vec<String>, Duration) {
    let addr = app.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut wire = String::new();
    for (client_id, password) in requests {
        let body = json!({"clientid": client_id, "username": "", "password": password, "peerhost": "10.0.0.7"})
            .to_string();
        wire.push_str(&format!(
            "POST /v1/emqx/authn HTTP/1.1\r\nHost: mqgate\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    let started = Instant::now();
    s.write_all(wire.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let results = loop {
        let text = String::from_utf8_lossy(&got).to_string();
        let answers: Vec<String> = text
            .split("HTTP/1.1 ")
            .skip(1)
            .filter_map(|r| {
                assert!(r.starts_with("200"), "not a 200: {r}");
                let body = r.split("\r\n\r\n").nth(1)?;
                let v: serde_json::Value = serde_json::from_str(body).ok()?;
                Some(v["result"].as_str()?.to_string())
            })
            .collect();
        if answers.len() == requests.len() {
            break answers;
        }
        let n = tokio::time::timeout(RECOVERY, s.read(&mut buf))
            .await
            .expect("pipelined answers never came")
            .unwrap();
        assert!(n > 0, "connection closed: {text}");
        got.extend_from_slice(&buf[..n]);
    };
    (results, started.elapsed())
}

/// A raw MQTT 3.1.1 CONNECT to the embedded broker; returns the CONNACK code (`None`: closed
/// without one) and how long the answer took.
async fn mqtt_connect(app: &TestApp, client_id: &str, secret: &str) -> (Option<u8>, Duration) {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 60];
    for field in [client_id, client_id, secret] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    assert!(body.len() < 128, "one-byte remaining length");
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend(body);
    let started = Instant::now();
    let mut s = TcpStream::connect(app.mqtt.unwrap()).await.unwrap();
    s.write_all(&frame).await.unwrap();
    let mut ack = [0u8; 4];
    let read = tokio::time::timeout(RECOVERY, s.read_exact(&mut ack))
        .await
        .expect("no CONNACK and no close");
    let code = read.ok().filter(|_| ack[0] == 0x20).map(|_| ack[3]);
    (code, started.elapsed())
}

/// Times one authn call; returns its `result`.
async fn timed_authn(app: &TestApp, client_id: &str, secret: &str) -> (String, Duration) {
    let started = Instant::now();
    let v = app.authn(client_id, "", secret).await;
    (v["result"].as_str().unwrap().to_string(), started.elapsed())
}

async fn readyz(app: &TestApp) -> (u16, Duration) {
    let started = Instant::now();
    let r = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), started.elapsed())
}

/// What must hold while the registry does not answer (the cluster stopped, or the proxy silent).
async fn answers_in_time_during_the_outage(app: &TestApp, t1: &str, t2: &str) {
    // First, before anything has noticed: uncached requests ahead of cached ones on one
    // connection must not hold the cached answers back past the deadline.
    let (results, took) = pipelined(
        app,
        &[
            ("dev-2", t2),
            ("dev-1", t1),
            ("ghost", "x"),
            ("dev-1", t1),
            ("dev-1", t1),
        ],
    )
    .await;
    assert_eq!(results, ["deny", "allow", "deny", "allow", "allow"]);
    assert!(took < IN_TIME, "pipelined answers took {took:?}");
    for (client_id, secret, want) in [("dev-2", t2, "deny"), ("dev-1", t1, "allow")] {
        let (got, took) = timed_authn(app, client_id, secret).await;
        assert_eq!(got, want, "{client_id}");
        assert!(took < IN_TIME, "{client_id} answered after {took:?}");
    }
    let started = Instant::now();
    assert_eq!(
        app.authz("dev-1", "publish", "acme/dev-1/up").await,
        "allow"
    );
    assert_eq!(app.authz("dev-2", "publish", "acme/dev-2/up").await, "deny");
    assert!(started.elapsed() < IN_TIME);
    let (status, took) = readyz(app).await;
    assert_eq!(status, 503);
    assert!(took < IN_TIME, "/readyz took {took:?}");
    // The embedded broker's CONNECT: cached admitted, uncached refused (server unavailable).
    let (code, took) = mqtt_connect(app, "dev-1", t1).await;
    assert_eq!(code, Some(0));
    assert!(took < IN_TIME, "cached CONNACK after {took:?}");
    let (code, took) = mqtt_connect(app, "dev-2", t2).await;
    assert_eq!(
        code,
        Some(3),
        "uncached CONNECT must be refused as unavailable"
    );
    assert!(took < IN_TIME, "uncached CONNACK after {took:?}");
    let metrics = app.get_text("/metrics").await;
    assert!(metrics.contains("mqgate_registry_up 0\n"), "{metrics}");
    for line in [
        "mqgate_outage_decisions_total{kind=\"connect\",verdict=\"allow\"}",
        "mqgate_outage_decisions_total{kind=\"connect\",verdict=\"deny\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing: {metrics}");
    }
}

/// What must hold once the registry answers again: readiness, uncached devices loaded, and the
/// change made while mqgate could not hear it honoured.
async fn resumes_after_the_outage(app: &TestApp, t1: &str, t2: &str) {
    until("readiness", RECOVERY, || async {
        readyz(app).await.0 == 200
    })
    .await;
    until("uncached device allowed", RECOVERY, || async {
        timed_authn(app, "dev-2", t2).await.0 == "allow"
    })
    .await;
    until(
        "change made during the outage honoured",
        RECOVERY,
        || async { timed_authn(app, "dev-1", t1).await.0 == "deny" },
    )
    .await;
    let (code, _) = mqtt_connect(app, "dev-1", t1).await;
    assert_ne!(
        code,
        Some(0),
        "a disabled device was admitted by the broker"
    );
    let (code, _) = mqtt_connect(app, "dev-2", t2).await;
    assert_eq!(code, Some(0));
    assert!(
        app.get_text("/metrics")
            .await
            .contains("mqgate_registry_up 1\n")
    );
}

/// Disables `dev-1` straight in the store, through a handle of its own (mqgate hears of it only
/// through the change feed, or by re-reading).
async fn disable_dev1_behind_mqgates_back(url: &str) {
    let store = Store::connect(url).await.unwrap();
    let acme = store.tenant_by_name("acme").await.unwrap().unwrap();
    let t: TenantId = acme.id;
    store.set_device_enabled(t, "dev-1", false).await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_gets_answers_in_time_and_mqgate_resumes_by_itself() {
    let pg = Cluster::start().await;
    let (app, t1, t2) = server_with_two_devices(&pg.url()).await;
    pg.stop("fast").await;
    answers_in_time_during_the_outage(&app, &t1, &t2).await;
    pg.resume().await;
    // Right away: before mqgate's change feed is back, in all likelihood.
    disable_dev1_behind_mqgates_back(&pg.url()).await;
    resumes_after_the_outage(&app, &t1, &t2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_silently_stops_answering_gets_answers_in_time_too() {
    let pg = Cluster::start().await;
    let proxy = Proxy::start(pg.addr()).await;
    let (app, t1, t2) = server_with_two_devices(&proxy.url()).await;
    proxy.pause();
    answers_in_time_during_the_outage(&app, &t1, &t2).await;
    // The change lands while mqgate cannot hear anything.
    disable_dev1_behind_mqgates_back(&pg.url()).await;
    proxy.resume();
    resumes_after_the_outage(&app, &t1, &t2).await;
}

/// Issue #11, item 2: the brute-force guard shares its state through the registry, but while the
/// registry is silent nothing of that may hold a decision up: counts, lockouts and familiar
/// addresses fall back to this process's memory, every answer in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_registry_leaves_lockouts_to_memory_and_answers_in_time() {
    let pg = Cluster::start().await;
    let proxy = Proxy::start(pg.addr()).await;
    let (app, t1, _) = server_with_two_devices(&proxy.url()).await;
    proxy.pause();
    let stranger = "203.0.113.9";
    let timed = |peer: &'static str, secret: String| {
        let app = &app;
        async move {
            let started = Instant::now();
            let v = app.authn_from(peer, "dev-1", "", &secret).await;
            let took = started.elapsed();
            assert!(took < IN_TIME, "answered after {took:?}");
            v["result"].as_str().unwrap_or_default().to_string()
        }
    };
    for _ in 0..5 {
        assert_eq!(timed(stranger, "mqg_guess".into()).await, "deny");
    }
    assert_eq!(
        timed(stranger, t1.clone()).await,
        "deny",
        "locked out from memory"
    );
    assert_eq!(
        timed("10.0.0.7", t1.clone()).await,
        "allow",
        "the device at the address this process saw it at"
    );
    proxy.resume();
}

/// PostgreSQL closes connections mqgate holds idle (a restart between two storms,
/// `idle_session_timeout`, an operator's `pg_terminate_backend`). A pooled connection that has sat
/// idle is checked before use (one in steady use is not, see `PgStore::connect`), so the next
/// cache fill runs on a live connection: the device is answered, not denied as unreachable.
#[sqlx::test(migrations = false)]
async fn connections_closed_while_idle_are_replaced_before_use(pool: sqlx::PgPool) {
    let url = crate::helpers::pg_url(&pool).await;
    let (app, _t1, t2) = server_with_two_devices(&url).await;
    // mqgate's pooled connections (not its change feed's, which reconnects on its own), every one
    // idle for longer than a connection in steady use.
    macro_rules! pooled {
        () => {
            "FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'mqgate' AND query NOT LIKE 'LISTEN%'"
        };
    }
    until("mqgate's pooled connections idle", RECOVERY, || async {
        let busy: i64 = sqlx::query_scalar(concat!(
            "SELECT count(*) ",
            pooled!(),
            " AND (state <> 'idle' OR state_change > now() - interval '1.5 s')"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        busy == 0
    })
    .await;
    let closed: Vec<i32> = sqlx::query_scalar(concat!("SELECT pid ", pooled!()))
        .fetch_all(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(p) FROM unnest($1::INT[]) AS p")
        .bind(&closed)
        .execute(&pool)
        .await
        .unwrap();
    assert!(!closed.is_empty(), "mqgate holds pooled connections");
    until("the closed connections gone", RECOVERY, || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&closed)
                .fetch_one(&pool)
                .await
                .unwrap();
        left == 0
    })
    .await;
    let (result, _) = timed_authn(&app, "dev-2", &t2).await;
    assert_eq!(result, "allow", "a fill on a closed connection");
    assert_eq!(readyz(&app).await.0, 200);
}
