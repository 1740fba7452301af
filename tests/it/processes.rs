//! The real `mqgate` binary: CLI against a store, `serve` processes sharing one database, start-up
//! checks, and logs that never contain a secret.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{SECRET, SOON, pg_url, until};

const BIN: &str = env!("CARGO_BIN_EXE_mqgate");
const CA_SECRET: &str = "cli-test-ca-key-secret-0123456789abcdef";

fn mqgate(db: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MQGATE_DATABASE_URL", db)
        .env(
            "MQGATE_ACL_RULES_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/acl-rules"),
        )
        .env("MQGATE_INTERNAL_SECRET", SECRET)
        .env("MQGATE_CA_KEY_SECRET", CA_SECRET)
        .env("MQGATE_MQTT_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs a CLI command; returns (success, stdout, stderr).
async fn cli(db: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut c = mqgate(db);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut i = child.stdin.take().unwrap();
        i.write_all(input.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_json(db: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli(db, &all, None).await;
    assert!(ok, "mqgate {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A running `mqgate serve`; its stderr is collected for inspection.
struct Server {
    base: String,
    child: Child,
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Server {
    async fn start(db: &str, extra_env: &[(&str, &str)]) -> Server {
        let mut c = mqgate(db);
        c.args(["serve", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        let mut seen = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let l = rx
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("server exited: {seen:?}"));
                if let Some(a) = l
                    .split("addr=")
                    .nth(1)
                    .filter(|_| l.contains("mqgate listening"))
                {
                    return a.split_whitespace().next().unwrap().to_string();
                }
                seen.push(l);
            }
        })
        .await
        .expect("server did not report its address");
        Server {
            base: format!("http://{addr}"),
            child,
            log: rx,
        }
    }

    async fn authn(&self, client_id: &str, password: &str) -> String {
        self.authn_at("10.1.1.1", client_id, password).await
    }

    /// EMQX authn from `peer` (the address the broker reports).
    async fn authn_at(&self, peer: &str, client_id: &str, password: &str) -> String {
        let body =
            json!({"clientid": client_id, "username": "", "password": password, "peerhost": peer});
        let r = reqwest::Client::new()
            .post(format!("{}/v1/emqx/authn", self.base))
            .bearer_auth(SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["result"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Polls until `client_id` gets `want` (bounded: failing means the change never arrived).
    async fn eventually(&self, client_id: &str, password: &str, want: &str) {
        let what = format!("{} answering {want} for {client_id}", self.base);
        until(&what, SOON, || async {
            self.authn(client_id, password).await == want
        })
        .await
    }

    /// The embedded MQTT broker's address, from its start-up line.
    async fn mqtt_addr(&mut self) -> std::net::SocketAddr {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let l = self.log.recv().await.expect("server exited");
                if l.contains("embedded MQTT broker listening")
                    && let Some(a) = l.split("addr=").nth(1)
                {
                    return a.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
        })
        .await
        .expect("server did not report its MQTT address")
    }

    /// Sends SIGTERM, as systemd or a container runtime stops a service.
    fn terminate(&self) {
        let pid = self.child.id().expect("serve is running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits for the process to exit, and asserts it exited cleanly.
    async fn stopped_cleanly(&mut self) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("serve did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "serve exited with {status}");
    }

    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let mut all = String::new();
        while let Ok(l) = self.log.try_recv() {
            all.push_str(&l);
            all.push('\n');
        }
        all
    }
}

/// Tenant `acme` with device `dev-1`; returns its token.
async fn one_device(db: &str) -> String {
    cli_json(db, &["tenant", "add", "acme"]).await;
    let dev = cli_json(
        db,
        &["device", "add", "--tenant", "acme", "--client-id", "dev-1"],
    )
    .await;
    dev["token"].as_str().unwrap().to_string()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("reg.db").display())
}

#[sqlx::test(migrations = false)]
async fn two_mqgate_processes_on_one_postgres_see_each_others_revocations(pool: sqlx::PgPool) {
    let db = pg_url(&pool).await;
    cli_json(&db, &["tenant", "add", "acme"]).await;
    let dev = cli_json(
        &db,
        &["device", "add", "--tenant", "acme", "--client-id", "dev-1"],
    )
    .await;
    let token = dev["token"].as_str().unwrap().to_string();
    let a = Server::start(&db, &[]).await;
    let b = Server::start(&db, &[]).await;
    assert_eq!(a.authn("dev-1", &token).await, "allow");
    assert_eq!(b.authn("dev-1", &token).await, "allow");
    cli_json(
        &db,
        &[
            "device",
            "disable",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
    )
    .await;
    a.eventually("dev-1", &token, "deny").await;
    b.eventually("dev-1", &token, "deny").await;
    cli_json(
        &db,
        &[
            "device",
            "enable",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
    )
    .await;
    a.eventually("dev-1", &token, "allow").await;
    let rotated = cli_json(
        &db,
        &["cred", "rotate", "--tenant", "acme", "--client-id", "dev-1"],
    )
    .await;
    b.eventually("dev-1", &token, "deny").await;
    assert_eq!(
        b.authn("dev-1", rotated["token"].as_str().unwrap()).await,
        "allow"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_cli_change_reaches_a_running_sqlite_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    cli_json(&db, &["tenant", "add", "acme"]).await;
    let dev = cli_json(
        &db,
        &["device", "add", "--tenant", "acme", "--client-id", "dev-1"],
    )
    .await;
    let token = dev["token"].as_str().unwrap().to_string();
    let s = Server::start(&db, &[]).await;
    assert_eq!(s.authn("dev-1", &token).await, "allow");
    cli_json(
        &db,
        &[
            "device",
            "disable",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
    )
    .await;
    s.eventually("dev-1", &token, "deny").await;
    s.stop().await;
}

/// Issue #11 item 2 with a real restart: the device logs in from its usual address, `serve` stops
/// (SIGTERM) and starts again with an empty memory; a stranger's wrong tokens from elsewhere lock
/// the client id out for the stranger, not for the device at its usual address.
#[tokio::test]
async fn after_a_real_restart_a_stranger_cannot_lock_the_device_out_of_its_usual_address() {
    const HOME: &str = "10.7.0.1";
    const STRANGER: &str = "10.9.9.9";
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let token = one_device(&db).await;
    let mut first = Server::start(&db, &[]).await;
    assert_eq!(first.authn_at(HOME, "dev-1", &token).await, "allow");
    // The address is written off the hot path: wait until the registry has it.
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    until("the familiar address stored", SOON, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM familiar_addresses WHERE address = ?")
                .bind(HOME)
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
        n == 1
    })
    .await;
    pool.close().await;
    first.terminate();
    first.stopped_cleanly().await;

    let second = Server::start(&db, &[]).await;
    for _ in 0..5 {
        assert_eq!(
            second.authn_at(STRANGER, "dev-1", "mqg_guess").await,
            "deny"
        );
    }
    assert_eq!(
        second.authn_at(STRANGER, "dev-1", &token).await,
        "deny",
        "the stranger's address is locked out of dev-1"
    );
    assert_eq!(
        second.authn_at(HOME, "dev-1", &token).await,
        "allow",
        "the device at its usual address is not, though this process never saw it there"
    );
    second.stop().await;
}

/// The CLI's calls to a running server (`lockout list|clear`, `acl reload`) go through HTTP with
/// the internal secret; a wrong secret or no server is a clear error.
#[tokio::test]
async fn the_cli_lists_and_clears_lockouts_and_reloads_acls_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let token = one_device(&db).await;
    let s = Server::start(&db, &[]).await;
    let listen = s.base.trim_start_matches("http://").to_string();
    let ops = |args: &[&str], secret: &str| {
        let mut c = mqgate(&db);
        c.env("MQGATE_LISTEN", &listen)
            .env("MQGATE_INTERNAL_SECRET", secret)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        async move {
            let out = c.output().await.unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.success(), text(&out.stdout), text(&out.stderr))
        }
    };
    for _ in 0..5 {
        assert_eq!(s.authn("dev-1", "wrong-token").await, "deny");
    }
    let (ok, out, err) = ops(&["--json", "lockout", "list"], SECRET).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["key"].as_str())
        .collect();
    assert_eq!(keys, ["dev-1"], "{listed}");
    let (ok, out, err) = ops(&["--json", "lockout", "clear", "dev-1"], SECRET).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["cleared"],
        true
    );
    assert_eq!(s.authn("dev-1", &token).await, "allow");
    let (ok, _, err) = ops(&["acl", "reload"], SECRET).await;
    assert!(ok, "{err}");
    let wrong = "a-wrong-internal-secret-0123456789abcdef";
    let (ok, _, err) = ops(&["lockout", "list"], wrong).await;
    assert!(!ok && err.contains("HTTP 401"), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(SECRET),
        "no secret echoed: {err}"
    );
    s.stop().await;
    let (ok, _, err) = ops(&["lockout", "list"], SECRET).await;
    assert!(!ok && err.contains("no mqgate server answering"), "{err}");
}

#[tokio::test]
async fn the_cli_manages_the_registry_and_explains_acl_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    assert_eq!(
        cli_json(&db, &["tenant", "add", "acme"]).await["name"],
        "acme"
    );
    let (ok, _, err) = cli(&db, &["tenant", "add", "acme"], None).await;
    assert!(!ok && err.contains("already exists"), "{err}");
    let dev = cli_json(
        &db,
        &[
            "device",
            "add",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--username",
            "u1",
        ],
    )
    .await;
    assert!(dev["token"].as_str().unwrap().starts_with("mqg_"));
    assert_eq!(dev["device"]["username"], "u1");
    let (ok, _, err) = cli(
        &db,
        &["device", "add", "--tenant", "nope", "--client-id", "x"],
        None,
    )
    .await;
    assert!(!ok && err.contains("tenant `nope` not found"), "{err}");

    let own = cli_json(
        &db,
        &[
            "acl",
            "check",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--action",
            "publish",
            "--topic",
            "acme/dev-1/t",
        ],
    )
    .await;
    assert_eq!(own["result"], "allow");
    assert!(
        own["reason"].as_str().unwrap().contains("default.toml"),
        "{own}"
    );
    let other = cli_json(
        &db,
        &[
            "acl",
            "check",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--action",
            "subscribe",
            "--topic",
            "acme/#",
        ],
    )
    .await;
    assert_eq!(
        other,
        json!({"result": "deny", "reason": "no rule: deny by default", "cause": "acl_no_rule"})
    );
    let (ok, out, _) = cli(
        &db,
        &[
            "acl",
            "check",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--action",
            "publish",
            "--topic",
            "x/y",
        ],
        None,
    )
    .await;
    assert!(ok);
    assert_eq!(out.trim(), "deny: no rule: deny by default");

    let added = cli_json(
        &db,
        &[
            "acl",
            "add",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--permission",
            "allow",
            "--action",
            "publish",
            "--topic",
            "fleet/${clientid}",
        ],
    )
    .await;
    let now = cli_json(
        &db,
        &[
            "acl",
            "check",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--action",
            "publish",
            "--topic",
            "fleet/dev-1",
        ],
    )
    .await;
    assert_eq!(now["result"], "allow");
    assert!(
        now["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("device rule {}", added["id"])),
        "{now}"
    );
    let (ok, _, err) = cli(
        &db,
        &[
            "acl",
            "add",
            "--tenant",
            "acme",
            "--permission",
            "allow",
            "--action",
            "publish",
            "--topic",
            "a/#/b",
        ],
        None,
    )
    .await;
    assert!(!ok && err.contains("topic"), "{err}");

    let rot = cli_json(
        &db,
        &[
            "cred",
            "rotate",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--grace",
            "24h",
        ],
    )
    .await;
    assert!(rot["token"].as_str().unwrap().starts_with("mqg_"));
    assert!(rot["old_tokens_expire_at"].as_i64().unwrap() > 0);
    let (ok, _, _) = cli(
        &db,
        &[
            "cred",
            "set-password",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
        Some("a-long-password\n"),
    )
    .await;
    assert!(ok);
    let (ok, _, err) = cli(
        &db,
        &[
            "cred",
            "import-bcrypt",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
        Some("not-a-hash\n"),
    )
    .await;
    assert!(!ok && err.contains("bcrypt"), "{err}");
    let set = cli_json(
        &db,
        &[
            "limits",
            "set",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
            "--rate",
            "5",
            "--burst",
            "10",
        ],
    )
    .await;
    assert_eq!(set["rate"], json!({"per_sec": 5.0, "burst": 10}));
    cli_json(&db, &["limits", "set", "--tenant", "acme", "--rate", "50"]).await;
    let limits = cli_json(&db, &["limits", "list", "--tenant", "acme"]).await;
    assert_eq!(
        limits,
        json!([{"client_id": null, "rate": {"per_sec": 50.0, "burst": 50}}, {"client_id": "dev-1", "rate": {"per_sec": 5.0, "burst": 10}}])
    );
    let (ok, _, err) = cli(
        &db,
        &["limits", "set", "--tenant", "acme", "--rate", "0"],
        None,
    )
    .await;
    assert!(!ok && err.contains("--rate"), "{err}");
    cli_json(&db, &["limits", "clear", "--tenant", "acme"]).await;
    assert_eq!(
        cli_json(&db, &["limits", "list", "--tenant", "acme"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let list = cli_json(&db, &["device", "list", "--tenant", "acme"]).await;
    assert_eq!(list[0]["client_id"], "dev-1");
    cli_json(
        &db,
        &[
            "device",
            "remove",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
    )
    .await;
    assert_eq!(
        cli_json(&db, &["device", "list", "--tenant", "acme"]).await,
        json!([])
    );
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_long_enough_internal_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let mut c = mqgate(&db);
    c.env("MQGATE_INTERNAL_SECRET", "short-secret")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let out = c.output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("at least 32 characters"), "{err}");
    assert!(
        !err.contains("short-secret"),
        "the secret is not echoed: {err}"
    );
    let mut c = mqgate(&db);
    c.env_remove("MQGATE_INTERNAL_SECRET")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let out = c.output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MQGATE_INTERNAL_SECRET is not set"));
}

/// The real binary reads `--config` / `MQGATE_CONFIG` between the defaults and the environment,
/// flags over both, and a bad value there stops it naming the file and the key, not the value.
#[tokio::test]
async fn the_binary_layers_file_env_and_flags_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (file_db, env_db) = (dir.path().join("file.db"), dir.path().join("env.db"));
    let file = dir.path().join("mqgate.toml");
    let url = |p: &std::path::Path| format!("sqlite://{}?mode=rwc", p.display());
    std::fs::write(&file, format!("database_url = \"{}\"\n", url(&file_db))).unwrap();
    let mut c = mqgate("unused");
    c.env_remove("MQGATE_DATABASE_URL")
        .arg("--config")
        .arg(&file)
        .arg("migrate");
    assert!(c.output().await.unwrap().status.success());
    assert!(file_db.is_file(), "the file's database_url was used");
    let mut c = mqgate(&url(&env_db));
    c.env("MQGATE_CONFIG", &file).arg("migrate");
    assert!(c.output().await.unwrap().status.success());
    assert!(env_db.is_file(), "the environment wins over the file");
    let flag_db = dir.path().join("flag.db");
    let mut c = mqgate(&url(&env_db));
    c.arg("--database-url").arg(url(&flag_db)).arg("migrate");
    assert!(c.output().await.unwrap().status.success());
    assert!(flag_db.is_file(), "a flag wins over the environment");
    std::fs::write(&file, "ca_key_secret = \"short-secret\"\n").unwrap();
    let mut c = mqgate("unused");
    c.env_remove("MQGATE_CA_KEY_SECRET")
        .arg("--config")
        .arg(&file)
        .arg("migrate");
    let out = c.output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("`ca_key_secret`"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(!err.contains("short-secret"), "{err}");
}

#[tokio::test]
async fn logs_never_contain_tokens_passwords_or_the_internal_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    cli_json(&db, &["tenant", "add", "acme"]).await;
    let dev = cli_json(
        &db,
        &["device", "add", "--tenant", "acme", "--client-id", "dev-1"],
    )
    .await;
    let token = dev["token"].as_str().unwrap().to_string();
    let planted = "planted-password-7f3a9c";
    let (ok, _, cli_err) = cli(
        &db,
        &[
            "cred",
            "set-password",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
        Some(&format!("{planted}\n")),
    )
    .await;
    assert!(ok);
    let s = Server::start(&db, &[("MQGATE_LOG", "trace")]).await;
    assert_eq!(s.authn("dev-1", &token).await, "allow");
    assert_eq!(s.authn("dev-1", planted).await, "allow");
    assert_eq!(s.authn("dev-1", "planted-wrong-guess-1").await, "deny");
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/emqx/authn", s.base))
        .bearer_auth("wrong-bearer-secret-0000000000000")
        .body("{}")
        .send()
        .await;
    let log = s.stop().await + &cli_err;
    assert!(
        log.contains("event=\"connect\"") || log.contains("connect"),
        "audit lines are logged: {log}"
    );
    for secret in [
        token.as_str(),
        planted,
        "planted-wrong-guess-1",
        SECRET,
        CA_SECRET,
        "wrong-bearer-secret",
    ] {
        assert!(!log.contains(secret), "log leaks a secret");
    }
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let mut f = tokio::fs::File::open(entry.unwrap().path()).await.unwrap();
        f.read_to_end(&mut bytes).await.unwrap();
    }
    let db_text = String::from_utf8_lossy(&bytes);
    assert!(
        !db_text.contains(&token) && !db_text.contains(planted),
        "only digests are stored"
    );
}

#[tokio::test]
async fn audit_verify_finds_an_edited_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    cli_json(&db, &["tenant", "add", "acme"]).await;
    cli_json(
        &db,
        &["device", "add", "--tenant", "acme", "--client-id", "dev-1"],
    )
    .await;
    cli_json(
        &db,
        &[
            "device",
            "disable",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
    )
    .await;
    assert_eq!(
        cli_json(&db, &["audit", "verify"]).await,
        json!({"entries": 3, "intact": true})
    );
    let tail = cli_json(&db, &["audit", "tail", "--limit", "1"]).await;
    assert!(
        tail[0]["detail"]
            .as_str()
            .unwrap()
            .contains("device.disable"),
        "{tail}"
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query(
        "UPDATE audit_events SET detail = replace(detail, 'device.add', 'device.nop') WHERE id = 2",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (ok, _, err) = cli(&db, &["audit", "verify"], None).await;
    assert!(!ok);
    assert!(err.contains("broken at entry 2"), "{err}");
}

#[tokio::test]
async fn the_cli_runs_a_tenant_ca_issues_revokes_and_publishes_crls() {
    use mqgate::auth::{cert, crl};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    cli_json(&db, &["tenant", "add", "acme"]).await;
    cli_json(
        &db,
        &["device", "add", "--tenant", "acme", "--client-id", "cam-1"],
    )
    .await;

    // Without the sealing secret no CA is made, and the error says what to set.
    let mut c = mqgate(&db);
    c.env_remove("MQGATE_CA_KEY_SECRET")
        .args(["ca", "init", "--tenant", "acme"]);
    let out = c.output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MQGATE_CA_KEY_SECRET"));

    let ca_file = dir.path().join("ca.pem");
    let ca = cli_json(
        &db,
        &[
            "ca",
            "init",
            "--tenant",
            "acme",
            "--out",
            ca_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(ca["internal"], true);
    let ca_der = cert::read_certs(&std::fs::read(&ca_file).unwrap())
        .unwrap()
        .remove(0);
    let ca_info = cert::parse(&ca_der).unwrap();
    assert!(ca_info.is_ca);

    // Issue into a directory: certificate, CA bundle, and a key only its owner can read.
    let out_dir = dir.path().join("cam-1");
    let issued = cli_json(
        &db,
        &[
            "cert",
            "issue",
            "--tenant",
            "acme",
            "--client-id",
            "cam-1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    )
    .await;
    let key_path = out_dir.join("cam-1.key.pem");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let der = cert::read_certs(&std::fs::read(out_dir.join("cam-1.crt.pem")).unwrap())
        .unwrap()
        .remove(0);
    let info = cert::parse(&der).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("cam-1"));
    assert_eq!(info.bound_tenant.as_deref(), Some("acme"));
    assert_eq!(info.issuer_raw, ca_info.subject_raw);
    assert_eq!(issued["fingerprint"], info.fingerprint.as_str());
    // A second issue into the same place never overwrites the key.
    let (ok, _, err) = cli(
        &db,
        &[
            "cert",
            "issue",
            "--tenant",
            "acme",
            "--client-id",
            "cam-1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(!ok && err.contains("never overwritten"), "{err}");
    // Printed instead: the key appears once, in the output.
    let printed = cli_json(
        &db,
        &[
            "cert",
            "issue",
            "--tenant",
            "acme",
            "--client-id",
            "cam-1",
            "--validity",
            "10d",
        ],
    )
    .await;
    assert!(
        printed["private_key"]
            .as_str()
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    // An unknown device gets no certificate.
    let (ok, _, err) = cli(
        &db,
        &["cert", "issue", "--tenant", "acme", "--client-id", "ghost"],
        None,
    )
    .await;
    assert!(!ok && err.contains("not found"), "{err}");

    let soon = cli_json(&db, &["cert", "expiring", "--within", "30d"]).await;
    assert_eq!(soon.as_array().unwrap().len(), 1, "{soon}");
    assert_eq!(soon[0]["fingerprint"], printed["fingerprint"]);
    let all = cli_json(&db, &["cert", "expiring", "--within", "400d"]).await;
    assert_eq!(all.as_array().unwrap().len(), 3);

    // Revoke one, publish: the signed CRL lists exactly it.
    let fp = issued["fingerprint"].as_str().unwrap();
    let revoked = cli_json(
        &db,
        &["cert", "revoke", "--tenant", "acme", "--fingerprint", fp],
    )
    .await;
    assert!(revoked["revoked_at"].is_i64());
    let crl_dir = dir.path().join("crl");
    let published = cli_json(&db, &["crl", "publish", "--out", crl_dir.to_str().unwrap()]).await;
    assert_eq!(published[0]["number"], 1);
    let crl_pem = std::fs::read(crl_dir.join("acme-default.crl.pem")).unwrap();
    let crl = crl::verify(&crl_pem, &ca_der).unwrap();
    assert_eq!(crl.revoked.iter().collect::<Vec<_>>(), vec![&info.serial]);
    assert_eq!(crl.number, 1);
    let again = cli_json(&db, &["crl", "publish", "--out", crl_dir.to_str().unwrap()]).await;
    assert_eq!(again[0]["number"], 2);
    let list = cli_json(&db, &["cert", "list", "--tenant", "acme"]).await;
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|c| !c["revoked_at"].is_null())
            .count(),
        1
    );

    // An external CA: a CRL signed by someone else is refused, loudly, and recorded on the CA.
    let ext = cert::new_ca("acme", "ext", 1_700_000_000, 3650 * 86400).unwrap();
    let ext_file = dir.path().join("ext.pem");
    std::fs::write(&ext_file, cert::to_pem("CERTIFICATE", &ext.cert_der)).unwrap();
    cli_json(
        &db,
        &[
            "ca",
            "import",
            "--tenant",
            "acme",
            "--name",
            "ext",
            "--file",
            ext_file.to_str().unwrap(),
        ],
    )
    .await;
    let (ok, _, err) = cli(
        &db,
        &[
            "crl",
            "import",
            "--tenant",
            "acme",
            "--ca",
            "ext",
            "--file",
            crl_dir.join("acme-default.crl.pem").to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(!ok && err.contains("issuer"), "{err}");
    let cas = cli_json(&db, &["ca", "list", "--tenant", "acme"]).await;
    let ext_row = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ext")
        .unwrap()
        .clone();
    assert!(
        ext_row["crl_error"].as_str().unwrap().contains("issuer"),
        "{ext_row}"
    );
    // The operator scripts under certs/ drive the same binary; openssl agrees with the signature.
    let script = |name: &str| format!("{}/certs/{name}", env!("CARGO_MANIFEST_DIR"));
    let scripts_dir = dir.path().join("ops");
    let run = |args: Vec<String>| {
        let mut c = Command::new("bash");
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MQGATE_DATABASE_URL", &db)
            .env("MQGATE_CA_KEY_SECRET", CA_SECRET)
            .env("CERTS_MQGATE", BIN)
            .env("CERTS_DIR", &scripts_dir)
            .args(args);
        c
    };
    let mut issue = run(vec![
        script("issue-device.sh"),
        "acme".into(),
        "cam-1".into(),
        "30d".into(),
    ]);
    let out = issue.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(scripts_dir.join("devices/cam-1/cam-1.key.pem").exists());
    let mut publish = run(vec![
        script("publish-crl.sh"),
        dir.path().join("broker").display().to_string(),
    ]);
    assert!(publish.output().await.unwrap().status.success());
    let copied = dir.path().join("broker/acme-default.crl.pem");
    let mut check = Command::new("bash");
    check.args([
        script("check-crl.sh"),
        copied.display().to_string(),
        ca_file.display().to_string(),
    ]);
    let out = check.output().await.unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("verify OK"), "{said}");
    assert!(
        said.to_uppercase().contains(&info.serial.to_uppercase()),
        "{said}"
    );

    // A device certificate is not a CA.
    let (ok, _, err) = cli(
        &db,
        &[
            "ca",
            "import",
            "--tenant",
            "acme",
            "--name",
            "bad",
            "--file",
            out_dir.join("cam-1.crt.pem").to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(!ok && err.contains("not a CA"), "{err}");
}

#[tokio::test]
async fn serve_runs_the_mqtt_broker_and_a_cli_disable_ends_a_live_session() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let token = one_device(&db).await;
    let mut s = Server::start(&db, &[]).await;
    let addr = s.mqtt_addr().await;
    let mut o = MqttOptions::new("dev-1", addr.ip().to_string(), addr.port());
    o.set_credentials("dev-1", &token);
    let (_client, mut el) = AsyncClient::new(o, 8);
    let wait = Duration::from_secs(30);
    tokio::time::timeout(wait, async {
        while !matches!(el.poll().await, Ok(Event::Incoming(Packet::ConnAck(_)))) {}
    })
    .await
    .expect("no CONNACK from mqgate serve");
    // Another process changes the registry; the change table carries it to the live session.
    cli_json(
        &db,
        &[
            "device",
            "disable",
            "--tenant",
            "acme",
            "--client-id",
            "dev-1",
        ],
    )
    .await;
    tokio::time::timeout(wait, async { while el.poll().await.is_ok() {} })
        .await
        .expect("the disabled device's session was not closed");
    s.stop().await;
}

/// `serve` stopped by SIGTERM (as systemd or a container runtime stops it) right after a CONNECT
/// decision still writes that decision to the audit trail: the writer's queue is flushed before
/// the registry closes.
#[tokio::test]
async fn sigterm_stops_serve_without_losing_queued_audit_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let token = one_device(&db).await;
    let mut s = Server::start(&db, &[]).await;
    assert_eq!(s.authn("dev-1", &token).await, "allow");
    assert_eq!(s.authn("dev-1", "mqg_wrong").await, "deny");
    s.terminate();
    s.stopped_cleanly().await;
    let tail = cli_json(&db, &["audit", "tail", "--limit", "2"]).await;
    let details: Vec<&str> = tail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details.len(), 2, "{tail}");
    assert!(
        details
            .iter()
            .any(|d| d.contains(r#""cause":"bad_secret""#)),
        "{tail}"
    );
    assert!(
        details.iter().all(|d| d.contains(r#""client_id":"dev-1""#)),
        "{tail}"
    );
    assert_eq!(
        cli_json(&db, &["audit", "verify"]).await["intact"],
        json!(true)
    );
}

/// SIGTERM ends live MQTT sessions properly before `serve` exits: a 5.0 client is told the
/// server is shutting down (DISCONNECT 0x8B) instead of seeing its connection cut.
#[tokio::test]
async fn sigterm_tells_live_mqtt_5_sessions_the_server_is_shutting_down() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let token = one_device(&db).await;
    let mut s = Server::start(&db, &[]).await;
    let addr = s.mqtt_addr().await;
    let mut o = MqttOptions::new("dev-1", addr.ip().to_string(), addr.port());
    o.set_credentials("dev-1", &token);
    let (_client, mut el) = AsyncClient::new(o, 8);
    let wait = Duration::from_secs(30);
    tokio::time::timeout(wait, async {
        while !matches!(el.poll().await, Ok(Event::Incoming(Packet::ConnAck(_)))) {}
    })
    .await
    .expect("no CONNACK from mqgate serve");
    s.terminate();
    let reason = tokio::time::timeout(wait, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(d))) => return Some(d.reason_code),
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return Some(reason_code),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("v5 client error: {e:?}");
                    return None;
                }
            }
        }
    })
    .await
    .expect("the session was neither ended nor closed");
    assert_eq!(reason, Some(DisconnectReasonCode::ServerShuttingDown));
    s.stopped_cleanly().await;
}

/// `serve` over a cluster of its own (so the test can stop it), with tenant `acme`, device
/// `dev-1` (returns its token), a 1 s decision deadline and the given shutdown deadline; `dev-1`
/// has connected once, so it is cached and the audit trail has been written.
async fn serve_on_own_cluster(shutdown: &str) -> (crate::outage::Cluster, Server, String) {
    let pg = crate::outage::Cluster::start().await;
    let db = pg.url();
    let token = one_device(&db).await;
    let env = [
        ("MQGATE_DECISION_TIMEOUT", "1s"),
        ("MQGATE_SHUTDOWN_TIMEOUT", shutdown),
    ];
    let s = Server::start(&db, &env).await;
    assert_eq!(s.authn("dev-1", &token).await, "allow");
    (pg, s, token)
}

impl Server {
    /// Waits (at most `limit`) for the process to exit; returns how long it took and its log.
    async fn exits_within(&mut self, limit: Duration) -> (Duration, String) {
        let started = std::time::Instant::now();
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("serve did not exit within {limit:?}"))
            .unwrap();
        let took = started.elapsed();
        // The log reader ends with the process: gather every line.
        let mut all = String::new();
        while let Some(l) = self.log.recv().await {
            all.push_str(&l);
            all.push('\n');
        }
        (took, all)
    }

    /// Waits until the log shows a line containing `needle`.
    async fn logged(&mut self, needle: &str) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(l) = self.log.recv().await {
                if l.contains(needle) {
                    return;
                }
            }
            panic!("serve exited before logging {needle:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("serve never logged {needle:?}"));
    }
}

/// The number in `unwritten=N` of the shutdown line.
fn unwritten(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("audit entries not written") || l.contains("audit trail written"))
        .unwrap_or_else(|| panic!("no shutdown audit line in:\n{log}"));
    line.split("unwritten=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

/// SIGTERM while PostgreSQL is down: `serve` exits within its shutdown deadline and says how
/// many audit entries it could not write (those of the decisions made during the outage).
#[tokio::test]
async fn sigterm_with_postgres_stopped_exits_within_the_deadline_and_counts_lost_audit() {
    let (pg, mut s, token) = serve_on_own_cluster("3s").await;
    pg.stop("fast").await;
    for _ in 0..3 {
        assert_eq!(s.authn("dev-1", &token).await, "allow");
    }
    s.terminate();
    let (took, log) = s.exits_within(Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    assert!(unwritten(&log) >= 3, "{log}");
}

/// PostgreSQL killed while `serve` is shutting down (its audit writes in flight): still bounded.
#[tokio::test]
async fn sigterm_with_postgres_killed_mid_shutdown_exits_within_the_deadline() {
    let (pg, mut s, token) = serve_on_own_cluster("3s").await;
    for _ in 0..20 {
        assert_eq!(s.authn("dev-1", &token).await, "allow");
    }
    s.terminate();
    pg.stop("immediate").await;
    let (took, log) = s.exits_within(Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    // Whatever was written before the kill, the count is reported.
    unwritten(&log);
}

/// A second SIGTERM ends a shutdown that waits on a dead database at once.
#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let (pg, mut s, token) = serve_on_own_cluster("60s").await;
    pg.stop("fast").await;
    assert_eq!(s.authn("dev-1", &token).await, "allow");
    s.terminate();
    s.logged("shutting down").await;
    s.terminate();
    let (took, log) = s.exits_within(Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(log.contains("second stop signal"), "{log}");
}

/// The router thread dying (made to panic on purpose by a debug-build hook when the named client
/// connects) turns `/readyz` 503, closes the MQTT listener, writes the audit entries queued and
/// ends `serve` with a failure status, so that a supervisor restarts it.
#[tokio::test]
async fn a_dead_router_turns_readiness_off_writes_the_audit_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    one_device(&db).await;
    let crash = cli_json(
        &db,
        &["device", "add", "--tenant", "acme", "--client-id", "crash"],
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = Server::start(&db, &[("TEST_CRASH_ROUTER_CLIENT", "crash")]).await;
    let mqtt = s.mqtt_addr().await;
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client, base: String| async move {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(r) => Some(r.status().as_u16()),
            Err(_) => None,
        }
    };
    assert_eq!(ready(http.clone(), s.base.clone()).await, Some(200));
    assert_eq!(s.authn("dev-1", "mqg_wrong").await, "deny");
    // Not waiting for its CONNACK: readiness is watched from the moment the router is hit.
    let crash_connect = tokio::spawn(async move {
        crate::raw::Raw::connect(mqtt, "crash", &crash, false, true)
            .await
            .1
    });
    let saw_503 = tokio::time::timeout(Duration::from_secs(10), async {
        while ready(http.clone(), s.base.clone()).await != Some(503) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if saw_503.is_err() {
        panic!("readiness never turned 503: {}", s.stop().await);
    }
    // Readiness turns first; the listener closes as the broker's accept loop sees the fault.
    until("the MQTT listener is closed", SOON, || async {
        tokio::net::TcpStream::connect(mqtt).await.is_err()
    })
    .await;
    assert_ne!(
        crash_connect.await.unwrap(),
        Some(0),
        "no session on a dead router"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), s.child.wait())
        .await
        .expect("serve did not exit after the router died")
        .unwrap();
    assert!(!status.success(), "exit status {status}");
    let log = s.stop().await;
    assert!(log.contains("router thread died"), "{log}");
    let tail = cli_json(&db, &["audit", "tail", "--limit", "10"]).await;
    assert!(tail.to_string().contains("bad_secret"), "{tail}");
    assert!(
        tail.to_string().contains(r#"\"client_id\":\"crash\""#),
        "{tail}"
    );
}

#[tokio::test]
async fn a_non_ascii_bcrypt_hash_is_refused_without_a_panic_or_an_echo() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    one_device(&db).await;
    let hash = format!("$2b$1é{}", "q".repeat(53));
    let args = [
        "cred",
        "import-bcrypt",
        "--tenant",
        "acme",
        "--client-id",
        "dev-1",
    ];
    let (ok, out, err) = cli(&db, &args, Some(&format!("{hash}\n"))).await;
    assert!(!ok);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("not a bcrypt hash"), "{err}");
    assert!(!err.contains("qqqq") && !out.contains("qqqq"), "{err}");
}

#[tokio::test]
async fn client_ids_that_can_never_connect_are_refused_and_never_leave_the_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    cli_json(&db, &["tenant", "add", "acme"]).await;
    for bad in ["a/b", "../x", "dev+1", "$SYS"] {
        let args = ["device", "add", "--tenant", "acme", "--client-id", bad];
        let (ok, _, err) = cli(&db, &args, None).await;
        assert!(!ok, "{bad} was accepted");
        assert!(err.contains("none of + # / $"), "{err}");
    }
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    let args = [
        "cert",
        "issue",
        "--tenant",
        "acme",
        "--client-id",
        "../x",
        "--out",
        &out_arg,
    ];
    let (ok, _, _) = cli(&db, &args, None).await;
    assert!(!ok);
    assert!(!dir.path().join("x.key.pem").exists());
    assert!(!dir.path().join("x.crt.pem").exists());
}
