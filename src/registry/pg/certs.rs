//! Certificate authorities and device certificates in PostgreSQL, fenced by tenant; every write
//! announces `c:<tenant>` (from the tables' triggers) so each replica reloads its trust.

use super::*;
use crate::registry::rows::{CaRow, CertRow};

impl PgStore {
    pub(crate) async fn create_ca(
        &self,
        t: TenantId,
        c: &NewCa,
        now: i64,
    ) -> StoreResult<StoredCa> {
        let mut tx = self.scoped(t).await?;
        let row = sqlx::query_as!(
            CaRow,
            "INSERT INTO cas (tenant_id, name, cert_der, fingerprint, subject, not_after, key_sealed, crl_url, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id, tenant_id, name, cert_der, fingerprint, subject, not_after, key_sealed, crl_url, crl_der,
                       crl_number, crl_next_update, crl_error, created_at",
            t.0,
            c.name,
            c.cert_der,
            c.fingerprint,
            c.subject,
            c.not_after,
            c.key_sealed,
            c.crl_url,
            now
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| rows::conflict(e, || format!("CA {} (or this certificate)", c.name)))?;
        tx.commit().await?;
        Ok(row.into())
    }

    pub(crate) async fn list_cas(&self, t: TenantId) -> StoreResult<Vec<StoredCa>> {
        let mut tx = self.scoped(t).await?;
        let rows = sqlx::query_as!(
            CaRow,
            "SELECT id, tenant_id, name, cert_der, fingerprint, subject, not_after, key_sealed, crl_url, crl_der,
                    crl_number, crl_next_update, crl_error, created_at
             FROM cas WHERE tenant_id = $1 ORDER BY name",
            t.0
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn update_ca_key(
        &self,
        t: TenantId,
        ca_id: i64,
        sealed: &[u8],
    ) -> StoreResult<()> {
        let mut tx = self.scoped(t).await?;
        sqlx::query!(
            "UPDATE cas SET key_sealed = $1 WHERE tenant_id = $2 AND id = $3 AND key_sealed IS NOT NULL",
            sealed,
            t.0,
            ca_id
        )
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    pub(crate) async fn update_ca_crl(
        &self,
        t: TenantId,
        ca_id: i64,
        update: CrlUpdate<'_>,
    ) -> StoreResult<()> {
        let mut tx = self.scoped(t).await?;
        let done = match update {
            CrlUpdate::Accepted {
                der,
                number,
                next_update,
            } => sqlx::query!(
                "UPDATE cas SET crl_der = $1, crl_number = $2, crl_next_update = $3, crl_error = NULL
                 WHERE tenant_id = $4 AND id = $5",
                der,
                number,
                next_update,
                t.0,
                ca_id
            )
            .execute(&mut *tx)
            .await?,
            CrlUpdate::Refused(reason) => sqlx::query!(
                "UPDATE cas SET crl_error = $1 WHERE tenant_id = $2 AND id = $3",
                reason,
                t.0,
                ca_id
            )
            .execute(&mut *tx)
            .await?,
        };
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("CA {ca_id}")));
        }
        Ok(tx.commit().await?)
    }

    pub(crate) async fn add_device_cert(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewDeviceCert,
        now: i64,
    ) -> StoreResult<StoredDeviceCert> {
        let mut tx = self.scoped(t).await?;
        let device_id = Self::device_id(&mut tx, t, client_id).await?;
        let row = sqlx::query_as!(
            CertRow,
            r#"INSERT INTO device_certs (tenant_id, device_id, ca_id, fingerprint, serial, subject, not_before, not_after, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               RETURNING id, tenant_id, $10::TEXT AS "client_id!", ca_id, fingerprint, serial, subject, not_before, not_after,
                         revoked_at, created_at"#,
            t.0,
            device_id,
            c.ca_id,
            c.fingerprint,
            c.serial,
            c.subject,
            c.not_before,
            c.not_after,
            now,
            client_id
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| rows::conflict(e, || format!("certificate {}", c.fingerprint)))?;
        tx.commit().await?;
        Ok(row.into())
    }

    pub(crate) async fn list_device_certs(
        &self,
        t: TenantId,
    ) -> StoreResult<Vec<StoredDeviceCert>> {
        let mut tx = self.scoped(t).await?;
        let rows = sqlx::query_as!(
            CertRow,
            "SELECT c.id, c.tenant_id, d.client_id, c.ca_id, c.fingerprint, c.serial, c.subject, c.not_before,
                    c.not_after, c.revoked_at, c.created_at
             FROM device_certs c JOIN devices d ON d.id = c.device_id
             WHERE c.tenant_id = $1 ORDER BY d.client_id, c.not_after, c.id",
            t.0
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn revoke_device_cert(
        &self,
        t: TenantId,
        fingerprint: &str,
        at: i64,
    ) -> StoreResult<StoredDeviceCert> {
        let mut tx = self.scoped(t).await?;
        let row = sqlx::query_as!(
            CertRow,
            r#"UPDATE device_certs c SET revoked_at = COALESCE(c.revoked_at, $1)
               FROM devices d
               WHERE d.id = c.device_id AND c.tenant_id = $2 AND c.fingerprint = $3
               RETURNING c.id, c.tenant_id, d.client_id, c.ca_id, c.fingerprint, c.serial, c.subject, c.not_before,
                         c.not_after, c.revoked_at, c.created_at"#,
            at,
            t.0,
            fingerprint
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("certificate {fingerprint}")))?;
        tx.commit().await?;
        Ok(row.into())
    }
}
