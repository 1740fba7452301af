//! The broker benchmark's reference: rumqttd 0.20 alone, its own MQTT 3.1.1 listener, no
//! authentication and no ACL, with the same router settings mqgate's embedded broker uses.
//!
//! `cargo run --release --example rumqttd_plain -- 127.0.0.1:18830`

use std::collections::HashMap;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18830".into())
        .parse()?;
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        },
    };
    let config = Config {
        router: RouterConfig {
            max_connections: 10_001,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    };
    Broker::new(config).start()?;
    Ok(())
}
