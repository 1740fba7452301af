//! `compose/` cannot run here (no container engine, no EMQX), so its files are checked against
//! mqgate itself: the compose file's mqgate environment must build a valid mqgate config; the
//! URLs, ports and secret variables EMQX is given must be the ones mqgate listens on and expects;
//! the EMQX authn/authz bodies, rendered the way EMQX renders them, must get answers from a real
//! mqgate; the Dockerfile's binary, user, port and health check must match the server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use mqgate::config::{Config, Layers};
use mqgate::http::emqx::{AUTHN_PATH, AUTHZ_PATH};
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::{SECRET, TestApp, sqlite_store};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("compose/docker-compose.yml")).unwrap();
    docs.into_iter().next().expect("one YAML document")
}

/// A service's `environment` (map form) as strings.
fn environment(compose: &Yaml, service: &str) -> BTreeMap<String, String> {
    let env = compose["services"][service]["environment"]
        .as_hash()
        .unwrap_or_else(|| panic!("services.{service}.environment must be a map"));
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                other => panic!("{service}: {k:?} = {other:?}"),
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// The variables `.env.example` documents, with their example values.
fn env_example() -> BTreeMap<String, String> {
    read("compose/.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// What a user's `.env` holds: the example, every empty value filled (long enough for mqgate).
fn dot_env() -> BTreeMap<String, String> {
    env_example()
        .into_iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v.is_empty()) {
                ("MQGATE_INTERNAL_SECRET", _) => SECRET.to_string(),
                (_, true) => format!("{}-0123456789abcdef0123456789", k.to_lowercase()),
                (_, false) => v,
            };
            (k, v)
        })
        .collect()
}

/// Docker Compose interpolation: `$$` is a literal `$`; `${NAME}`, `${NAME:?message}` and
/// `${NAME:-default}` read `vars`. Returns the text and the names it read.
fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> (String, BTreeSet<String>) {
    let mut out = String::new();
    let mut used = BTreeSet::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').expect("closing brace");
            let expr = &inner[..end];
            let name_end = expr.find([':', '-', '?']).unwrap_or(expr.len());
            let name = &expr[..name_end];
            used.insert(name.to_string());
            let value = vars.get(name).cloned().or_else(|| {
                expr.find(":-")
                    .map(|d| expr[d + 2..].to_string())
                    .filter(|_| !expr.contains(":?"))
            });
            out.push_str(&value.unwrap_or_else(|| panic!("{name} is not set")));
            rest = &inner[end + 1..];
        } else {
            panic!("bare `$` in {s:?}: write $$ or ${{NAME}}");
        }
    }
    out.push_str(rest);
    (out, used)
}

/// The mqgate config the compose file's environment builds.
fn mqgate_config(env: &BTreeMap<String, String>) -> Config {
    Layers::defaults()
        .env(env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .unwrap_or_else(|e| panic!("compose mqgate environment: {e}"))
        .build()
        .unwrap_or_else(|e| panic!("compose mqgate environment: {e}"))
}

/// HOCON without comment lines.
fn hocon() -> String {
    read("compose/emqx/emqx.conf")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bracketed block opened by the first `{` or `[` from `marker` on (quote-aware: the
/// placeholders' braces inside strings do not count).
fn block<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text.find(marker).unwrap_or_else(|| panic!("no `{marker}`"));
    let open = start
        + text[start..]
            .find(['{', '['])
            .unwrap_or_else(|| panic!("`{marker}` opens no block"));
    let (mut depth, mut quoted) = (0i32, false);
    for (i, c) in text[open..].char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '[' if !quoted => depth += 1,
            '}' | ']' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("`{marker}` block not closed")
}

/// `key = value` settings of a block (its own lines, values unquoted).
fn settings(block: &str) -> BTreeMap<String, String> {
    block
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"');
            (k.trim().trim_matches('"').to_string(), v.to_string())
        })
        .collect()
}

/// `http://host:port/path` split.
fn url_parts(url: &str) -> (String, u16, String) {
    let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    (
        uri.host().unwrap().to_string(),
        uri.port_u16().unwrap_or(80),
        uri.path().to_string(),
    )
}

/// Renders an EMQX `body { key = "${placeholder}" }` block the way EMQX does: every placeholder
/// a JSON string, an undefined one `""`.
fn render_body(body: &str, values: &BTreeMap<&str, &str>) -> Value {
    let mut out = serde_json::Map::new();
    for (key, template) in settings(body) {
        let placeholder = template
            .strip_prefix("${")
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or_else(|| panic!("body field {key} = {template}: not one placeholder"));
        let v = values.get(placeholder).copied().unwrap_or("");
        out.insert(key, json!(v));
    }
    Value::Object(out)
}

#[test]
fn every_compose_variable_is_documented_and_no_secret_is_committed() {
    let text = read("compose/docker-compose.yml");
    let (_, used) = interpolate(&text, &dot_env());
    let documented = env_example();
    for name in &used {
        assert!(documented.contains_key(name), "{name} not in .env.example");
    }
    for (k, v) in &documented {
        assert!(used.contains(k), "{k} documented but unused");
        if k != "EMQX_API_KEY" {
            assert!(v.is_empty(), "{k} must have no value in .env.example");
        }
    }
    assert!(
        read("compose/.gitignore")
            .lines()
            .any(|l| l.trim() == ".env")
    );
    assert!(
        read(".dockerignore")
            .lines()
            .any(|l| l.trim() == "compose/.env")
    );
    let c = compose();
    let emqx_image = c["services"]["emqx"]["image"].as_str().unwrap();
    assert!(
        emqx_image.starts_with("emqx/emqx:5.8.") && emqx_image.len() > "emqx/emqx:5.8.".len(),
        "EMQX pinned to a 5.8 patch release: {emqx_image}"
    );
    let pg_image = c["services"]["postgres"]["image"].as_str().unwrap();
    assert!(pg_image.starts_with("postgres:16."), "{pg_image}");
}

#[test]
fn the_compose_stack_matches_mqgates_configuration() {
    let c = compose();
    let vars = dot_env();
    let ienv = |service: &str| -> BTreeMap<String, String> {
        environment(&c, service)
            .into_iter()
            .map(|(k, v)| (k, interpolate(&v, &vars).0))
            .collect()
    };
    let (mq, em, pg) = (ienv("mqgate"), ienv("emqx"), ienv("postgres"));
    let config = mqgate_config(&mq);

    // mqgate: PostgreSQL of the postgres service, EMQX's API on the emqx service, no own broker.
    let db: http::Uri = config.database_url().parse().unwrap();
    let auth = db.authority().unwrap().as_str();
    let (userinfo, hostport) = auth.split_once('@').unwrap();
    assert_eq!(
        userinfo,
        format!("{}:{}", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    );
    assert_eq!(hostport, "postgres:5432");
    assert_eq!(db.path(), format!("/{}", pg["POSTGRES_DB"]));
    assert!(config.broker.addr.is_none(), "EMQX is the broker");
    let api = config.emqx_api.as_ref().expect("kicks configured");
    let (api_host, api_port, _) = url_parts(&api.url);
    assert!(c["services"][api_host.as_str()].as_hash().is_some());
    {
        use secrecy::ExposeSecret;
        assert_eq!(api.key, em["BOOTSTRAP_API_KEY"]);
        assert_eq!(api.secret.expose_secret(), em["BOOTSTRAP_API_SECRET"]);
        let bearer = format!(
            "\"Bearer {}\"",
            config.internal_secret.as_ref().unwrap().expose_secret()
        );
        assert_eq!(em["EMQX_AUTHENTICATION__1__HEADERS__AUTHORIZATION"], bearer);
        assert_eq!(
            em["EMQX_AUTHORIZATION__SOURCES__1__HEADERS__AUTHORIZATION"],
            bearer
        );
    }
    // EMQX reads every EMQX_* variable as configuration: only config paths may use the prefix.
    for k in em.keys().filter(|k| k.starts_with("EMQX_")) {
        assert!(k.contains("__"), "{k} is not an EMQX config path");
    }

    // EMQX: its config file mounted where EMQX reads it; the API where mqgate calls it; the
    // bootstrap file where the entrypoint writes it.
    let volumes: Vec<&str> = c["services"]["emqx"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"./emqx/emqx.conf:/opt/emqx/etc/emqx.conf:ro"));
    let conf = hocon();
    let top = settings(&conf);
    assert_eq!(top["dashboard.listeners.http.bind"], api_port.to_string());
    let bootstrap = &top["api_key.bootstrap_file"];
    let entrypoint: Vec<&str> = c["services"]["emqx"]["entrypoint"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let script = entrypoint.last().unwrap();
    assert!(script.contains(&format!("> {bootstrap}")), "{script}");
    assert!(script.contains(r#""$$BOOTSTRAP_API_KEY" "$$BOOTSTRAP_API_SECRET""#));
    assert!(
        script.contains(":administrator"),
        "DELETE needs the administrator role"
    );
    assert!(script.contains("exec /usr/bin/docker-entrypoint.sh /opt/emqx/bin/emqx foreground"));

    // Authentication and authorization: mqgate only, at its address and paths, deny by default.
    let authn = settings(block(&conf, "authentication ="));
    assert_eq!(authn["mechanism"], "password_based");
    assert_eq!(authn["backend"], "http");
    assert_eq!(authn["method"], "post");
    let authz_block = block(&conf, "authorization {");
    let authz_top = settings(authz_block);
    assert_eq!(authz_top["no_match"], "deny");
    let sources = block(authz_block, "sources =");
    assert_eq!(
        sources.matches("type =").count(),
        1,
        "mqgate is the only source"
    );
    assert!(
        !conf.contains("type = file"),
        "the default file source is removed"
    );
    let authz = settings(sources);
    assert_eq!(authz["type"], "http");
    assert_eq!(authz["method"], "post");
    for (url, path) in [(&authn["url"], AUTHN_PATH), (&authz["url"], AUTHZ_PATH)] {
        let (host, port, p) = url_parts(url);
        assert_eq!(host, "mqgate", "{url}");
        assert_eq!(port, config.listen.port(), "{url}");
        assert_eq!(p, path, "{url}");
    }
    // mqgate answers before EMQX gives up on it.
    for t in [&authn["request_timeout"], &authz["request_timeout"]] {
        let t = humantime::parse_duration(t).unwrap();
        assert!(config.decision_timeout < t, "{t:?}");
    }
}

/// The bodies EMQX will send, rendered as EMQX renders them, answered by a real mqgate.
#[tokio::test]
async fn emqx_configured_bodies_get_mqgate_answers() {
    let conf = hocon();
    let authn_body = block(block(&conf, "authentication ="), "body");
    let authz_body = block(block(&conf, "sources ="), "body");
    let (store, _dir) = sqlite_store().await;
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let connect = |password: &str| {
        let values = BTreeMap::from([
            ("clientid", "dev-1"),
            ("username", "dev-1"),
            ("peerhost", "10.0.0.7"),
            ("password", password),
        ]);
        render_body(authn_body, &values)
    };
    let body = connect(&token);
    for field in ["clientid", "username", "password", "peerhost", "cert_pem"] {
        assert!(body.get(field).is_some(), "authn body lacks {field}");
    }
    let (status, _, v) = app.post(AUTHN_PATH, &body).await;
    assert_eq!((status, v["result"].as_str()), (200, Some("allow")), "{v}");
    let (_, _, v) = app.post(AUTHN_PATH, &connect("mqg_wrong")).await;
    assert_eq!(v["result"], "deny", "{v}");
    let publish = |topic: &str| {
        let values = BTreeMap::from([
            ("clientid", "dev-1"),
            ("username", "dev-1"),
            ("peerhost", "10.0.0.7"),
            ("topic", topic),
            ("action", "publish"),
            ("qos", "1"),
            ("retain", "false"),
        ]);
        render_body(authz_body, &values)
    };
    let (_, _, v) = app.post(AUTHZ_PATH, &publish("acme/dev-1/t")).await;
    assert_eq!(v["result"], "allow", "{v}");
    let (_, _, v) = app.post(AUTHZ_PATH, &publish("acme/dev-2/t")).await;
    assert_eq!(v["result"], "deny", "{v}");
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile").replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn the_dockerfile_runs_the_server_as_a_non_root_user_with_its_readiness_check() {
    let c = compose();
    let build = &c["services"]["mqgate"]["build"];
    let context = repo()
        .join("compose")
        .join(build["context"].as_str().unwrap());
    assert!(
        context
            .join(build["dockerfile"].as_str().unwrap())
            .is_file()
    );
    let ins = dockerfile();
    let froms: Vec<usize> = (0..ins.len()).filter(|&i| ins[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage");
    let runtime = &ins[*froms.last().unwrap()..];
    let get = |op: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    const BIN: &str = "/usr/local/bin/mqgate";
    assert!(
        get("COPY")
            .iter()
            .any(|r| r.starts_with("--from=") && r.ends_with(&format!(" {BIN}")))
    );
    assert_eq!(get("ENTRYPOINT"), [format!("[\"{BIN}\"]")]);
    assert_eq!(get("CMD"), ["[\"serve\"]"]);
    let user = get("USER");
    assert_eq!(user.len(), 1);
    assert!(!["root", "0", "root:root", "0:0"].contains(&user[0]));
    let health = get("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].ends_with(&format!("CMD [\"{BIN}\", \"health\"]")),
        "{}",
        health[0]
    );
    // Every ENV the image sets is a mqgate config key; its listen port is the exposed one and
    // the one the compose file (and EMQX's URLs) use.
    let mut env = BTreeMap::new();
    for r in get("ENV") {
        for pair in r.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            env.insert(k.to_string(), v.to_string());
        }
    }
    let image = mqgate_config(&env);
    assert_eq!(get("EXPOSE"), [image.listen.port().to_string()]);
    let vars = dot_env();
    let composed: BTreeMap<String, String> = environment(&c, "mqgate")
        .into_iter()
        .map(|(k, v)| (k, interpolate(&v, &vars).0))
        .collect();
    assert_eq!(mqgate_config(&composed).listen.port(), image.listen.port());
    assert!(image.acl_rules_dir.starts_with("/etc/mqgate"));
}

/// `mqgate health` (the image's HEALTHCHECK) succeeds against a ready server, fails otherwise.
#[tokio::test]
async fn the_health_command_reports_readiness() {
    let (store, _dir) = sqlite_store().await;
    let app = TestApp::start(store).await;
    let addr = app.base.strip_prefix("http://").unwrap().to_string();
    let run = |listen: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mqgate"))
            .arg("health")
            .env_clear()
            .env("MQGATE_LISTEN", listen)
            .output()
            .await
            .unwrap()
    };
    let ok = run(addr).await;
    assert!(ok.status.success(), "{ok:?}");
    // Nothing listens there: not healthy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = run(format!("127.0.0.1:{port}")).await;
    assert!(!down.status.success(), "{down:?}");
}
