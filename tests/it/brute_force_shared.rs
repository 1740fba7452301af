//! Brute-force state beyond one process (issue #11, item 2): familiar addresses and lockouts
//! survive a restart, and replicas on one PostgreSQL count failures together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::both_stores;
use crate::helpers::{TestApp, eventually, metric_reaches, until};
use mqgate::registry::Store;

const DEVICE_AT: &str = "10.0.0.7";
const STRANGER: &str = "203.0.113.9";

/// The device's familiar addresses as the registry holds them, newest first.
async fn familiar(store: &Store, client_id: &str) -> Vec<String> {
    let tenant = store.tenant_by_name("acme").await.unwrap().unwrap().id;
    let all = store.familiar_addresses(tenant, client_id).await.unwrap();
    all.into_iter().map(|(a, _)| a).collect()
}

/// Waits (5 s at most) until the background writer has stored `address` for `client_id`.
async fn written(store: &Store, client_id: &str, address: &str) -> Vec<String> {
    eventually(
        &format!("{address} written"),
        Duration::from_secs(5),
        || async {
            let now = familiar(store, client_id).await;
            now.iter().any(|a| a == address).then_some(now)
        },
    )
    .await
}

/// Waits (5 s at most) until `app` lists a lockout of `key`.
async fn locked_on(app: &TestApp, key: &str) {
    until(&format!("{key} locked"), Duration::from_secs(5), || async {
        let listed = app.get("/v1/ops/lockouts").await;
        let all = listed["lockouts"].as_array().cloned().unwrap_or_default();
        all.iter().any(|l| l["key"] == key)
    })
    .await
}

async fn result(app: &TestApp, peer: &str, secret: &str) -> String {
    let v = app.authn_from(peer, "dev-1", "", secret).await;
    v["result"].as_str().unwrap_or_default().to_string()
}

async fn after_a_restart_a_stranger_still_cannot_lock_the_device_out_of_its_usual_address(
    store: Store,
) {
    let before = TestApp::start(store.clone()).await;
    let token = before.device("acme", "dev-1").await;
    assert_eq!(result(&before, DEVICE_AT, &token).await, "allow");
    written(&store, "dev-1", DEVICE_AT).await;
    // A second server on the same database, with memory of its own: a restarted process (the
    // first one keeps running, as it holds the store this test's database closes with).
    let after = TestApp::start(store.clone()).await;
    for _ in 0..5 {
        assert_eq!(result(&after, STRANGER, "mqg_guess").await, "deny");
    }
    assert_eq!(
        result(&after, STRANGER, &token).await,
        "deny",
        "the stranger is locked out"
    );
    assert_eq!(
        result(&after, DEVICE_AT, &token).await,
        "allow",
        "the device at its usual address is not, though this process never saw it there"
    );
}
both_stores!(
    familiar_after_restart,
    after_a_restart_a_stranger_still_cannot_lock_the_device_out_of_its_usual_address
);

async fn a_lockout_outlives_a_restart(store: Store) {
    let before = TestApp::start(store.clone()).await;
    let token = before.device("acme", "dev-1").await;
    for _ in 0..5 {
        assert_eq!(result(&before, STRANGER, "mqg_guess").await, "deny");
    }
    // A second server on the same database, with memory of its own: a restarted process (the
    // first one keeps running, as it holds the store this test's database closes with).
    let after = TestApp::start(store.clone()).await;
    locked_on(&after, "dev-1").await;
    assert_eq!(
        result(&after, STRANGER, &token).await,
        "deny",
        "still locked after the restart"
    );
    after.clock.advance(15 * 60);
    assert_eq!(result(&after, STRANGER, &token).await, "allow", "it ends");
}
both_stores!(lockout_after_restart, a_lockout_outlives_a_restart);

async fn familiar_addresses_per_device_stay_at_the_bound(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = app.device("acme", "dev-1").await;
    for i in 0..12 {
        app.clock.advance(1);
        assert_eq!(result(&app, &format!("10.1.0.{i}"), &token).await, "allow");
    }
    let kept = written(&store, "dev-1", "10.1.0.11").await;
    let newest: Vec<String> = (4..12).rev().map(|i| format!("10.1.0.{i}")).collect();
    assert_eq!(kept, newest, "the 8 most recent addresses");
}
both_stores!(
    familiar_bound,
    familiar_addresses_per_device_stay_at_the_bound
);

/// A reconnect storm of devices the cache does not hold: every login waits on a fill from the
/// store and queues a familiar address nobody waits on. The writes are held back while fills keep
/// starting (the store serves the decisions first) and land once they stop.
async fn familiar_writes_wait_for_the_cache_fills_to_stop(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = app.device("acme", "dev-1").await;
    // Fills of client ids the cache does not hold, back to back from three tasks (one fill in
    // flight, the next batch waiting behind it), counted as they are asked for.
    let fills = std::sync::Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let storm: Vec<_> = (0..3)
        .map(|task| {
            let registry = std::sync::Arc::clone(app.gate.registry());
            let fills = std::sync::Arc::clone(&fills);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                while !*stopped.borrow_and_update() {
                    let n = fills.fetch_add(1, Ordering::Relaxed);
                    let ghost = registry.device(&format!("ghost-{task}-{n}")).await;
                    assert!(matches!(ghost, Ok(None)), "ghost-{task}-{n}: {ghost:?}");
                }
            })
        })
        .collect();
    assert_eq!(result(&app, DEVICE_AT, &token).await, "allow");
    metric_reaches(&app, "mqgate_familiar_writes_pending 1\n").await;
    // Its address stays unwritten while 200 more fills are asked for.
    let until = fills.load(Ordering::Relaxed) + 200;
    while fills.load(Ordering::Relaxed) < until {
        assert!(
            familiar(&store, "dev-1").await.is_empty(),
            "written while the cache was filling"
        );
    }
    stop.send(true).unwrap();
    for task in storm {
        task.await.unwrap();
    }
    assert_eq!(
        written(&store, "dev-1", DEVICE_AT).await,
        [DEVICE_AT],
        "written once the fills stopped"
    );
    metric_reaches(&app, "mqgate_familiar_writes_pending 0\n").await;
}
both_stores!(
    familiar_after_the_storm,
    familiar_writes_wait_for_the_cache_fills_to_stop
);

/// A spray of wrong secrets from many addresses does not turn every attempt into a database
/// write: past the budget (burst of twice the per-second rate; the manual clock never refills it)
/// the failures are counted in this process only, and the skipped writes are counted.
async fn a_spray_from_many_addresses_spends_only_the_write_budget(store: Store) {
    let app = TestApp::start(store).await;
    let budget = 2 * mqgate::gate::brute::SHARED_WRITES as usize;
    let attempts = budget + 150;
    for i in 0..attempts {
        let peer = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        let v = app
            .authn_from(&peer, &format!("ghost-{i}"), "", "mqg_guess")
            .await;
        assert_eq!(v["result"], "deny");
    }
    let line = format!(
        "mqgate_shared_failure_writes_skipped_total {}",
        attempts - budget
    );
    assert!(
        app.get_text("/metrics").await.contains(&line),
        "expected {line}"
    );
}
both_stores!(
    failure_write_budget,
    a_spray_from_many_addresses_spends_only_the_write_budget
);

/// Two replicas over one PostgreSQL database, each with its own memory.
#[sqlx::test(migrations = false)]
async fn two_replicas_count_failures_together_and_both_spare_the_device(pool: sqlx::PgPool) {
    let store = Store::Postgres(mqgate::registry::pg::PgStore::from_pool(pool));
    let one = TestApp::start(store.clone()).await;
    let two = TestApp::start(store.clone()).await;
    let token = one.device("acme", "dev-1").await;
    assert_eq!(result(&one, DEVICE_AT, &token).await, "allow");
    written(&store, "dev-1", DEVICE_AT).await;

    // Four failures, two on each replica: under the limit of five, on both.
    for app in [&one, &two, &one, &two] {
        assert_eq!(result(app, STRANGER, "mqg_guess").await, "deny");
    }
    for app in [&one, &two] {
        let listed = app.get("/v1/ops/lockouts").await;
        assert_eq!(listed["lockouts"], serde_json::json!([]), "{listed}");
    }
    // The fifth in total, on replica two, locks the client id on both.
    assert_eq!(result(&two, STRANGER, "mqg_guess").await, "deny");
    locked_on(&one, "dev-1").await;
    locked_on(&two, "dev-1").await;
    for app in [&one, &two] {
        assert_eq!(
            result(app, STRANGER, &token).await,
            "deny",
            "locked on every replica"
        );
        assert_eq!(
            result(app, DEVICE_AT, &token).await,
            "allow",
            "the device at its usual address gets in on every replica"
        );
    }
    store.close().await;
}

/// An operator's clear that replicas never heard of (its notice lost: committed while their
/// change listeners were down) still reaches them: the re-read once they listen again drops the
/// lockout. The clear here sends no notice at all, so only the re-read can tell them, whenever
/// they listen again.
#[sqlx::test(migrations = false)]
async fn a_clear_whose_notice_is_lost_is_taken_from_the_registry(pool: sqlx::PgPool) {
    let store = Store::Postgres(mqgate::registry::pg::PgStore::from_pool(pool.clone()));
    let one = TestApp::start(store.clone()).await;
    let two = TestApp::start(store.clone()).await;
    let token = one.device("acme", "dev-1").await;
    for app in [&one, &two, &one, &two, &one] {
        assert_eq!(result(app, STRANGER, "mqg_guess").await, "deny");
    }
    locked_on(&one, "dev-1").await;
    locked_on(&two, "dev-1").await;

    let cleared = sqlx::query("DELETE FROM auth_failures WHERE key = 'dev-1'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(cleared.rows_affected() > 0);
    for app in [&one, &two] {
        assert_eq!(result(app, STRANGER, &token).await, "deny", "not told yet");
    }
    // Each replica's listener goes (an operator's pg_terminate_backend, a cut connection).
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(cut, 2, "each replica's listener");
    for app in [&one, &two] {
        until("the lockout dropped", Duration::from_secs(10), || async {
            app.get("/v1/ops/lockouts").await["lockouts"] == serde_json::json!([])
        })
        .await;
        assert_eq!(result(app, STRANGER, &token).await, "allow");
    }
    store.close().await;
}
