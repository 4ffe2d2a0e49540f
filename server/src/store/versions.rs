//! Kept versions of packs (`pack_versions`) and the reads of `pack_history`: what
//! RollbackPack restores and what PackHistory shows.
//!
//! A kept version holds the pack row exactly as it was (every column, read here with
//! explicit SQL so that a column added to `packs` is not silently dropped from the
//! snapshot: add it to [`FullPackRow`] and both statements), its components and its
//! last test result, as JSON.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::{Db, StoreError, packs::ComponentRow, packs::PackWrite};

/// Every column of a `packs` row but its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct FullPackRow {
    #[sqlx(rename = "ref")]
    #[serde(rename = "ref")]
    pub pack_ref: String,
    pub label: String,
    pub description: Option<String>,
    pub version: String,
    pub conf_schema: String,
    pub config: String,
    pub meta: String,
    pub tags: String,
    pub runtime_deps: String,
    pub dependencies: String,
    pub storage_path: String,
    pub source: Option<String>,
    pub source_type: Option<String>,
    pub source_url: Option<String>,
    pub source_ref: Option<String>,
    pub registry_url: Option<String>,
    pub git_commit: Option<String>,
    pub checksum: Option<String>,
    pub checksum_verified: bool,
    pub installed_by: Option<String>,
    pub installed_at: i64,
    pub updated_at: i64,
    pub registry_trust: Option<String>,
    pub file_manifest: Option<String>,
    pub expected_checksum: Option<String>,
}

/// A component row as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromRow)]
pub struct ComponentSnapshot {
    pub kind: String,
    #[sqlx(rename = "ref")]
    #[serde(rename = "ref")]
    pub component_ref: String,
    pub label: Option<String>,
    pub description: Option<String>,
    pub file: String,
    pub definition: String,
}

/// The last test result row as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct TestSnapshot {
    pub pack_version: String,
    pub executed_at: i64,
    pub status: String,
    pub total_tests: i64,
    pub passed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub pass_rate: f64,
    pub duration_ms: i64,
    pub result: String,
}

/// A registered pack's rows, read inside a write.
#[derive(Debug, Clone, PartialEq)]
pub struct PackSnapshot {
    pub pack_id: i64,
    pub row: FullPackRow,
    pub components: Vec<ComponentSnapshot>,
    pub test_result: Option<TestSnapshot>,
}

/// One `pack_versions` row.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct KeptVersionRow {
    pub id: i64,
    pub pack_ref: String,
    pub version: String,
    pub checksum: Option<String>,
    pub source: Option<String>,
    pub files_path: String,
    pub pack_row: String,
    pub components: String,
    pub test_result: Option<String>,
    pub env_links: String,
    pub kept_at: i64,
}

/// One `pack_history` row as read back.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct HistoryRecord {
    pub id: i64,
    pub pack_ref: String,
    pub action: String,
    pub from_version: Option<String>,
    pub from_source: Option<String>,
    pub from_checksum: Option<String>,
    pub to_version: Option<String>,
    pub to_source: Option<String>,
    pub to_checksum: Option<String>,
    pub actor: Option<String>,
    pub at: i64,
    pub outcome: String,
    pub detail: Option<String>,
}

const PACK_COLUMNS: &str = "ref, label, description, version, conf_schema, config, meta, tags, \
    runtime_deps, dependencies, storage_path, source, source_type, source_url, source_ref, \
    registry_url, git_commit, checksum, checksum_verified, installed_by, installed_at, \
    updated_at, registry_trust, file_manifest, expected_checksum";
const RESTORE_PACK: &str = "UPDATE packs SET label = $2, description = $3, version = $4, \
    conf_schema = $5, config = $6, meta = $7, tags = $8, runtime_deps = $9, dependencies = $10, \
    storage_path = $11, source = $12, source_type = $13, source_url = $14, source_ref = $15, \
    registry_url = $16, git_commit = $17, checksum = $18, checksum_verified = $19, \
    installed_by = $20, installed_at = $21, updated_at = $22, registry_trust = $23, \
    file_manifest = $24, expected_checksum = $25 WHERE ref = $1 RETURNING id";
const COMPONENTS: &str = "SELECT kind, ref, label, description, file, definition \
    FROM components WHERE pack_id = $1 ORDER BY id";
/// Integer columns cast so that both backends decode them as 64-bit.
const LAST_TEST: &str = "SELECT pack_version, CAST(executed_at AS BIGINT) AS executed_at, \
    status, CAST(total_tests AS BIGINT) AS total_tests, CAST(passed AS BIGINT) AS passed, \
    CAST(failed AS BIGINT) AS failed, CAST(skipped AS BIGINT) AS skipped, pass_rate, \
    CAST(duration_ms AS BIGINT) AS duration_ms, result FROM pack_test_results \
    WHERE pack_id = $1 ORDER BY executed_at DESC, id DESC LIMIT 1";
const INSERT_TEST: &str = "INSERT INTO pack_test_results (pack_id, pack_version, executed_at, \
    status, total_tests, passed, failed, skipped, pass_rate, duration_ms, result) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const KEPT_COLUMNS: &str = "id, pack_ref, version, checksum, source, files_path, pack_row, \
    components, test_result, env_links, kept_at";
const INSERT_KEPT: &str = "INSERT INTO pack_versions (pack_ref, version, checksum, source, \
    files_path, pack_row, components, test_result, env_links, kept_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";

/// Component kinds as the `components` table allows them (its CHECK), for turning a
/// snapshot's kind back into the `'static` name [`ComponentRow`] carries.
const KINDS: [&str; 10] = [
    "action",
    "sensor",
    "trigger",
    "rule",
    "workflow",
    "policy",
    "runtime",
    "permission_set",
    "queue",
    "alias",
];

impl ComponentSnapshot {
    /// The row to write back; `None` for a kind the table does not know.
    pub fn to_row(&self) -> Option<ComponentRow> {
        let kind = KINDS.into_iter().find(|k| *k == self.kind)?;
        Some(ComponentRow {
            kind,
            r#ref: self.component_ref.clone(),
            label: self.label.clone(),
            description: self.description.clone(),
            file: self.file.clone(),
            definition: self.definition.clone(),
        })
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

impl PackWrite {
    /// The registered pack `pack_ref` (row, components, last test result), read inside
    /// this write.
    pub async fn pack_snapshot(
        &mut self,
        pack_ref: &str,
    ) -> Result<Option<PackSnapshot>, StoreError> {
        let sql = format!("SELECT id, {PACK_COLUMNS} FROM packs WHERE ref = $1");
        let found: Option<(i64, FullPackRow)> = on_tx!(self, tx => {
            let row = sqlx::query(&sql).bind(pack_ref).fetch_optional(&mut **tx).await?;
            match row {
                Some(row) => {
                    use sqlx::Row as _;
                    Some((row.try_get::<i64, _>("id")?, FullPackRow::from_row(&row)?))
                }
                None => None,
            }
        });
        let Some((pack_id, row)) = found else {
            return Ok(None);
        };
        let components: Vec<ComponentSnapshot> = on_tx!(self, tx => sqlx::query_as(COMPONENTS)
            .bind(pack_id)
            .fetch_all(&mut **tx)
            .await?);
        let test_result: Option<TestSnapshot> = on_tx!(self, tx => sqlx::query_as(LAST_TEST)
            .bind(pack_id)
            .fetch_optional(&mut **tx)
            .await?);
        Ok(Some(PackSnapshot {
            pack_id,
            row,
            components,
            test_result,
        }))
    }

    /// Records `snapshot` as a kept version whose files are at `files_path` and whose
    /// environment links were `env_links` (JSON).
    pub async fn insert_kept_version(
        &mut self,
        snapshot: &PackSnapshot,
        files_path: &str,
        env_links: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let row = &snapshot.row;
        let test_result = snapshot.test_result.as_ref().map(to_json);
        let id: i64 = on_tx!(self, tx => sqlx::query_scalar(INSERT_KEPT)
            .bind(&row.pack_ref)
            .bind(&row.version)
            .bind(&row.checksum)
            .bind(&row.source)
            .bind(files_path)
            .bind(to_json(row))
            .bind(to_json(&snapshot.components))
            .bind(&test_result)
            .bind(env_links)
            .bind(now_ms)
            .fetch_one(&mut **tx)
            .await?);
        Ok(id)
    }

    /// The kept versions of `pack_ref`, most recently kept first.
    pub async fn kept_versions(
        &mut self,
        pack_ref: &str,
    ) -> Result<Vec<KeptVersionRow>, StoreError> {
        let sql = format!(
            "SELECT {KEPT_COLUMNS} FROM pack_versions WHERE pack_ref = $1 ORDER BY id DESC"
        );
        Ok(on_tx!(self, tx => sqlx::query_as(&sql)
            .bind(pack_ref)
            .fetch_all(&mut **tx)
            .await?))
    }

    pub async fn delete_kept_version(&mut self, id: i64) -> Result<(), StoreError> {
        on_tx!(self, tx => sqlx::query("DELETE FROM pack_versions WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Deletes the kept versions of `pack_ref` beyond the `keep` most recent and
    /// returns them (their directories are the caller's to delete after commit).
    pub async fn prune_kept_versions(
        &mut self,
        pack_ref: &str,
        keep: usize,
    ) -> Result<Vec<KeptVersionRow>, StoreError> {
        let kept = self.kept_versions(pack_ref).await?;
        let pruned: Vec<KeptVersionRow> = kept.into_iter().skip(keep).collect();
        for row in &pruned {
            self.delete_kept_version(row.id).await?;
        }
        Ok(pruned)
    }

    /// Writes `row` back over the registered row of its ref (same id, so nothing that
    /// points at the pack changes); `updated_at` becomes `now_ms`. Returns the id.
    pub async fn restore_pack_row(
        &mut self,
        row: &FullPackRow,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(on_tx!(self, tx => sqlx::query_scalar(RESTORE_PACK)
            .bind(&row.pack_ref)
            .bind(&row.label)
            .bind(&row.description)
            .bind(&row.version)
            .bind(&row.conf_schema)
            .bind(&row.config)
            .bind(&row.meta)
            .bind(&row.tags)
            .bind(&row.runtime_deps)
            .bind(&row.dependencies)
            .bind(&row.storage_path)
            .bind(&row.source)
            .bind(&row.source_type)
            .bind(&row.source_url)
            .bind(&row.source_ref)
            .bind(&row.registry_url)
            .bind(&row.git_commit)
            .bind(&row.checksum)
            .bind(row.checksum_verified)
            .bind(&row.installed_by)
            .bind(row.installed_at)
            .bind(now_ms)
            .bind(&row.registry_trust)
            .bind(&row.file_manifest)
            .bind(&row.expected_checksum)
            .fetch_optional(&mut **tx)
            .await?))
    }

    /// Makes `test` the pack's only test result (the results it replaces belong to
    /// the version being put aside, whose last one its kept version holds).
    pub async fn restore_test_result(
        &mut self,
        pack_id: i64,
        test: Option<&TestSnapshot>,
    ) -> Result<(), StoreError> {
        on_tx!(self, tx => sqlx::query("DELETE FROM pack_test_results WHERE pack_id = $1")
            .bind(pack_id)
            .execute(&mut **tx)
            .await
            .map(|_| ())?);
        if let Some(t) = test {
            on_tx!(self, tx => sqlx::query(INSERT_TEST)
                .bind(pack_id)
                .bind(&t.pack_version)
                .bind(t.executed_at)
                .bind(&t.status)
                .bind(t.total_tests)
                .bind(t.passed)
                .bind(t.failed)
                .bind(t.skipped)
                .bind(t.pass_rate)
                .bind(t.duration_ms)
                .bind(&t.result)
                .execute(&mut **tx)
                .await
                .map(|_| ())?);
        }
        Ok(())
    }
}

impl Db {
    /// The kept versions of `pack_ref`, most recently kept first.
    pub async fn kept_versions(&self, pack_ref: &str) -> Result<Vec<KeptVersionRow>, StoreError> {
        let sql = format!(
            "SELECT {KEPT_COLUMNS} FROM pack_versions WHERE pack_ref = $1 ORDER BY id DESC"
        );
        Ok(on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(pack_ref)
            .fetch_all(pool)
            .await?))
    }

    /// The newest `limit` history rows of `pack_ref`, newest first.
    pub async fn pack_history(
        &self,
        pack_ref: &str,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        const SQL: &str = "SELECT id, pack_ref, action, from_version, from_source, \
            from_checksum, to_version, to_source, to_checksum, actor, at, outcome, detail \
            FROM pack_history WHERE pack_ref = $1 ORDER BY id DESC LIMIT $2";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(pack_ref)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?))
    }
}
