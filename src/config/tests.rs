//! Layering, parsing and the errors users see.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_build_and_env_overrides_them() {
    let c = Layers::defaults()
        .env(env(&[
            ("MQGATE_LISTEN", "0.0.0.0:9000"),
            ("MQGATE_CACHE_TTL", "30s"),
            ("PATH", "/bin"),
        ]))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.cache_ttl, Duration::from_secs(30));
    assert_eq!(c.unknown_client, UnknownClient::Deny);
    assert!(c.internal_secret.is_none());
}

#[test]
fn a_short_internal_secret_is_refused_without_echoing_it() {
    let err = Layers::defaults()
        .env(env(&[("MQGATE_INTERNAL_SECRET", "hunter2")]))
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("at least 32 characters"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_name_their_origin() {
    let err = Layers::defaults()
        .env(env(&[("MQGATE_LISTN", "x")]))
        .unwrap_err();
    assert!(err.to_string().contains("MQGATE_LISTN"));
    let err = Layers::defaults()
        .env(env(&[("MQGATE_UNKNOWN_CLIENT", "maybe")]))
        .unwrap()
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("MQGATE_UNKNOWN_CLIENT"));
}

#[test]
fn the_emqx_api_needs_a_key_and_secret_and_never_shows_the_secret() {
    let c = Layers::defaults().build().unwrap();
    assert!(c.emqx_api.is_none());
    assert_eq!(c.emqx_max_session_age, Duration::from_secs(24 * 3600));
    let err = Layers::defaults()
        .env(env(&[("MQGATE_EMQX_API_URL", "http://emqx:18083")]))
        .unwrap()
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("emqx_api_key"), "{err}");
    let c = Layers::defaults()
        .env(env(&[
            ("MQGATE_EMQX_API_URL", "http://emqx:18083/"),
            ("MQGATE_EMQX_API_KEY", "mqgate"),
            ("MQGATE_EMQX_API_SECRET", "very-secret-value"),
            ("MQGATE_EMQX_MAX_SESSION_AGE", "0"),
        ]))
        .unwrap()
        .build()
        .unwrap();
    let api = c.emqx_api.unwrap();
    assert_eq!(api.url, "http://emqx:18083");
    assert_eq!(api.secret.expose_secret(), "very-secret-value");
    assert!(c.emqx_max_session_age.is_zero());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "from-a-file\n").unwrap();
    let c = Layers::defaults()
        .env(env(&[
            ("MQGATE_EMQX_API_URL", "http://emqx:18083"),
            ("MQGATE_EMQX_API_KEY", "mqgate"),
            ("MQGATE_EMQX_API_SECRET_FILE", f.to_str().unwrap()),
        ]))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.emqx_api.unwrap().secret.expose_secret(), "from-a-file");
    let err = Layers::defaults()
        .env(env(&[("MQGATE_EMQX_API_URL", "https://emqx:18083")]))
        .unwrap()
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("https"), "{err}");
}

#[test]
fn a_file_layer_sits_between_defaults_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mqgate.toml");
    std::fs::write(
        &p,
        "listen = \"127.0.0.1:7000\"\nwarm_cache = false\ncache_ttl = \"1m\"\n",
    )
    .unwrap();
    let c = Layers::defaults()
        .file(&p)
        .unwrap()
        .env(env(&[("MQGATE_CACHE_TTL", "2m")]))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.listen.port(), 7000);
    assert!(!c.warm_cache);
    assert_eq!(c.cache_ttl, Duration::from_secs(120));
}

#[test]
fn a_bad_value_in_the_file_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mqgate.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:7000\"\ncache_ttl = \"soon\"\n").unwrap();
    let err = Layers::defaults()
        .file(&p)
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`cache_ttl`"), "{err}");
    assert!(err.contains(&p.display().to_string()), "{err}");
    assert!(err.contains("not a duration"), "{err}");
    // A table where a value belongs: named by key and file, its content not repeated.
    std::fs::write(&p, "[ca_key_secret]\nkey = \"hunter2-hunter2\"\n").unwrap();
    let err = Layers::defaults()
        .file(&p)
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`ca_key_secret`"), "{err}");
    assert!(err.contains(&p.display().to_string()), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // An unknown key names the file.
    std::fs::write(&p, "cache_tll = \"1m\"\n").unwrap();
    let err = Layers::defaults().file(&p).unwrap_err().to_string();
    assert!(err.contains("cache_tll") && err.contains(&p.display().to_string()));
    // A missing file is an error, not an empty layer.
    let err = Layers::defaults()
        .file(&dir.path().join("absent.toml"))
        .unwrap_err();
    assert!(matches!(err, ConfigError::File { .. }), "{err}");
}

#[test]
fn a_bad_env_value_names_the_variable_and_never_echoes_a_secret() {
    let err = Layers::defaults()
        .env(env(&[("MQGATE_MQTT_MAX_PACKET_SIZE", "8")]))
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("MQGATE_MQTT_MAX_PACKET_SIZE"), "{err}");
    assert!(err.contains("`mqtt_max_packet_size`"), "{err}");
    assert!(err.contains("from 16 to 268435455"), "{err}");
    // The variable as the user spelled it.
    let err = Layers::defaults()
        .env(env(&[("MQGATE_Crl_Failure", "sometimes")]))
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("MQGATE_Crl_Failure"), "{err}");
    let err = Layers::defaults()
        .env(env(&[("MQGATE_CA_KEY_SECRET", "0123456789")]))
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("MQGATE_CA_KEY_SECRET"), "{err}");
    assert!(!err.contains("0123456789"), "{err}");
}

#[test]
fn flags_win_over_env_over_the_file_and_values_mean_the_same_in_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mqgate.toml");
    std::fs::write(
        &p,
        "listen = \"127.0.0.1:7000\"\nnegative_cache_ttl = 30\nmax_body_bytes = \"1024\"\n\
         device_rate = 2.5\nemqx_acl_in_authn = \"no\"\n",
    )
    .unwrap();
    let mut layers = Layers::defaults()
        .file(&p)
        .unwrap()
        .env(env(&[("MQGATE_LISTEN", "127.0.0.1:7001")]))
        .unwrap();
    layers
        .set("listen", "127.0.0.1:7002".into(), "--listen")
        .unwrap();
    let c = layers.build().unwrap();
    assert_eq!(c.listen.port(), 7002);
    assert_eq!(c.negative_cache_ttl, Duration::from_secs(30));
    assert_eq!(c.max_body_bytes, 1024);
    assert!(!c.emqx_acl_in_authn);
    let device = c.limits.device.expect("a device rate");
    assert_eq!(device, Rate::new(2.5, 3).unwrap());
    let err = layers
        .set("listn", "x".into(), "--listn")
        .unwrap_err()
        .to_string();
    assert!(err.contains("--listn"), "{err}");
    let mut layers = Layers::defaults();
    layers.set("listen", "nowhere".into(), "--listen").unwrap();
    let err = layers.build().err().unwrap().to_string();
    assert!(
        err.contains("--listen") && err.contains("`listen`"),
        "{err}"
    );
}

/// README's configuration table lists every key once, no other, and the defaults it shows are
/// the settings structs' own.
#[test]
fn the_readme_table_lists_every_key_with_its_default() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Configuration section");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let defaults = format!("{:?}", Settings::default());
    let mut listed = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (keys, shown) = (ticked(cells[1]), ticked(cells[2]));
        assert!(
            shown.is_empty() == (cells[2] == "—"),
            "{row}: a default in backticks, or —"
        );
        for (i, key) in keys.iter().enumerate() {
            let default = match shown.len() {
                0 => continue,
                1 => &shown[0],
                n if n == keys.len() => &shown[i],
                _ => panic!("{row}: one default, or one per key"),
            };
            let mut l = Layers::defaults();
            l.set(key, default.clone(), "README")
                .unwrap_or_else(|e| panic!("{e}"));
            let read = Settings::extract(l.figment()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format!("{read:?}"), defaults, "README's default of `{key}`");
        }
        listed.extend(keys);
    }
    let mut keys: Vec<String> = Settings::keys().into_iter().map(String::from).collect();
    keys.sort();
    listed.sort();
    assert_eq!(
        listed, keys,
        "README's keys are the settings structs' fields"
    );
}

#[test]
fn a_file_that_is_not_toml_is_refused_by_line_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mqgate.toml");
    std::fs::write(
        &p,
        "listen = \"127.0.0.1:7000\"\ninternal_secret = \"hunter2-unterminated\n",
    )
    .unwrap();
    let err = Layers::defaults().file(&p).unwrap_err().to_string();
    assert!(err.contains(&p.display().to_string()), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// Every `MQGATE_<KEY>` the project's docs, scripts, container files and code mention is a key
/// (or `MQGATE_CONFIG`), so none of them drifts from the settings structs.
#[test]
fn every_mqgate_variable_the_project_mentions_is_a_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let skip = [
        "target",
        ".git",
        "third_party",
        "tests",
        "fuzz",
        ".sqlx",
        "migrations",
    ];
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !skip.contains(&name.as_str()) {
                    pending.push(path);
                }
                continue;
            }
            if path.ends_with("src/config/tests.rs") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for var in text.split("MQGATE_").skip(1).map(|rest| {
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                rest.get(..end).unwrap_or_default().trim_end_matches('_')
            }) {
                if var.is_empty() || var == "CONFIG" {
                    continue;
                }
                let key = var.to_ascii_lowercase();
                assert!(
                    Settings::keys().contains(&key.as_str()),
                    "{}: MQGATE_{var} is no config key",
                    path.display()
                );
                seen += 1;
            }
        }
    }
    assert!(
        seen > 50,
        "the walk found the project's files ({seen} mentions)"
    );
}
