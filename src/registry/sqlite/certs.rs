//! Certificate authorities and device certificates in SQLite (triggers feed the change table).

use super::*;

macro_rules! ca_cols {
    () => {
        "id, tenant_id, name, cert_der, fingerprint, subject, not_after, key_sealed, crl_url, crl_der, \
         crl_number, crl_next_update, crl_error, created_at"
    };
}

/// Device certificate columns over `device_certs c JOIN devices d`, followed by `filter`.
macro_rules! cert_select {
    ($filter:literal) => {
        concat!(
            "SELECT c.id, c.tenant_id, d.client_id, c.ca_id, c.fingerprint, c.serial, c.subject, \
             c.not_before, c.not_after, c.revoked_at, c.created_at \
             FROM device_certs c JOIN devices d ON d.id = c.device_id WHERE c.tenant_id = ? AND ",
            $filter
        )
    };
}

fn ca(r: &SqliteRow) -> Result<StoredCa, sqlx::Error> {
    rows::CaRow::from_row(r).map(StoredCa::from)
}

fn device_cert(r: &SqliteRow) -> Result<StoredDeviceCert, sqlx::Error> {
    rows::CertRow::from_row(r).map(StoredDeviceCert::from)
}

impl SqliteStore {
    pub(crate) async fn create_ca(
        &self,
        t: TenantId,
        c: &NewCa,
        now: i64,
    ) -> StoreResult<StoredCa> {
        let sql = concat!(
            "INSERT INTO cas (tenant_id, name, cert_der, fingerprint, subject, not_after, key_sealed, crl_url, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING ",
            ca_cols!()
        );
        let r = sqlx::query(sql)
            .bind(t.0)
            .bind(&c.name)
            .bind(&c.cert_der)
            .bind(&c.fingerprint)
            .bind(&c.subject)
            .bind(c.not_after)
            .bind(&c.key_sealed)
            .bind(&c.crl_url)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| rows::conflict(e, || format!("CA {} (or this certificate)", c.name)))?;
        Ok(ca(&r)?)
    }

    pub(crate) async fn list_cas(&self, t: TenantId) -> StoreResult<Vec<StoredCa>> {
        let sql = concat!(
            "SELECT ",
            ca_cols!(),
            " FROM cas WHERE tenant_id = ? ORDER BY name"
        );
        let rs = sqlx::query(sql).bind(t.0).fetch_all(&self.pool).await?;
        Ok(rs.iter().map(ca).collect::<Result<_, _>>()?)
    }

    pub(crate) async fn update_ca_key(
        &self,
        t: TenantId,
        ca_id: i64,
        sealed: &[u8],
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE cas SET key_sealed = ? WHERE tenant_id = ? AND id = ? AND key_sealed IS NOT NULL",
        )
        .bind(sealed)
        .bind(t.0)
        .bind(ca_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn update_ca_crl(
        &self,
        t: TenantId,
        ca_id: i64,
        update: CrlUpdate<'_>,
    ) -> StoreResult<()> {
        let done = match update {
            CrlUpdate::Accepted {
                der,
                number,
                next_update,
            } => sqlx::query(
                "UPDATE cas SET crl_der = ?, crl_number = ?, crl_next_update = ?, crl_error = NULL \
                 WHERE tenant_id = ? AND id = ?",
            )
            .bind(der)
            .bind(number)
            .bind(next_update)
            .bind(t.0)
            .bind(ca_id)
            .execute(&self.pool)
            .await?,
            CrlUpdate::Refused(reason) => {
                sqlx::query("UPDATE cas SET crl_error = ? WHERE tenant_id = ? AND id = ?")
                    .bind(reason)
                    .bind(t.0)
                    .bind(ca_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("CA {ca_id}")));
        }
        Ok(())
    }

    pub(crate) async fn add_device_cert(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewDeviceCert,
        now: i64,
    ) -> StoreResult<StoredDeviceCert> {
        let mut tx = self.write().await?;
        let device_id = Self::device_id(&mut tx, t, client_id).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO device_certs (tenant_id, device_id, ca_id, fingerprint, serial, subject, not_before, not_after, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(t.0)
        .bind(device_id)
        .bind(c.ca_id)
        .bind(&c.fingerprint)
        .bind(&c.serial)
        .bind(&c.subject)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| rows::conflict(e, || format!("certificate {}", c.fingerprint)))?;
        let r = sqlx::query(cert_select!("c.id = ?"))
            .bind(t.0)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(device_cert(&r)?)
    }

    pub(crate) async fn list_device_certs(
        &self,
        t: TenantId,
    ) -> StoreResult<Vec<StoredDeviceCert>> {
        let rs = sqlx::query(cert_select!("1 ORDER BY d.client_id, c.not_after, c.id"))
            .bind(t.0)
            .fetch_all(&self.pool)
            .await?;
        Ok(rs.iter().map(device_cert).collect::<Result<_, _>>()?)
    }

    pub(crate) async fn revoke_device_cert(
        &self,
        t: TenantId,
        fingerprint: &str,
        at: i64,
    ) -> StoreResult<StoredDeviceCert> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE device_certs SET revoked_at = COALESCE(revoked_at, ?) WHERE tenant_id = ? AND fingerprint = ?",
        )
        .bind(at)
        .bind(t.0)
        .bind(fingerprint)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(cert_select!("c.fingerprint = ?"))
            .bind(t.0)
            .bind(fingerprint)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("certificate {fingerprint}")))?;
        tx.commit().await?;
        Ok(device_cert(&r)?)
    }
}
