//! The audit trail: auth outcomes and admin actions land in a hash chain that `verify` checks,
//! and tampering with any entry is found.

use crate::both_stores;
use crate::helpers::{SOON, TestApp, eventually};
use mqgate::audit::chain::{self, StoredAudit};
use mqgate::registry::Store;

/// All entries, once at least `n` have been written (bounded wait for the batch writer).
async fn entries(store: &Store, n: usize) -> Vec<StoredAudit> {
    eventually(&format!("{n} audit entries written"), SOON, || async {
        let all = store.list_audit(0, 10_000).await.unwrap();
        (all.len() >= n).then_some(all)
    })
    .await
}

async fn auth_outcomes_and_admin_actions_are_chained_in_the_store(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = app.device("acme", "dev-1").await;
    app.authn("dev-1", "", &token).await;
    app.authn("dev-1", "", "mqg_wrong").await;
    app.authz("dev-1", "publish", "acme/dev-2/x").await;
    app.admin.set_enabled("acme", "dev-1", false).await.unwrap();
    let (status, _, _) = app.post("/v1/ops/acl-reload", &serde_json::json!({})).await;
    assert_eq!(status, 200);
    let all = entries(&store, 7).await;
    chain::verify(&all, chain::GENESIS.into()).expect("the chain verifies");
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    for k in ["admin", "connect", "denied"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let connects: Vec<_> = all
        .iter()
        .filter(|e| e.kind == "connect")
        .map(|e| e.detail.clone())
        .collect();
    assert!(connects.iter().any(|d| d.contains(r#""verdict":"allow""#)));
    assert!(
        connects
            .iter()
            .any(|d| d.contains(r#""cause":"bad_secret""#))
    );
    assert!(all.iter().any(|e| e.detail.contains("device.disable")));
    assert!(
        all.iter().any(|e| e.detail.contains("acl.reload")),
        "operator actions through the server too"
    );
    assert!(
        all.iter()
            .all(|e| !e.detail.contains(&token) && !e.detail.contains("mqg_wrong")),
        "no secret in the trail"
    );
}
both_stores!(
    audit_chain,
    auth_outcomes_and_admin_actions_are_chained_in_the_store
);

/// The stored trail is verified and tailed page by page (the CLI's `audit verify|tail`): with a
/// page far smaller than the trail, every entry is counted once and the tail is the newest.
async fn the_trail_is_verified_and_tailed_page_by_page(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = app.device("acme", "dev-1").await;
    for _ in 0..4 {
        app.authn("dev-1", "", &token).await;
    }
    let all = entries(&store, 5).await;
    let verified = mqgate::audit::verify_trail(&store, 2).await.unwrap();
    assert!(verified >= all.len(), "{verified} of {}", all.len());
    let tail = mqgate::audit::tail(&store, 3, 2).await.unwrap();
    let now = store.list_audit(0, 10_000).await.unwrap();
    let newest: Vec<i64> = now.iter().rev().take(3).rev().map(|e| e.id).collect();
    let tailed: Vec<i64> = tail.iter().map(|e| e.id).collect();
    assert!(
        tailed.len() == 3 && tailed.first() >= newest.first(),
        "tail {tailed:?}, newest {newest:?}"
    );
    assert!(
        tailed.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {tailed:?}"
    );
}
both_stores!(trail_pages, the_trail_is_verified_and_tailed_page_by_page);

/// A CONNECT waits while the audit trail lags (its queue over half full), so a storm faster than
/// the store is slowed to the writer's pace instead of losing audit events; it goes on as soon as
/// the writer takes events again, and gives up (bounded) if it never does. Here the writer is
/// stalled by another session holding the chain's lock, as a second replica's long write would.
#[sqlx::test(migrations = false)]
async fn connects_wait_for_a_lagging_audit_trail(pool: sqlx::PgPool) {
    use mqgate::audit::sink::AuditSink;
    use mqgate::audit::{AuditEvent, AuditRecord};

    let store = Store::Postgres(mqgate::registry::pg::PgStore::from_pool(pool.clone()));
    store.migrate().await.unwrap();
    let sink = AuditSink::spawn(store.clone());
    let event = |i: usize| AuditRecord {
        at_ms: i as i64,
        tenant: None,
        event: AuditEvent::Admin {
            action: "test.fill".into(),
            subject: format!("e{i}"),
        },
    };
    assert!(sink.room().await, "an empty queue has room");

    let mut chain = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(7345001)")
        .execute(&mut *chain)
        .await
        .unwrap();
    let n = AuditSink::ROOM_ABOVE + 600;
    for i in 0..n {
        sink.record(event(i));
    }
    assert!(
        !sink.room().await,
        "the writer is stalled: no room, and the wait ends on its own"
    );
    let waiting = tokio::spawn({
        let sink = std::sync::Arc::clone(&sink);
        async move { sink.room().await }
    });
    chain.rollback().await.unwrap();
    assert!(
        waiting.await.unwrap(),
        "room as soon as the writer takes events again"
    );
    assert_eq!(sink.dropped(), 0);
    sink.flush().await;
    assert_eq!(sink.pending(), 0);
    assert_eq!(store.list_audit(0, 100_000).await.unwrap().len(), n);
    store.close().await;
}
