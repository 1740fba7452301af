//! Bulk provisioning (issue #14, item 4): `device import` of CSV and JSON-lines files, all or
//! nothing, idempotent, tokens written once to a 0600 file, and `device export` without secrets.
//! Most cases drive the admin layer over both stores; the last ones run the real binary.

use std::process::Stdio;

use mqgate::admin::bulk::{self, Format};
use mqgate::admin::import::{self, Imported, TokenFile};
use mqgate::admin::{Admin, AdminError};
use mqgate::registry::{DeviceRecord, Store};
use secrecy::ExposeSecret;

use crate::both_stores;
use crate::helpers::{SECRET, TestApp};

const PASSWORD: &str = "correct horse battery";

/// An argon2id and a bcrypt hash of [`PASSWORD`].
fn hashes() -> (String, String) {
    let argon = mqgate::auth::secret::hash_password(&PASSWORD.into()).unwrap();
    let bc = bcrypt::hash_with_salt(PASSWORD, 4, [7u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB);
    (argon, bc)
}

fn csv_file() -> String {
    let (argon, bc) = hashes();
    format!(
        "client_id,username,password_hash,acl\n\
         c-1,,,allow:publish:fleet/${{clientid}}/#;deny:all:fleet/#\n\
         c-2,u2,\"{argon}\",\n\
         c-3,,{bc},allow:subscribe:news/#\n"
    )
}

fn jsonl_file() -> String {
    let (argon, _) = hashes();
    format!(
        "{{\"client_id\":\"j-1\",\"acl\":[{{\"permission\":\"allow\",\"action\":\"publish\",\"topic\":\"fleet/${{clientid}}/#\"}}]}}\n\
         \n\
         {{\"client_id\":\"j-2\",\"username\":\"u-j2\",\"password_hash\":\"{argon}\"}}\n"
    )
}

/// Reads and checks `text`; panics on a bad line.
fn checked(text: &str, format: Format) -> Vec<import::ImportLine> {
    import::check(bulk::read(text.as_bytes(), format).unwrap()).unwrap()
}

async fn import(admin: &Admin, text: &str, format: Format) -> Result<Imported, AdminError> {
    let lines = import::check(bulk::read(text.as_bytes(), format).map_err(|e| match e {
        bulk::ReadError::Lines(b) => AdminError::BadLines(b),
        other => panic!("{other}"),
    })?)?;
    admin.import_devices("acme", lines, true, &|_, _| {}).await
}

fn token_of<'a>(i: &'a Imported, client_id: &str) -> &'a str {
    let (_, t) = i.tokens.iter().find(|(c, _)| c == client_id).unwrap();
    t.expose_secret()
}

async fn record(store: &Store, client_id: &str) -> Option<DeviceRecord> {
    let t = store.tenant_by_name("acme").await.unwrap().unwrap().id;
    store.load_device(t, client_id).await.unwrap()
}

async fn imported_devices_authenticate_with_their_tokens_and_hashes(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.admin.add_tenant("acme").await.unwrap();
    let from_csv = import(&app.admin, &csv_file(), Format::Csv).await.unwrap();
    let from_jsonl = import(&app.admin, &jsonl_file(), Format::Jsonl)
        .await
        .unwrap();
    assert_eq!(from_csv.created, ["c-1", "c-2", "c-3"]);
    assert_eq!(from_jsonl.created, ["j-1", "j-2"]);
    let tokened: Vec<&str> = from_csv.tokens.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(tokened, ["c-1"], "only devices without a hash get a token");

    for (client, username, secret) in [
        ("c-1", "", token_of(&from_csv, "c-1")),
        ("j-1", "", token_of(&from_jsonl, "j-1")),
        ("c-2", "u2", PASSWORD),
        ("c-3", "", PASSWORD),
        ("j-2", "u-j2", PASSWORD),
    ] {
        let v = app.authn(client, username, secret).await;
        assert_eq!(v["result"], "allow", "{client}: {v}");
    }
    assert_eq!(
        app.authn("c-2", "u2", "wrong password").await["result"],
        "deny"
    );
    assert_eq!(app.authn("c-2", "other", PASSWORD).await["result"], "deny");

    // The rules came in, in file order, with placeholders.
    assert_eq!(app.authz("c-1", "publish", "fleet/c-1/t").await, "allow");
    assert_eq!(app.authz("c-1", "publish", "fleet/c-2/t").await, "deny");
    assert_eq!(app.authz("c-3", "subscribe", "news/today").await, "allow");
    assert_eq!(app.authz("j-1", "publish", "fleet/j-1/x").await, "allow");
    let rules = record(&store, "c-1").await.unwrap().rules;
    let topics: Vec<&str> = rules.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["fleet/${clientid}/#", "fleet/#"]);

    // One audit entry per import; no kick queued for devices that did not exist.
    let audit = store.list_audit(0, 1000).await.unwrap();
    let imports = audit
        .iter()
        .filter(|e| e.detail.contains("device.import"))
        .count();
    assert_eq!(imports, 2);
    assert_eq!(store.list_kicks().await.unwrap(), vec![]);
}
both_stores!(
    import_authenticates,
    imported_devices_authenticate_with_their_tokens_and_hashes
);

async fn a_bad_line_in_the_middle_applies_nothing_and_is_named(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.admin.add_tenant("acme").await.unwrap();
    let csv = "client_id,username,password_hash,acl\n\
               ok-1,,,\n\
               ok-2,,,allow:publish:a/#\n\
               bad/3,,,\n\
               ok-4,,$2b$04$short,\n\
               ok-5,,,allow:publish:a/#/b\n\
               ok-6,,,\n";
    let e = import(&app.admin, csv, Format::Csv).await.err().unwrap();
    let msg = e.to_string();
    for (line, what) in [(4, "client id"), (5, "password_hash"), (6, "acl rule 1")] {
        assert!(msg.contains(&format!("line {line}: {what}")), "{msg}");
    }
    assert!(
        !msg.contains("$2b$04$short"),
        "the hash is never echoed: {msg}"
    );
    let jsonl = "{\"client_id\":\"ok-1\"}\n{\"client_id\":\"ok-2\",\"acl\":[{\"permission\":\"maybe\",\"action\":\"all\",\"topic\":\"x\"}]}\n{\"client_id\":\"ok-1\"}\n";
    let msg = import(&app.admin, jsonl, Format::Jsonl)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("line 2: acl rule 1: permission"), "{msg}");
    assert!(msg.contains("line 3: client id also on line 1"), "{msg}");

    // A client id another tenant holds is only found in the store: still nothing applied.
    app.admin.add_tenant("globex").await.unwrap();
    app.admin.add_device("globex", "taken", None).await.unwrap();
    let csv = "client_id\nfree-1\ntaken\nfree-2\n";
    let msg = import(&app.admin, csv, Format::Csv)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("line 3: client id belongs to another tenant"),
        "{msg}"
    );
    assert_eq!(app.admin.list_devices("acme").await.unwrap(), vec![]);
    assert_eq!(store.resolve_client("free-1").await.unwrap(), None);
}
both_stores!(
    import_all_or_nothing,
    a_bad_line_in_the_middle_applies_nothing_and_is_named
);

async fn a_rerun_reports_existing_devices_and_changes_nothing(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.admin.add_tenant("acme").await.unwrap();
    let first = import(&app.admin, &csv_file(), Format::Csv).await.unwrap();
    let before = [
        record(&store, "c-1").await,
        record(&store, "c-2").await,
        record(&store, "c-3").await,
    ];
    // The same devices again, and one of them with other rules and another hash: still untouched.
    let (argon, _) = hashes();
    let again = format!("{}c-4,,,\nc-1,,\"{argon}\",allow:all:#\n", csv_file()).replace(
        "c-1,,,allow:publish:fleet/${clientid}/#;deny:all:fleet/#\n",
        "",
    );
    let second = import(&app.admin, &again, Format::Csv).await.unwrap();
    assert_eq!(second.created, ["c-4"]);
    assert_eq!(second.existing, ["c-2", "c-3", "c-1"]);
    let tokened: Vec<&str> = second.tokens.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(tokened, ["c-4"], "existing devices are never re-keyed");
    let after = [
        record(&store, "c-1").await,
        record(&store, "c-2").await,
        record(&store, "c-3").await,
    ];
    assert_eq!(before, after);
    let v = app.authn("c-1", "", token_of(&first, "c-1")).await;
    assert_eq!(v["result"], "allow", "{v}");
    let third = import(&app.admin, &again, Format::Csv).await.unwrap();
    assert_eq!((third.created.len(), third.existing.len()), (0, 4));
}
both_stores!(
    import_idempotent,
    a_rerun_reports_existing_devices_and_changes_nothing
);

async fn without_a_token_file_a_new_device_needing_a_token_is_refused(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.admin.add_tenant("acme").await.unwrap();
    let lines = checked(&csv_file(), Format::Csv);
    let e = app
        .admin
        .import_devices("acme", lines, false, &|_, _| {})
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("line 2: new device without password_hash"),
        "{e}"
    );
    assert_eq!(app.admin.list_devices("acme").await.unwrap(), vec![]);
}
both_stores!(
    import_needs_token_file,
    without_a_token_file_a_new_device_needing_a_token_is_refused
);

async fn export_holds_no_secret_and_reimports_as_a_no_op(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.admin.add_tenant("acme").await.unwrap();
    let first = import(&app.admin, &csv_file(), Format::Csv).await.unwrap();
    import(&app.admin, &jsonl_file(), Format::Jsonl)
        .await
        .unwrap();
    let devices = app.admin.export_devices("acme").await.unwrap();
    let token = token_of(&first, "c-1");
    let digest = mqgate::auth::secret::token_digest(token);
    let (argon, bc) = hashes();
    for format in [Format::Csv, Format::Jsonl] {
        let mut out = Vec::new();
        bulk::write(&mut out, format, &devices).unwrap();
        let text = String::from_utf8(out).unwrap();
        for secret in [token, digest.as_str(), "$argon2id$", &bc[..7], &argon[..20]] {
            assert!(
                !text.contains(secret),
                "{format:?} export holds a secret:\n{text}"
            );
        }
        assert!(text.contains("fleet/${clientid}/#"), "{text}");
        // Re-importing it needs no token file: every device exists.
        let lines = checked(&text, format);
        let again = app
            .admin
            .import_devices("acme", lines, false, &|_, _| {})
            .await
            .unwrap();
        assert_eq!((again.created.len(), again.existing.len()), (0, 5));
    }
}
both_stores!(
    export_without_secrets,
    export_holds_no_secret_and_reimports_as_a_no_op
);

#[test]
fn the_token_file_is_new_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.csv");
    let f = TokenFile::create(&path, Format::Csv).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = TokenFile::create(&path, Format::Csv).err().unwrap();
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
    f.write(&[("a".into(), "mqg_x".to_string().into())])
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "client_id,token\na,mqg_x\n"
    );
}

// The real binary.

const BIN: &str = env!("CARGO_BIN_EXE_mqgate");

async fn cli(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN)
        .env_clear()
        .env("MQGATE_DATABASE_URL", db)
        .env("MQGATE_INTERNAL_SECRET", SECRET)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_imports_writes_tokens_once_and_exports_without_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("reg.db").display());
    let file = dir.path().join("devices.csv");
    std::fs::write(&file, csv_file()).unwrap();
    let tokens = dir.path().join("tokens.csv");
    let (file, tokens_s) = (file.to_str().unwrap(), tokens.to_str().unwrap());
    assert!(cli(&db, &["tenant", "add", "acme"]).await.0);

    // An existing token file is refused before the store is touched.
    std::fs::write(&tokens, "keep me").unwrap();
    let args = [
        "device",
        "import",
        "--tenant",
        "acme",
        file,
        "--tokens-out",
        tokens_s,
    ];
    let (ok, _, err) = cli(&db, &args).await;
    assert!(!ok && err.contains("never written over"), "{err}");
    assert_eq!(std::fs::read_to_string(&tokens).unwrap(), "keep me");
    std::fs::remove_file(&tokens).unwrap();

    let (ok, out, err) = cli(&db, &args).await;
    assert!(ok, "{err}");
    assert!(out.contains("3 devices created"), "{out}");
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let written = std::fs::read_to_string(&tokens).unwrap();
    let token = written
        .lines()
        .find_map(|l| l.strip_prefix("c-1,"))
        .unwrap()
        .to_string();
    assert!(
        token.starts_with("mqg_") && written.lines().count() == 2,
        "{written}"
    );
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "no token on stdout/stderr"
    );

    // A re-run: counted as existing, nothing re-keyed, the token file left alone.
    let again = dir.path().join("tokens-2.csv");
    let args2 = [
        "device",
        "import",
        "--tenant",
        "acme",
        file,
        "--tokens-out",
        again.to_str().unwrap(),
    ];
    let (ok, out, err) = cli(&db, &args2).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("0 devices created, 3 existed") && out.contains("exists\tc-2"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&tokens).unwrap(), written);

    let (ok, exported, err) = cli(&db, &["device", "export", "--tenant", "acme"]).await;
    assert!(ok, "{err}");
    assert!(
        exported.starts_with("client_id,username,password_hash,acl\nc-1,,,allow:publish:"),
        "{exported}"
    );
    for secret in [token.as_str(), "$argon2id$", "$2b$"] {
        assert!(!exported.contains(secret), "{exported}");
    }

    // The token from the file opens the device's door on a server over that database.
    let store = Store::connect(&db).await.unwrap();
    let app = TestApp::start(store).await;
    assert_eq!(app.authn("c-1", "", &token).await["result"], "allow");
    assert_eq!(app.authn("c-3", "", PASSWORD).await["result"], "allow");
}

async fn running_servers_hear_of_each_new_device_once_and_in_order(store: Store) {
    use mqgate::registry::Change;
    store.migrate().await.unwrap();
    let admin = Admin::new(
        store.clone(),
        mqgate::clock::Clock::manual(crate::helpers::T0),
    );
    admin.add_tenant("acme").await.unwrap();
    let t = admin.tenant_id("acme").await.unwrap();
    let mut feed = store.subscribe_changes().await.unwrap().unwrap();
    let file = "client_id,acl\na-1,allow:all:x/#;deny:all:#\na-2,allow:all:y/#\na-3,\n";
    import(&admin, file, Format::Csv).await.unwrap();
    // A change after the import comes after its announcements, with no resync in between (a
    // resync would drop a server's whole cache).
    admin.set_enabled("acme", "a-2", false).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let change = tokio::time::timeout(crate::helpers::SOON, feed.recv())
            .await
            .expect("the change feed went quiet")
            .unwrap();
        match change {
            Change::Device { tenant, client_id } if tenant == t => seen.push(client_id),
            Change::Mark(_) => {}
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
    }
    assert_eq!(seen, ["a-1", "a-2", "a-3", "a-2"]);
}
both_stores!(
    import_announced,
    running_servers_hear_of_each_new_device_once_and_in_order
);
