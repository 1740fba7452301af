//! The contract both stores keep: the same calls give the same answers on PostgreSQL and SQLite.
//! PostgreSQL-only tests at the end check its extra fences (row-level security, NOTIFY).

use std::time::Duration;

use crate::both_stores;
use mqgate::acl::{Permission, RuleAction};
use mqgate::limit::bucket::Rate;
use mqgate::registry::{
    AddressSeen, Change, CredentialKind, CrlUpdate, NewAclRule, NewCa, NewCredential, NewDevice,
    NewDeviceCert, Store, StoreError,
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
        (c.kind, c.digest.as_text()),
        (CredentialKind::Argon2, Some("$argon2id$new"))
    );
}
both_stores!(
    contract_credentials,
    credential_expiry_only_ever_moves_earlier
);

async fn rules_load_device_first_then_tenant_and_bulk_load_matches_single(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let g = s.create_tenant("globex", NOW).await.unwrap().id;
    for c in ["d0", "d15", "e"] {
        s.create_device(g, &dev(c), NOW).await.unwrap();
    }
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
    // Warm-up reads pages after a client id, in client id order, never another tenant's.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.load_tenant_page(a, after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.device.client_id.clone());
        paged.extend(page);
    }
    assert_eq!(
        paged, single,
        "pages of two cover every device once, in order"
    );
    // Where the store reads pages side by side, pages from its starts cover every device once.
    if let Some(starts) = s.page_starts(a, 2).await.unwrap() {
        assert_eq!(starts, vec![None, Some("d2".to_string())]);
        let mut side = Vec::new();
        for after in &starts {
            side.extend(s.load_tenant_page(a, after.as_deref(), 2).await.unwrap());
        }
        assert_eq!(
            side, single,
            "pages from the starts cover every device once"
        );
    }
    let from_d1 = s.load_tenant_page(a, Some("d1"), 10).await.unwrap();
    assert_eq!(from_d1, single[1..].to_vec());
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
        let c = tokio::time::timeout(Duration::from_secs(5), next_change(&mut rx))
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

/// Turns the connection into an ordinary role (`{prefix}_{pid}`, created if missing) with
/// read and write grants on `tables` (an SQL list): row-level security applies to it, as to an
/// application role (the tests' own role is a superuser, which bypasses it). `RESET ROLE` ends it.
async fn become_ordinary_role(c: &mut sqlx::PgConnection, prefix: &str, tables: &str) {
    let role = format!("{prefix}_{}", std::process::id());
    for sql in [
        format!(
            "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {role}"),
        format!("SET ROLE {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *c)
            .await
            .unwrap();
    }
}

/// Fences the connection's session to tenant `t`, as the application does.
async fn fence(c: &mut sqlx::PgConnection, t: mqgate::registry::TenantId) {
    sqlx::query("SELECT set_config('mqgate.tenant_id', $1, false)")
        .bind(t.0.to_string())
        .execute(c)
        .await
        .unwrap();
}

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
    let mut c = pool.acquire().await.unwrap();
    become_ordinary_role(&mut c, "mqgate_app", "devices, credentials, acl_rules").await;
    assert_eq!(visible(&mut c).await, 0, "no tenant set: nothing visible");
    fence(&mut c, a).await;
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
    let got = tokio::time::timeout(Duration::from_secs(5), next_change(&mut rx))
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

/// Familiar addresses stored (any tenant, as the superuser sees them).
async fn familiar_rows(pool: &sqlx::PgPool, tenant: mqgate::registry::TenantId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM familiar_addresses WHERE tenant_id = $1")
        .bind(tenant.0)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn familiar_addresses_go_with_their_devices_under_any_fence(pool: sqlx::PgPool) {
    let s = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        pool.clone(),
    )))
    .await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    for (t, id) in [(a, "a1"), (a, "a2"), (b, "b1"), (b, "b2")] {
        let d = s.create_device(t, &dev(id), NOW).await.unwrap().id;
        s.remember_address(t, d, "10.0.0.1", 1).await.unwrap();
        s.remember_address(t, d, "10.0.0.2", 2).await.unwrap();
    }
    assert_eq!(
        (familiar_rows(&pool, a).await, familiar_rows(&pool, b).await),
        (4, 4)
    );
    // The application's path (the superuser here).
    s.remove_device(a, "a1").await.unwrap();
    assert_eq!(
        familiar_rows(&pool, a).await,
        2,
        "a1's addresses went, a2's stayed"
    );
    assert_eq!(
        s.familiar_addresses(a, "a2").await.unwrap().len(),
        2,
        "another device keeps its addresses"
    );
    // One statement over two tenants' devices (the superuser's, as an operator's SQL would be):
    // each tenant's part goes.
    sqlx::query("DELETE FROM devices WHERE client_id IN ('b1', 'b2')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        familiar_rows(&pool, b).await,
        0,
        "tenant B's addresses went"
    );
    // An ordinary role under row-level security, fenced to tenant A: its device's addresses go,
    // and the session is still fenced to A after.
    let mut c = pool.acquire().await.unwrap();
    become_ordinary_role(&mut c, "mqgate_fam", "ALL TABLES IN SCHEMA public").await;
    fence(&mut c, a).await;
    let gone = sqlx::query("DELETE FROM devices WHERE client_id = 'a2'")
        .execute(&mut *c)
        .await
        .unwrap();
    assert_eq!(gone.rows_affected(), 1);
    let fence: String = sqlx::query_scalar("SELECT current_setting('mqgate.tenant_id')")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(fence, a.0.to_string(), "the session's fence is put back");
    sqlx::raw_sql("RESET ROLE").execute(&mut *c).await.unwrap();
    drop(c);
    assert_eq!(familiar_rows(&pool, a).await, 0, "a2's addresses went");
}

fn new_ca(name: &str, fingerprint: &str, key: Option<&[u8]>) -> NewCa {
    NewCa {
        name: name.into(),
        cert_der: vec![0x30, 0x01, 0x02],
        fingerprint: fingerprint.into(),
        subject: format!("CN={name}"),
        not_after: NOW + 1000,
        key_sealed: key.map(<[u8]>::to_vec),
        crl_url: Some("http://crl.example/ca.crl".into()),
    }
}

fn new_cert(ca_id: Option<i64>, fingerprint: &str, not_after: i64) -> NewDeviceCert {
    NewDeviceCert {
        ca_id,
        fingerprint: fingerprint.into(),
        serial: format!("serial-{fingerprint}"),
        subject: format!("CN={fingerprint}"),
        not_before: NOW - 10,
        not_after,
    }
}

async fn cas_are_unique_per_tenant_and_fingerprint_and_keep_their_crl_state(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    let z = s
        .create_ca(a, &new_ca("zeta", "fp-z", Some(b"sealed-1")), NOW)
        .await
        .unwrap();
    assert_eq!(
        (
            z.tenant_id,
            z.name.as_str(),
            z.fingerprint.as_str(),
            z.subject.as_str(),
            z.not_after,
            z.key_sealed.as_deref(),
            z.crl_url.as_deref(),
            z.crl_der.as_deref(),
            z.crl_number,
            z.crl_next_update,
            z.crl_error.as_deref(),
            z.created_at,
        ),
        (
            a,
            "zeta",
            "fp-z",
            "CN=zeta",
            NOW + 1000,
            Some(&b"sealed-1"[..]),
            Some("http://crl.example/ca.crl"),
            None,
            0,
            None,
            None,
            NOW,
        )
    );
    assert_eq!(z.cert_der, [0x30, 0x01, 0x02]);
    let alpha = s
        .create_ca(a, &new_ca("alpha", "fp-a", None), NOW)
        .await
        .unwrap();
    assert!(matches!(
        s.create_ca(a, &new_ca("zeta", "fp-other", None), NOW).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_ca(b, &new_ca("elsewhere", "fp-z", None), NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let g = s
        .create_ca(b, &new_ca("zeta", "fp-g", None), NOW)
        .await
        .unwrap();
    assert_eq!(s.list_cas(a).await.unwrap(), vec![alpha.clone(), z.clone()]);
    assert_eq!(s.list_cas(b).await.unwrap(), vec![g.clone()]);

    let accepted = CrlUpdate::Accepted {
        der: b"crl-1",
        number: 7,
        next_update: NOW + 60,
    };
    s.update_ca_crl(a, z.id, CrlUpdate::Refused("bad signature"))
        .await
        .unwrap();
    s.update_ca_crl(a, z.id, accepted.clone()).await.unwrap();
    s.update_ca_crl(a, z.id, CrlUpdate::Refused("number went back"))
        .await
        .unwrap();
    let after = s.list_cas(a).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            after.crl_der.as_deref(),
            after.crl_number,
            after.crl_next_update,
            after.crl_error.as_deref()
        ),
        (
            Some(&b"crl-1"[..]),
            7,
            Some(NOW + 60),
            Some("number went back")
        ),
        "a refusal keeps the CRL held and records why"
    );
    s.update_ca_crl(a, z.id, accepted.clone()).await.unwrap();
    let after = s.list_cas(a).await.unwrap().pop().unwrap();
    assert_eq!(after.crl_error, None, "an accepted CRL clears the error");
    for (t, id) in [(b, z.id), (a, g.id), (a, i64::MAX)] {
        assert!(matches!(
            s.update_ca_crl(t, id, accepted.clone()).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.update_ca_crl(t, id, CrlUpdate::Refused("x")).await,
            Err(StoreError::NotFound(_))
        ));
    }
    assert_eq!(s.list_cas(b).await.unwrap(), vec![g.clone()]);

    s.update_ca_key(a, z.id, b"sealed-2").await.unwrap();
    s.update_ca_key(a, alpha.id, b"never").await.unwrap();
    s.update_ca_key(b, z.id, b"stolen").await.unwrap();
    let cas = s.list_cas(a).await.unwrap();
    assert_eq!(
        cas.iter()
            .map(|c| c.key_sealed.as_deref())
            .collect::<Vec<_>>(),
        vec![None, Some(&b"sealed-2"[..])],
        "only an internal CA's key is replaced, and only in its tenant"
    );
}
both_stores!(
    contract_cas,
    cas_are_unique_per_tenant_and_fingerprint_and_keep_their_crl_state
);

async fn device_certs_bind_once_list_in_order_and_revoke_at_the_first_time(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    for c in ["d1", "d2"] {
        s.create_device(a, &dev(c), NOW).await.unwrap();
    }
    s.create_device(b, &dev("b1"), NOW).await.unwrap();
    let ca = s
        .create_ca(a, &new_ca("root", "fp-ca", None), NOW)
        .await
        .unwrap();
    let late = s
        .add_device_cert(a, "d1", &new_cert(Some(ca.id), "fp-late", NOW + 900), NOW)
        .await
        .unwrap();
    assert_eq!(
        (
            late.tenant_id,
            late.client_id.as_str(),
            late.ca_id,
            late.fingerprint.as_str(),
            late.serial.as_str(),
            late.subject.as_str(),
            late.not_before,
            late.not_after,
            late.revoked_at,
            late.created_at,
        ),
        (
            a,
            "d1",
            Some(ca.id),
            "fp-late",
            "serial-fp-late",
            "CN=fp-late",
            NOW - 10,
            NOW + 900,
            None,
            NOW
        )
    );
    let d2 = s
        .add_device_cert(a, "d2", &new_cert(None, "fp-d2", NOW + 1), NOW)
        .await
        .unwrap();
    let soon = s
        .add_device_cert(a, "d1", &new_cert(Some(ca.id), "fp-soon", NOW + 100), NOW)
        .await
        .unwrap();
    assert!(matches!(
        s.add_device_cert(a, "d2", &new_cert(None, "fp-late", NOW), NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_device_cert(b, "b1", &new_cert(None, "fp-soon", NOW), NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_device_cert(b, "d1", &new_cert(None, "fp-new", NOW), NOW)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.list_device_certs(a).await.unwrap(),
        vec![soon.clone(), late.clone(), d2.clone()],
        "by client id, then validity end"
    );
    assert_eq!(s.list_device_certs(b).await.unwrap(), vec![]);

    let revoked = s.revoke_device_cert(a, "fp-soon", NOW + 5).await.unwrap();
    assert_eq!(
        revoked,
        mqgate::registry::StoredDeviceCert {
            revoked_at: Some(NOW + 5),
            ..soon.clone()
        }
    );
    let again = s.revoke_device_cert(a, "fp-soon", NOW + 50).await.unwrap();
    assert_eq!(
        again.revoked_at,
        Some(NOW + 5),
        "the first revocation stays"
    );
    for (t, fp) in [(b, "fp-late"), (a, "fp-none")] {
        assert!(matches!(
            s.revoke_device_cert(t, fp, NOW).await,
            Err(StoreError::NotFound(_))
        ));
    }
    assert_eq!(
        s.list_device_certs(a).await.unwrap(),
        vec![again, late.clone(), d2],
        "another tenant revoked nothing"
    );
    s.remove_device(a, "d2").await.unwrap();
    assert_eq!(
        s.list_device_certs(a)
            .await
            .unwrap()
            .iter()
            .map(|c| c.fingerprint.as_str())
            .collect::<Vec<_>>(),
        ["fp-soon", "fp-late"],
        "a removed device's certificates go with it"
    );
}
both_stores!(
    contract_device_certs,
    device_certs_bind_once_list_in_order_and_revoke_at_the_first_time
);

/// Reads the change feed up to the announcement of a marker write (a device created in tenant
/// `mark` with a fresh client id) and returns what came before it: the feed is ordered, so that
/// is exactly what the writes since the previous marker announced.
/// The next change on the feed, past the feed's own marks (`Change::Mark`, see
/// `CachedRegistry::settled`).
async fn next_change(rx: &mut tokio::sync::mpsc::Receiver<Change>) -> Option<Change> {
    loop {
        match rx.recv().await {
            Some(Change::Mark(_)) => continue,
            c => return c,
        }
    }
}

async fn announced_before_marker(
    s: &Store,
    rx: &mut tokio::sync::mpsc::Receiver<Change>,
    mark: mqgate::registry::TenantId,
    n: &mut u32,
) -> Vec<Change> {
    *n += 1;
    let client_id = format!("marker-{n}");
    s.create_device(mark, &dev(&client_id), NOW).await.unwrap();
    let marker = Change::Device {
        tenant: mark,
        client_id,
    };
    let mut seen = Vec::new();
    loop {
        let c = tokio::time::timeout(Duration::from_secs(5), next_change(rx))
            .await
            .expect("marker announced")
            .unwrap();
        if c == marker {
            return seen;
        }
        seen.push(c);
    }
}

async fn every_registry_write_announces_exactly_its_scope(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let mark = s.create_tenant("marks", NOW).await.unwrap().id;
    let mut rx = s
        .subscribe_changes()
        .await
        .unwrap()
        .expect("both stores have a change feed");
    let mut n = 0;
    let device = |c: &str| Change::Device {
        tenant: a,
        client_id: c.into(),
    };
    let tenant = Change::Tenant(a);
    let certs = Change::Certs(a);

    macro_rules! announces {
        ($write:expr, $want:expr) => {{
            let out = $write;
            let seen = announced_before_marker(&s, &mut rx, mark, &mut n).await;
            let want: Change = $want;
            assert!(!seen.is_empty(), "{} announced nothing", stringify!($write));
            assert!(
                seen.iter().all(|c| *c == want),
                "{} announced {seen:?}, want only {want:?}",
                stringify!($write)
            );
            out
        }};
    }

    announces!(
        s.create_device(a, &dev("dev-1"), NOW).await.unwrap(),
        device("dev-1")
    );
    announces!(
        s.set_device_enabled(a, "dev-1", false).await.unwrap(),
        device("dev-1")
    );
    let c = announces!(
        s.add_credential(a, "dev-1", &cred(CredentialKind::Token, "t", None), NOW)
            .await
            .unwrap(),
        device("dev-1")
    );
    announces!(
        s.expire_credentials(a, "dev-1", &[CredentialKind::Token], NOW + 9)
            .await
            .unwrap(),
        device("dev-1")
    );
    announces!(
        s.replace_credential_digest(a, c, CredentialKind::Argon2, "$argon2id$y")
            .await
            .unwrap(),
        device("dev-1")
    );
    let dr = announces!(
        s.add_acl_rule(a, Some("dev-1"), &rule(Permission::Allow, "d"), NOW)
            .await
            .unwrap(),
        device("dev-1")
    );
    let tr = announces!(
        s.add_acl_rule(a, None, &rule(Permission::Allow, "t"), NOW)
            .await
            .unwrap(),
        tenant.clone()
    );
    announces!(s.remove_acl_rule(a, dr).await.unwrap(), device("dev-1"));
    announces!(s.remove_acl_rule(a, tr).await.unwrap(), tenant.clone());
    announces!(
        s.set_rate_limit(a, Some("dev-1"), Rate::new(1.0, 1), NOW)
            .await
            .unwrap(),
        device("dev-1")
    );
    announces!(
        s.set_rate_limit(a, Some("dev-1"), None, NOW).await.unwrap(),
        device("dev-1")
    );
    announces!(
        s.set_rate_limit(a, None, Rate::new(2.0, 2), NOW)
            .await
            .unwrap(),
        tenant.clone()
    );
    announces!(
        s.set_rate_limit(a, None, None, NOW).await.unwrap(),
        tenant.clone()
    );
    let ca = announces!(
        s.create_ca(a, &new_ca("root", "fp-ca", Some(b"k")), NOW)
            .await
            .unwrap(),
        certs.clone()
    );
    announces!(
        s.update_ca_crl(
            a,
            ca.id,
            CrlUpdate::Accepted {
                der: b"crl",
                number: 1,
                next_update: NOW + 60
            }
        )
        .await
        .unwrap(),
        certs.clone()
    );
    announces!(
        s.update_ca_crl(a, ca.id, CrlUpdate::Refused("stale"))
            .await
            .unwrap(),
        certs.clone()
    );
    announces!(
        s.update_ca_key(a, ca.id, b"k2").await.unwrap(),
        certs.clone()
    );
    announces!(
        s.add_device_cert(a, "dev-1", &new_cert(Some(ca.id), "fp-1", NOW + 100), NOW)
            .await
            .unwrap(),
        certs.clone()
    );
    announces!(
        s.revoke_device_cert(a, "fp-1", NOW).await.unwrap(),
        certs.clone()
    );
    // Removal takes the device's certificates along: its own change, and (for the trust) the
    // tenant's certificates may be announced as well.
    s.remove_device(a, "dev-1").await.unwrap();
    let seen = announced_before_marker(&s, &mut rx, mark, &mut n).await;
    assert!(seen.contains(&device("dev-1")), "{seen:?}");
    assert!(
        seen.iter().all(|c| *c == device("dev-1") || *c == certs),
        "{seen:?}"
    );
}
both_stores!(
    contract_every_write_announced,
    every_registry_write_announces_exactly_its_scope
);

async fn familiar_addresses_are_bounded_newest_first_and_per_device(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    let d1 = s.create_device(a, &dev("d1"), NOW).await.unwrap().id;
    let d2 = s.create_device(a, &dev("d2"), NOW).await.unwrap().id;
    // No device has this id (a device deleted meanwhile is the writer's only way to send one).
    let nobody = d2 + 1000;
    // The bound, newest first: addresses 10.0.0.0..=10.0.0.9 at times 20, 1, 2, .., 9 (the first
    // is the newest of all, so the trim is by time, not by arrival).
    let keep = usize::try_from(mqgate::registry::FAMILIAR_KEEP).unwrap();
    assert_eq!(keep, mqgate::limit::lockout::FAMILIAR_MAX, "one bound");
    let stamp = |i: i64| if i == 0 { 20 } else { i };
    for i in 0..=9 {
        s.remember_address(a, d1, &format!("10.0.0.{i}"), stamp(i))
            .await
            .unwrap();
    }
    s.remember_address(a, d2, "10.0.0.99", 1).await.unwrap();
    s.remember_address(a, nobody, "10.0.0.8", 1)
        .await
        .expect("a device that is gone is ignored");
    s.remember_address(b, d1, "10.6.6.6", 99)
        .await
        .expect("another tenant's device is ignored");
    // A pair that does not match never moves another tenant's row, even for the same address.
    let far = 1 + 2 * mqgate::registry::FAMILIAR_REFRESH_MS;
    s.remember_address(b, d2, "10.0.0.99", far)
        .await
        .expect("a mismatched pair is no error");
    let newest = |n: usize| -> Vec<(String, i64)> {
        let mut all: Vec<(String, i64)> =
            (0..=9).map(|i| (format!("10.0.0.{i}"), stamp(i))).collect();
        all.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        all.truncate(n);
        all
    };
    assert_eq!(
        s.familiar_addresses(a, "d1").await.unwrap(),
        newest(keep),
        "the newest, newest first"
    );
    s.remember_address(a, d1, "10.0.0.9", 4).await.unwrap();
    assert_eq!(
        s.familiar_addresses(a, "d1").await.unwrap(),
        newest(keep),
        "an older login never moves the time back"
    );
    assert_eq!(
        s.familiar_addresses(a, "d2").await.unwrap(),
        vec![("10.0.0.99".to_string(), 1)]
    );
    assert_eq!(s.familiar_addresses(b, "d1").await.unwrap(), vec![]);
    assert_eq!(s.familiar_addresses(b, "d2").await.unwrap(), vec![]);
    s.remove_device(a, "d1").await.unwrap();
    let d1 = s.create_device(a, &dev("d1"), NOW).await.unwrap().id;
    assert_eq!(
        s.familiar_addresses(a, "d1").await.unwrap(),
        vec![],
        "gone with the device"
    );
    // A batch spans tenants and devices in one transaction; a gone device in it is skipped.
    let g1 = s.create_device(b, &dev("g1"), NOW).await.unwrap().id;
    let seen = |t, device, addr: &str, at| AddressSeen {
        tenant: t,
        device,
        address: addr.into(),
        at_ms: at,
    };
    let mut batch = vec![
        seen(a, nobody, "10.0.0.8", 2),
        seen(b, g1, "10.6.6.7", 3),
        seen(b, d1, "10.6.6.8", 4),
    ];
    // d2 (one address stored at time 1) gets `keep` more in the batch, one of them twice: the
    // stored one is the oldest and goes, the pair seen twice keeps its latest time.
    batch.push(seen(a, d2, "10.0.1.0", 50));
    for i in 1..keep {
        batch.push(seen(a, d2, &format!("10.0.1.{i}"), 10 + i as i64));
    }
    batch.push(seen(a, d2, "10.0.1.0", 5));
    s.remember_addresses(&batch).await.unwrap();
    assert_eq!(
        s.familiar_addresses(b, "g1").await.unwrap(),
        vec![("10.6.6.7".to_string(), 3)]
    );
    let mut want: Vec<(String, i64)> = (1..keep)
        .rev()
        .map(|i| (format!("10.0.1.{i}"), 10 + i as i64))
        .collect();
    want.insert(0, ("10.0.1.0".to_string(), 50));
    assert_eq!(
        s.familiar_addresses(a, "d2").await.unwrap(),
        want,
        "the bound holds within a batch; a pair seen twice keeps its latest time"
    );
    assert!(
        s.familiar_addresses(a, "d1").await.unwrap().is_empty(),
        "a login named under another tenant never reaches this tenant's device"
    );
    assert!(s.familiar_addresses(b, "d2").await.unwrap().is_empty());
    // A stored time moves only by more than the refresh granularity.
    let refresh = mqgate::registry::FAMILIAR_REFRESH_MS;
    s.remember_address(b, g1, "10.6.6.7", 3 + refresh)
        .await
        .unwrap();
    assert_eq!(
        s.familiar_addresses(b, "g1").await.unwrap(),
        vec![("10.6.6.7".to_string(), 3)],
        "within the refresh: left alone"
    );
    s.remember_address(b, g1, "10.6.6.7", 4 + refresh)
        .await
        .unwrap();
    assert_eq!(
        s.familiar_addresses(b, "g1").await.unwrap(),
        vec![("10.6.6.7".to_string(), 4 + refresh)],
        "past the refresh: moved"
    );
}
both_stores!(
    contract_familiar_addresses,
    familiar_addresses_are_bounded_newest_first_and_per_device
);

async fn failures_lock_out_once_per_window_and_clear_and_purge(store: Store) {
    use mqgate::registry::{FailureRule, LockScope, StoredLockout};
    let s = migrated(store).await;
    let rule = FailureRule {
        max: 3,
        window_ms: 1_000,
        lockout_ms: 5_000,
    };
    let t0 = 1_000_000;
    let id = LockScope::ClientId;
    assert_eq!(s.count_failure(id, "d1", t0, rule).await.unwrap(), None);
    assert_eq!(
        s.count_failure(id, "d1", t0 + 2_000, rule).await.unwrap(),
        None,
        "a failure after the window starts it again"
    );
    assert_eq!(
        s.count_failure(id, "d1", t0 + 2_100, rule).await.unwrap(),
        None
    );
    assert_eq!(
        s.count_failure(id, "d1", t0 + 2_200, rule).await.unwrap(),
        Some(t0 + 7_200)
    );
    for _ in 0..3 {
        assert_eq!(
            s.count_failure(id, "d1", t0 + 2_300, rule).await.unwrap(),
            None,
            "failures during a lockout never start another"
        );
    }
    assert_eq!(
        s.count_failure(LockScope::Address, "d1", t0, rule)
            .await
            .unwrap(),
        None,
        "scopes count apart"
    );
    let held = StoredLockout {
        scope: LockScope::Address,
        key: "10.0.0.1".into(),
        until_ms: t0 + 9_000,
    };
    s.put_lockout(&held).await.unwrap();
    s.put_lockout(&StoredLockout {
        until_ms: t0 + 100,
        ..held.clone()
    })
    .await
    .unwrap();
    let mut active = s.active_lockouts(t0 + 3_000).await.unwrap();
    active.sort_by_key(|l| l.until_ms);
    assert_eq!(
        active,
        vec![
            StoredLockout {
                scope: id,
                key: "d1".into(),
                until_ms: t0 + 7_200
            },
            held.clone()
        ],
        "a later end is kept"
    );
    assert_eq!(s.active_lockouts(t0 + 8_000).await.unwrap(), vec![held]);
    assert!(s.clear_failures("d1").await.unwrap(), "both scopes of d1");
    assert!(!s.clear_failures("d1").await.unwrap());
    assert_eq!(s.active_lockouts(t0).await.unwrap().len(), 1);
    s.count_failure(id, "d2", t0, rule).await.unwrap();
    assert_eq!(
        s.purge_failures(t0 + 500, 1_000).await.unwrap(),
        0,
        "a window still open and a lockout in force stay"
    );
    assert_eq!(s.purge_failures(t0 + 10_000, 1_000).await.unwrap(), 2);
    assert!(s.active_lockouts(0).await.unwrap().is_empty());
    assert!(!s.clear_failures("d2").await.unwrap());
}
both_stores!(
    contract_failures,
    failures_lock_out_once_per_window_and_clear_and_purge
);

async fn audit_appends_chain_in_order_and_page(store: Store) {
    use mqgate::audit::{AuditEvent, AuditRecord, chain};
    let s = migrated(store).await;
    let rec = |at_ms, tenant, client_id: &str| AuditRecord {
        at_ms,
        tenant,
        event: AuditEvent::Connect {
            client_id: client_id.into(),
            peer: "10.0.0.1:1".into(),
            verdict: "deny",
            cause: "unknown_client",
            reason: "no such device".into(),
        },
    };
    assert!(s.list_audit(0, 10).await.unwrap().is_empty());
    s.append_audit(&[rec(1, None, "a"), rec(2, Some(1), "b")])
        .await
        .unwrap();
    s.append_audit(&[]).await.unwrap();
    s.append_audit(&[rec(3, Some(2), "c")]).await.unwrap();
    let all = s.list_audit(0, 10).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|e| (e.at_ms, e.tenant, e.kind.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (1, None, "connect"),
            (2, Some(1), "connect"),
            (3, Some(2), "connect")
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[0].prev_hash, chain::GENESIS);
    let (_, detail) = rec(3, Some(2), "c").encode();
    assert_eq!(all[2].detail, detail);
    chain::verify(&all, chain::GENESIS.into()).expect("one unbroken chain across appends");
    let page = s.list_audit(all[0].id, 1).await.unwrap();
    assert_eq!(page, vec![all[1].clone()]);
    assert!(s.list_audit(all[2].id, 10).await.unwrap().is_empty());
    // A batch larger than one statement takes (SQLite: 512 + 512 + 256 + 16 + 4 rows) keeps its
    // order and its links across the statements.
    let big: Vec<AuditRecord> = (0..1300).map(|i| rec(10 + i, Some(1), "big")).collect();
    s.append_audit(&big).await.unwrap();
    let mut all = s.list_audit(0, 2000).await.unwrap();
    assert_eq!(all.len(), 1303);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    chain::verify(&all, chain::GENESIS.into()).expect("one unbroken chain through a big batch");
    let big_times: Vec<i64> = all.split_off(3).iter().map(|e| e.at_ms).collect();
    assert_eq!(
        big_times,
        (10..1310).collect::<Vec<i64>>(),
        "in the batch's order"
    );
}
both_stores!(contract_audit, audit_appends_chain_in_order_and_page);

async fn ping_answers_and_close_is_seen(store: Store) {
    let s = migrated(store).await;
    s.ping().await.unwrap();
    assert!(!s.is_closed());
    s.close().await;
    assert!(s.is_closed());
    assert!(s.ping().await.is_err(), "a closed store does not answer");
}
both_stores!(contract_ping_close, ping_answers_and_close_is_seen);

/// PostgreSQL replicas share lockouts through the feed (SQLite is one node: nothing to announce).
#[sqlx::test(migrations = false)]
async fn lockouts_that_begin_or_are_cleared_are_announced(pool: sqlx::PgPool) {
    use mqgate::registry::{FailureRule, LockScope, StoredLockout};
    let s = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        pool,
    )))
    .await;
    let mut rx = s.subscribe_changes().await.unwrap().unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), next_change(&mut rx))
            .await
            .expect("announced")
            .unwrap()
    };
    let rule = FailureRule {
        max: 1,
        window_ms: 1_000,
        lockout_ms: 5_000,
    };
    let until = s
        .count_failure(LockScope::ClientId, "d1", 10, rule)
        .await
        .unwrap()
        .unwrap();
    let lock = |scope, key: &str, until_ms| {
        Change::Lockout(StoredLockout {
            scope,
            key: key.into(),
            until_ms,
        })
    };
    assert_eq!(next().await, lock(LockScope::ClientId, "d1", until));
    let put = StoredLockout {
        scope: LockScope::Address,
        key: "10.0.0.1".into(),
        until_ms: 99,
    };
    s.put_lockout(&put).await.unwrap();
    assert_eq!(next().await, Change::Lockout(put));
    assert!(s.clear_failures("d1").await.unwrap());
    assert_eq!(next().await, lock(LockScope::ClientId, "d1", 0));
    s.close().await;
}

/// Announcements come from the tables' triggers, so a change made outside mqgate (an operator's
/// hand-written statement) reaches every replica too, and a rolled-back one never does.
#[sqlx::test(migrations = false)]
async fn a_change_written_by_hand_is_announced_and_a_rolled_back_one_is_not(pool: sqlx::PgPool) {
    let s = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        pool.clone(),
    )))
    .await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    s.create_device(a, &dev("dev-1"), NOW).await.unwrap();
    let mut rx = s.subscribe_changes().await.unwrap().unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE devices SET enabled = FALSE WHERE tenant_id = $1")
        .bind(a.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    sqlx::query("INSERT INTO acl_rules (tenant_id, permission, action, topic, created_at) VALUES ($1, 'allow', 'all', 'x', 0)")
        .bind(a.0)
        .execute(&pool)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), next_change(&mut rx))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Change::Tenant(a),
        "the rolled-back update said nothing"
    );
    s.close().await;
}

async fn the_cache_fill_carries_every_field_the_loads_do(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    s.create_device(
        a,
        &NewDevice {
            client_id: "dev-\"1\"".into(),
            username: Some("ü \\ name".into()),
        },
        NOW,
    )
    .await
    .unwrap();
    let c = "dev-\"1\"";
    s.create_device(a, &dev("plain"), NOW).await.unwrap();
    s.add_credential(a, c, &cred(CredentialKind::Token, "t2", Some(NOW + 7)), NOW)
        .await
        .unwrap();
    s.add_credential(a, c, &cred(CredentialKind::Bcrypt, "$2b$x", None), NOW)
        .await
        .unwrap();
    s.add_acl_rule(a, None, &rule(Permission::Deny, "t/#"), NOW)
        .await
        .unwrap();
    s.add_acl_rule(a, Some(c), &rule(Permission::Allow, "d/\"q\"/+"), NOW)
        .await
        .unwrap();
    s.set_rate_limit(a, Some(c), Rate::new(0.1, 3), NOW)
        .await
        .unwrap();
    s.set_rate_limit(a, None, Rate::new(2.5, 7), NOW)
        .await
        .unwrap();
    s.set_device_enabled(a, c, false).await.unwrap();
    let loaded = s.load_device(a, c).await.unwrap().unwrap();
    assert_eq!(
        (
            loaded.device.enabled,
            loaded.device.username.as_deref(),
            loaded.credentials.len(),
            loaded.rules.len(),
            loaded.device_limit,
            loaded.tenant_limit
        ),
        (
            false,
            Some("ü \\ name"),
            2,
            2,
            Rate::new(0.1, 3),
            Rate::new(2.5, 7)
        )
    );
    assert_eq!(s.load_client(c).await.unwrap().as_ref(), Some(&loaded));
    let plain = s.load_device(a, "plain").await.unwrap().unwrap();
    assert_eq!(
        (
            plain.credentials.len(),
            plain.rules.len(),
            plain.device_limit
        ),
        (0, 1, None)
    );
    let many = s
        .load_clients(&[c.to_string(), "plain".to_string()])
        .await
        .unwrap();
    assert_eq!(many.get(c), Some(&loaded));
    assert_eq!(many.get("plain"), Some(&plain));
}
both_stores!(
    contract_fill_fields,
    the_cache_fill_carries_every_field_the_loads_do
);

// The warm-up loads every device of every tenant, over many pages (2,000 each; PostgreSQL reads
// them side by side from their starts), each with its own credential.
async fn warm_up_loads_every_device(store: Store) {
    let s = migrated(store).await;
    let a = s.create_tenant("acme", NOW).await.unwrap().id;
    let b = s.create_tenant("globex", NOW).await.unwrap().id;
    let import = |prefix: &'static str, n: usize| {
        (0..n)
            .map(|i| mqgate::registry::import::NewImport {
                client_id: format!("{prefix}-{i:05}"),
                username: None,
                credential: cred(CredentialKind::Token, &format!("{prefix}-digest-{i}"), None),
                rules: Vec::new(),
            })
            .collect::<Vec<_>>()
    };
    s.import_devices(a, &import("a", 4_500), true, NOW, &|_, _| {})
        .await
        .unwrap();
    s.import_devices(b, &import("b", 3), true, NOW, &|_, _| {})
        .await
        .unwrap();
    let registry = mqgate::registry::cache::CachedRegistry::new(
        s.clone(),
        mqgate::registry::cache::CacheSettings {
            ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            capacity: 10_000,
        },
        Vec::new(),
    );
    assert_eq!(registry.warm().await.unwrap(), 4_503);
    assert_eq!(registry.cached_entries(), 4_503);
    for (id, tenant) in [
        ("a-00000", a),
        ("a-01999", a),
        ("a-02000", a),
        ("a-04499", a),
        ("b-00002", b),
    ] {
        let view = registry.device(id).await.unwrap().unwrap();
        assert_eq!(view.tenant.id, tenant, "{id}");
        assert_eq!(view.credentials.len(), 1, "{id}");
    }
    assert_eq!(
        registry.cached_entries(),
        4_503,
        "every device came from the warm cache"
    );
}

both_stores!(
    warm_up_loads_every_device_over_many_pages,
    warm_up_loads_every_device
);

// A device's rows in the tables that hang off it are reached by the device, not by a read of its
// whole tenant (migrations 0018 / 0009): each `ON DELETE CASCADE` to `devices` asks
// `WHERE device_id = ?`, and a cache fill reads a device's rate limits by device.

/// The tables whose foreign key to `devices` no index leads with (PostgreSQL).
const PG_UNINDEXED_DEVICE_KEYS: &str = "
SELECT c.conrelid::regclass::text FROM pg_constraint c
WHERE c.contype = 'f' AND c.confrelid = 'devices'::regclass
  AND NOT EXISTS (
    SELECT 1 FROM pg_index i
    WHERE i.indrelid = c.conrelid
      AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)
ORDER BY 1";

/// The same on SQLite.
const SQLITE_UNINDEXED_DEVICE_KEYS: &str = "
SELECT m.name FROM sqlite_schema m, pragma_foreign_key_list(m.name) f
WHERE m.type = 'table' AND f.\"table\" = 'devices'
  AND NOT EXISTS (
    SELECT 1 FROM pragma_index_list(m.name) il, pragma_index_info(il.name) ii
    WHERE ii.seqno = 0 AND ii.name = f.\"from\")
ORDER BY 1";

/// Seeds `n` devices of one tenant, each with a token, a rule and its own rate limit; returns the
/// tenant.
async fn fleet_with_own_rules_and_limits(s: &Store, n: usize) -> mqgate::registry::TenantId {
    let t = s.create_tenant("acme", NOW).await.unwrap().id;
    let devices: Vec<_> = (0..n)
        .map(|i| mqgate::registry::import::NewImport {
            client_id: format!("d-{i:05}"),
            username: None,
            credential: cred(CredentialKind::Token, &format!("digest-{i}"), None),
            rules: vec![rule(Permission::Allow, &format!("d/{i}/#"))],
        })
        .collect();
    s.import_devices(t, &devices, true, NOW, &|_, _| {})
        .await
        .unwrap();
    for i in [1, 2, 3] {
        let limit = Rate {
            per_sec: 5.0,
            burst: 10,
        };
        s.set_rate_limit(t, Some(&format!("d-{i:05}")), Some(limit), NOW)
            .await
            .unwrap();
    }
    t
}

/// [`fleet_with_own_rules_and_limits`] of 3,000 devices, every one with its own limit, and fresh
/// statistics: large enough that a plan reading the tenant's rows costs more than one reading the
/// device's, so the planner's pick shows which index it has.
async fn pg_fleet_with_own_limits(s: &Store, pool: &sqlx::PgPool) -> mqgate::registry::TenantId {
    let t = fleet_with_own_rules_and_limits(s, 3_000).await;
    sqlx::raw_sql(
        "INSERT INTO rate_limits (tenant_id, device_id, per_sec, burst, created_at)
         SELECT tenant_id, id, 1, 1, 0 FROM devices WHERE client_id > 'd-00003'; ANALYZE",
    )
    .execute(pool)
    .await
    .unwrap();
    t
}

#[sqlx::test(migrations = false)]
async fn a_devices_own_rows_are_reached_by_device_not_by_tenant(pool: sqlx::PgPool) {
    let s = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        pool.clone(),
    )))
    .await;
    let unindexed: Vec<String> = sqlx::query_scalar(PG_UNINDEXED_DEVICE_KEYS)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(unindexed, Vec::<String>::new(), "foreign keys to devices");

    let t = pg_fleet_with_own_limits(&s, &pool).await;
    let mut tx = pool.begin().await.unwrap();
    let before = seq_scans(&mut tx).await;
    let pages: Vec<String> =
        sqlx::query_scalar("SELECT mqgate_fill_pages(ARRAY['d-00001', 'd-02500'])")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert!(pages.concat().contains("d-02500"), "the fill found them");
    assert_eq!(
        seq_scans(&mut tx).await,
        before,
        "sequential scans of a device's tables by a fill"
    );
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    fence(&mut tx, t).await;
    let before = seq_scans(&mut tx).await;
    let gone = sqlx::query("DELETE FROM devices WHERE tenant_id = $1 AND client_id = 'd-00002'")
        .bind(t.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(gone.rows_affected(), 1);
    assert_eq!(
        seq_scans(&mut tx).await,
        before,
        "sequential scans of a device's tables by its removal"
    );
    tx.rollback().await.unwrap();
}

/// Sequential scans this backend made of the seeded tables that hang off a device (an empty one,
/// `device_certs` here, is rightly scanned: the catalog check above covers its index) and has not yet
/// reported (PostgreSQL 15 keeps earlier transactions' counts there until it reports them, at
/// most once a second: compare two readings within one transaction).
async fn seq_scans(c: &mut sqlx::PgConnection) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT t.name, COALESCE(s.seq_scan, 0)
         FROM unnest(ARRAY['credentials', 'acl_rules', 'rate_limits']) AS t (name)
         LEFT JOIN pg_stat_xact_user_tables s ON s.relname = t.name ORDER BY 1",
    )
    .fetch_all(c)
    .await
    .unwrap()
}

// Setting or clearing a limit finds the one row it replaces by the unique index, not among every
// limit of the tenant (`IS NOT DISTINCT FROM` used no index).
#[sqlx::test(migrations = false)]
async fn setting_a_limit_reads_only_the_limit_it_replaces(pool: sqlx::PgPool) {
    // Everything through one connection: its sequential scans, reported or not yet, are then all
    // there are of these tables.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let s = migrated(Store::Postgres(mqgate::registry::pg::PgStore::from_pool(
        one.clone(),
    )))
    .await;
    let t = pg_fleet_with_own_limits(&s, &one).await;
    let limit = Rate {
        per_sec: 2.0,
        burst: 4,
    };
    let listed = s.list_rate_limits(t).await.unwrap().len();
    let before = limit_scans(&one).await;
    s.set_rate_limit(t, Some("d-02000"), Some(limit), NOW)
        .await
        .unwrap();
    s.set_rate_limit(t, Some("d-02001"), None, NOW)
        .await
        .unwrap();
    s.set_rate_limit(t, None, Some(limit), NOW).await.unwrap();
    assert_eq!(
        limit_scans(&one).await,
        before,
        "sequential scans of rate_limits by setting limits"
    );
    let limits = s.list_rate_limits(t).await.unwrap();
    assert_eq!(
        limits.len(),
        listed,
        "one replaced, one cleared, the tenant's added"
    );
    assert_eq!(
        limits.first().map(|l| (&l.client_id, l.rate)),
        Some((&None, limit)),
        "the tenant's comes first"
    );
    one.close().await;
}

/// Sequential scans of `rate_limits` so far: those reported and those this connection has not
/// reported yet (at most once a second, when idle).
async fn limit_scans(one: &sqlx::PgPool) -> i64 {
    let mut c = one.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *c)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'rate_limits'), 0)
              + COALESCE((SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'rate_limits'), 0)",
    )
    .fetch_one(&mut *c)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_devices_own_rows_are_reached_by_device_not_by_tenant_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("reg.db").display());
    let s = migrated(Store::connect(&url).await.unwrap()).await;
    fleet_with_own_rules_and_limits(&s, 10).await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let unindexed: Vec<String> = sqlx::query_scalar(SQLITE_UNINDEXED_DEVICE_KEYS)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(unindexed, Vec::<String>::new(), "foreign keys to devices");
    // The fill's and the warm-up page's lookups of a device's limits (`sqlite/fill.rs`), and the
    // cascade's, each a search by device.
    for lookup in [
        "SELECT * FROM rate_limits WHERE tenant_id = ?1 AND device_id = ?2",
        "SELECT * FROM rate_limits WHERE tenant_id = ?1 AND device_id IS NULL",
        "DELETE FROM rate_limits WHERE tenant_id = ?1 AND device_id IS ?2",
        "SELECT * FROM rate_limits l WHERE l.tenant_id = ?1 AND l.device_id IN (SELECT id FROM devices WHERE client_id < ?2)",
        "DELETE FROM credentials WHERE device_id = ?1",
        "DELETE FROM acl_rules WHERE device_id = ?1",
        "DELETE FROM rate_limits WHERE device_id = ?1",
        "DELETE FROM device_certs WHERE device_id = ?1",
    ] {
        let plan = explain(&pool, lookup).await;
        let step = plan
            .iter()
            .find(|d| {
                ["rate_limits", "credentials", "acl_rules", "device_certs"]
                    .iter()
                    .any(|t| d.contains(t))
            })
            .unwrap_or_else(|| panic!("{lookup}: {plan:?}"));
        assert!(
            step.starts_with("SEARCH") && step.contains("(device_id"),
            "{lookup}: {plan:?}"
        );
    }
    pool.close().await;
}

/// SQLite's `EXPLAIN QUERY PLAN` rows' details.
async fn explain(pool: &sqlx::SqlitePool, statement: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {statement}"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>("detail"))
    .collect()
}
