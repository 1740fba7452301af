//! The contract both stores keep: the same calls give the same answers on PostgreSQL and SQLite.
//! PostgreSQL-only tests at the end check its extra fences (row-level security, NOTIFY).

use std::time::Duration;

use crate::both_stores;
use mqgate::acl::{Permission, RuleAction};
use mqgate::limit::bucket::Rate;
use mqgate::registry::{
    Change, CredentialKind, NewAclRule, NewCredential, NewDevice, Store, StoreError,
};

const NOW: i64 = 1_800_000_000;

fn dev(client_id: &str) -> NewDevice {
    NewDevice {
        client_id: client_id.into(),
        username: None,
    }
}

fn cred(kind: CredentialKind, digest: &str, expires_at: Option<i64>) -> NewCredential {
    NewCredential {
        kind,
        digest: digest.into(),
        expires_at,
    }
}

fn rule(permission: Permission, topic: &str) -> NewAclRule {
    NewAclRule {
        permission,
        action: RuleAction::All,
        topic: topic.into(),
    }
}

async fn migrated(store: Store) -> Store {
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrate is idempotent");
    store
}

async fn tenants_are_unique_and_listed_by_name(store: Store) {
    let s = migrated(store).await;
    let b = s.create_tenant("globex", NOW).await.unwrap();
    let a = s.create_tenant("acme", NOW + 1).await.unwrap();
    assert!(matches!(
        s.create_tenant("acme", NOW).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.tenant_by_name("acme").await.unwrap(), Some(a.clone()));
    assert_eq!(s.tenant_by_name("nope").await.unwrap(), None);
    assert_eq!(s.list_tenants().await.unwrap(), vec![a, b]);
}
both_stores!(contract_tenants, tenants_are_unique_and_listed_by_name);

async fn client_ids_are_unique_across_tenants_and_resolve_to_their_tenant(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    let d = s
        .create_device(
            a,
            &NewDevice {
                client_id: "dev-1".into(),
                username: Some("u".into()),
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            d.tenant_id,
            d.client_id.as_str(),
            d.username.as_deref(),
            d.enabled
        ),
        (a, "dev-1", Some("u"), true)
    );
    assert!(matches!(
        s.create_device(b, &dev("dev-1"), NOW).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_device(a, &dev("dev-1"), NOW).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.resolve_client("dev-1").await.unwrap(), Some(a));
    assert_eq!(s.resolve_client("dev-2").await.unwrap(), None);
    assert_eq!(s.list_devices(b).await.unwrap(), vec![]);
    assert_eq!(s.list_devices(a).await.unwrap(), vec![d]);
}
both_stores!(
    contract_client_ids,
    client_ids_are_unique_across_tenants_and_resolve_to_their_tenant
);

async fn a_tenant_cannot_reach_another_tenants_device(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    s.create_device(a, &dev("dev-a"), NOW).await.unwrap();
    let not_found =
        |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    not_found(s.set_device_enabled(b, "dev-a", false).await);
    not_found(s.remove_device(b, "dev-a").await);
    not_found(
        s.add_credential(b, "dev-a", &cred(CredentialKind::Token, "x", None), NOW)
            .await
            .map(|_| ()),
    );
    not_found(
        s.expire_credentials(b, "dev-a", &[CredentialKind::Token], NOW)
            .await
            .map(|_| ()),
    );
    not_found(
        s.add_acl_rule(b, Some("dev-a"), &rule(Permission::Allow, "#"), NOW)
            .await
            .map(|_| ()),
    );
    assert_eq!(s.load_device(b, "dev-a").await.unwrap(), None);
    assert!(s.load_tenant_devices(b).await.unwrap().is_empty());
    let tid = s
        .add_credential(a, "dev-a", &cred(CredentialKind::Token, "x", None), NOW)
        .await
        .unwrap();
    not_found(
        s.replace_credential_digest(b, tid, CredentialKind::Argon2, "y")
            .await,
    );
    let rid = s
        .add_acl_rule(a, Some("dev-a"), &rule(Permission::Allow, "#"), NOW)
        .await
        .unwrap();
    assert!(matches!(
        s.remove_acl_rule(b, rid).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.list_acl_rules(b).await.unwrap(), vec![]);
    assert!(
        s.load_device(a, "dev-a")
            .await
            .unwrap()
            .unwrap()
            .device
            .enabled
    );
}
both_stores!(
    contract_isolation,
    a_tenant_cannot_reach_another_tenants_device
);

async fn devices_enable_disable_and_removal_cascades(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    s.create_device(a, &dev("dev-1"), NOW).await.unwrap();
    s.add_credential(a, "dev-1", &cred(CredentialKind::Token, "d1", None), NOW)
        .await
        .unwrap();
    s.add_acl_rule(a, Some("dev-1"), &rule(Permission::Allow, "x/#"), NOW)
        .await
        .unwrap();
    s.set_device_enabled(a, "dev-1", false).await.unwrap();
    assert!(
        !s.load_device(a, "dev-1")
            .await
            .unwrap()
            .unwrap()
            .device
            .enabled
    );
    s.set_device_enabled(a, "dev-1", true).await.unwrap();
    assert!(
        s.load_device(a, "dev-1")
            .await
            .unwrap()
            .unwrap()
            .device
            .enabled
    );
    s.remove_device(a, "dev-1").await.unwrap();
    assert_eq!(s.load_device(a, "dev-1").await.unwrap(), None);
    assert_eq!(s.resolve_client("dev-1").await.unwrap(), None);
    assert_eq!(s.list_acl_rules(a).await.unwrap(), vec![]);
    let again = s.create_device(a, &dev("dev-1"), NOW).await.unwrap();
    let rec = s.load_device(a, "dev-1").await.unwrap().unwrap();
    assert_eq!(rec.device, again);
    assert!(
        rec.credentials.is_empty() && rec.rules.is_empty(),
        "nothing survives removal"
    );
}
both_stores!(
    contract_devices,
    devices_enable_disable_and_removal_cascades
);

async fn credential_expiry_only_ever_moves_earlier(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    s.create_device(a, &dev("dev-1"), NOW).await.unwrap();
    let t1 = s
        .add_credential(a, "dev-1", &cred(CredentialKind::Token, "t1", None), NOW)
        .await
        .unwrap();
    let t2 = s
        .add_credential(
            a,
            "dev-1",
            &cred(CredentialKind::Token, "t2", Some(NOW + 10)),
            NOW,
        )
        .await
        .unwrap();
    let p = s
        .add_credential(
            a,
            "dev-1",
            &cred(CredentialKind::Argon2, "$argon2id$x", None),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        s.expire_credentials(a, "dev-1", &[CredentialKind::Token], NOW + 100)
            .await
            .unwrap(),
        1,
        "t2 already ends sooner"
    );
    let exp = |rec: &mqgate::registry::DeviceRecord, id| {
        rec.credentials
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .expires_at
    };
    let rec = s.load_device(a, "dev-1").await.unwrap().unwrap();
    assert_eq!(
        (exp(&rec, t1), exp(&rec, t2), exp(&rec, p)),
        (Some(NOW + 100), Some(NOW + 10), None)
    );
    assert_eq!(
        s.expire_credentials(
            a,
            "dev-1",
            &[CredentialKind::Token, CredentialKind::Argon2],
            NOW + 5
        )
        .await
        .unwrap(),
        3
    );
    let rec = s.load_device(a, "dev-1").await.unwrap().unwrap();
    assert_eq!(
        (exp(&rec, t1), exp(&rec, t2), exp(&rec, p)),
        (Some(NOW + 5), Some(NOW + 5), Some(NOW + 5))
    );
    assert_eq!(
        rec.credentials.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![t1, t2, p],
        "in id order"
    );
    s.replace_credential_digest(a, p, CredentialKind::Argon2, "$argon2id$new")
        .await
        .unwrap();
    let rec = s.load_device(a, "dev-1").await.unwrap().unwrap();
    let c = rec.credentials.iter().find(|c| c.id == p).unwrap();
    assert_eq!(
        (c.kind, c.digest.as_str()),
        (CredentialKind::Argon2, "$argon2id$new")
    );
}
both_stores!(
    contract_credentials,
    credential_expiry_only_ever_moves_earlier
);

async fn rules_load_device_first_then_tenant_and_bulk_load_matches_single(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    for c in ["d1", "d2", "d3"] {
        s.create_device(a, &dev(c), NOW).await.unwrap();
        s.add_credential(
            a,
            c,
            &cred(CredentialKind::Token, &format!("tok-{c}"), None),
            NOW,
        )
        .await
        .unwrap();
    }
    let t1 = s
        .add_acl_rule(a, None, &rule(Permission::Deny, "t/1"), NOW)
        .await
        .unwrap();
    let r1 = s
        .add_acl_rule(a, Some("d1"), &rule(Permission::Allow, "d/1"), NOW)
        .await
        .unwrap();
    let t2 = s
        .add_acl_rule(a, None, &rule(Permission::Allow, "t/2"), NOW)
        .await
        .unwrap();
    let r2 = s
        .add_acl_rule(a, Some("d1"), &rule(Permission::Deny, "d/2"), NOW)
        .await
        .unwrap();
    s.add_acl_rule(a, Some("d2"), &rule(Permission::Allow, "other"), NOW)
        .await
        .unwrap();
    let rec = s.load_device(a, "d1").await.unwrap().unwrap();
    assert_eq!(rec.tenant_name, "acme");
    assert_eq!(
        rec.rules.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![r1, r2, t1, t2]
    );
    assert_eq!(rec.rules[0].client_id.as_deref(), Some("d1"));
    assert_eq!(rec.rules[2].client_id, None);
    let bulk = s.load_tenant_devices(a).await.unwrap();
    let mut single = Vec::new();
    for c in ["d1", "d2", "d3"] {
        single.push(s.load_device(a, c).await.unwrap().unwrap());
    }
    assert_eq!(bulk, single);
    for (c, rec) in ["d1", "d2", "d3"].iter().zip(&single) {
        assert_eq!(
            s.load_client(c).await.unwrap().as_ref(),
            Some(rec),
            "the cache fill agrees"
        );
    }
    assert_eq!(s.load_client("nobody").await.unwrap(), None);
    let ids: Vec<String> = ["d1", "d3", "nobody", "d1"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let many = s.load_clients(&ids).await.unwrap();
    assert_eq!(many.len(), 2, "unknown ids are absent, repeats collapse");
    assert_eq!(many.get("d1"), Some(&single[0]));
    assert_eq!(many.get("d3"), Some(&single[2]));
    s.set_rate_limit(a, None, Rate::new(5.0, 5), NOW)
        .await
        .unwrap();
    s.set_rate_limit(a, Some("d2"), Rate::new(1.0, 2), NOW)
        .await
        .unwrap();
    let d2 = s.load_client("d2").await.unwrap().unwrap();
    assert_eq!(
        (d2.device_limit, d2.tenant_limit),
        (Rate::new(1.0, 2), Rate::new(5.0, 5))
    );
    assert_eq!(Some(d2), s.load_device(a, "d2").await.unwrap());
    assert_eq!(
        s.remove_acl_rule(a, r1).await.unwrap().as_deref(),
        Some("d1")
    );
    assert_eq!(s.remove_acl_rule(a, t1).await.unwrap(), None);
    assert_eq!(s.list_acl_rules(a).await.unwrap().len(), 3);
}
both_stores!(
    contract_rules,
    rules_load_device_first_then_tenant_and_bulk_load_matches_single
);

async fn a_batched_fill_spans_tenants_and_keeps_each_to_its_own(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    s.create_device(a, &dev("a1"), NOW).await.unwrap();
    s.create_device(b, &dev("b1"), NOW).await.unwrap();
    s.add_credential(b, "b1", &cred(CredentialKind::Token, "tok-b1", None), NOW)
        .await
        .unwrap();
    s.add_acl_rule(a, None, &rule(Permission::Allow, "acme-only"), NOW)
        .await
        .unwrap();
    s.add_acl_rule(b, None, &rule(Permission::Allow, "globex-only"), NOW)
        .await
        .unwrap();
    let ids = vec!["a1".to_string(), "b1".to_string()];
    let many = s.load_clients(&ids).await.unwrap();
    assert_eq!(
        many.get("a1"),
        s.load_device(a, "a1").await.unwrap().as_ref()
    );
    assert_eq!(
        many.get("b1"),
        s.load_device(b, "b1").await.unwrap().as_ref()
    );
    let a1 = &many["a1"];
    assert_eq!((a1.tenant_name.as_str(), a1.credentials.len()), ("acme", 0));
    assert_eq!(
        a1.rules
            .iter()
            .map(|r| r.topic.as_str())
            .collect::<Vec<_>>(),
        ["acme-only"]
    );
}
both_stores!(
    contract_batched_fill,
    a_batched_fill_spans_tenants_and_keeps_each_to_its_own
);

async fn every_write_is_announced_on_the_change_feed(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let mut rx = s
        .subscribe_changes()
        .await
        .unwrap()
        .expect("both stores have a change feed");
    s.create_device(a, &dev("dev-1"), NOW).await.unwrap();
    s.set_device_enabled(a, "dev-1", false).await.unwrap();
    s.add_acl_rule(a, None, &rule(Permission::Allow, "x"), NOW)
        .await
        .unwrap();
    let device = Change::Device {
        tenant: a,
        client_id: "dev-1".into(),
    };
    let mut seen = Vec::new();
    while !(seen.contains(&device) && seen.contains(&Change::Tenant(a))) {
        let c = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("change announced")
            .unwrap();
        seen.push(c);
    }
}
both_stores!(
    contract_changes,
    every_write_is_announced_on_the_change_feed
);

// ---- PostgreSQL only ----

/// Rows of devices and credentials the connection can see.
async fn visible(c: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT (SELECT count(*) FROM devices) + (SELECT count(*) FROM credentials)")
        .fetch_one(c)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn row_level_security_hides_other_tenants_from_an_ordinary_role(pool: sqlx::PgPool) {
    let s = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        pool.clone(),
    )))
    .await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    s.create_device(a, &dev("dev-a"), NOW).await.unwrap();
    s.create_device(b, &dev("dev-b"), NOW).await.unwrap();
    s.add_credential(
        b,
        "dev-b",
        &cred(CredentialKind::Token, "secret-digest", None),
        NOW,
    )
    .await
    .unwrap();
    let role: String = format!("mqgate_app_{}", std::process::id());
    let mut c = pool.acquire().await.unwrap();
    for sql in [
        format!(
            "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON devices, credentials, acl_rules TO {role}"
        ),
        format!("SET ROLE {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *c)
            .await
            .unwrap();
    }
    assert_eq!(visible(&mut c).await, 0, "no tenant set: nothing visible");
    sqlx::query("SELECT set_config('mqgate.tenant_id', $1, false)")
        .bind(a.0.to_string())
        .execute(&mut *c)
        .await
        .unwrap();
    assert_eq!(
        visible(&mut c).await,
        1,
        "tenant A sees its one device and none of B's"
    );
    let forged =
        sqlx::query("INSERT INTO devices (tenant_id, client_id, created_at) VALUES ($1, 'x', 0)")
            .bind(b.0)
            .execute(&mut *c)
            .await;
    assert!(forged.is_err(), "writing into another tenant is refused");
    let stolen = sqlx::query("UPDATE credentials SET digest = 'mine'")
        .execute(&mut *c)
        .await
        .unwrap();
    assert_eq!(stolen.rows_affected(), 0);
    sqlx::raw_sql("RESET ROLE").execute(&mut *c).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_second_store_on_the_same_database_hears_each_change(pool: sqlx::PgPool) {
    let writer = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        pool.clone(),
    )))
    .await;
    let opts = (*pool.connect_options()).clone();
    let other = sqlx::PgPool::connect_with(opts).await.unwrap();
    let reader = Store::Postgres(mqgate::registry::pg::PgStore::from_pool(other));
    let mut rx = reader.subscribe_changes().await.unwrap().unwrap();
    let a = writer.create_tenant("acme", NOW).await.unwrap().id;
    writer.create_device(a, &dev("dev:1"), NOW).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Change::Device {
            tenant: a,
            client_id: "dev:1".into()
        }
    );
    reader.close().await;
}
