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
