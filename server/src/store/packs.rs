//! Writing a registered pack: one transaction per pack, holding that pack's write lock.
//!
//! The lock is what makes racing registrations of one ref end with one version whose
//! files and rows agree: the caller swaps the pack's files while holding it and
//! commits (or puts the files back) before releasing it.
//! - PostgreSQL: `pg_advisory_xact_lock` on the ref's hash, so it also holds across
//!   server processes sharing the database.
//! - SQLite: `BEGIN IMMEDIATE` takes the database write lock up front (other writers,
//!   in this process or another, wait on the busy timeout).

use std::collections::HashSet;

use sqlx::{Postgres, Row, Sqlite, Transaction};

use super::{Db, StoreError};

/// The pack row, as registration writes it. JSON columns are already serialized.
#[derive(Debug, Clone, Default)]
pub struct PackRow {
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
    /// `verified` / `unverified`: the trust of the registry index it came from.
    pub registry_trust: Option<String>,
    pub installed_by: Option<String>,
    /// JSON object of relative path -> hex SHA-256 of the content, for VerifyPacks;
    /// `None` when not recorded.
    pub file_manifest: Option<String>,
    /// What the source promised (a registry index entry's checksum), when it did.
    pub expected_checksum: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ComponentRow {
    pub kind: &'static str,
    pub r#ref: String,
    pub label: Option<String>,
    pub description: Option<String>,
    pub file: String,
    pub definition: String,
}

#[derive(Debug, Clone)]
pub struct TestRow {
    pub pack_version: String,
    pub status: String,
    pub total_tests: i64,
    pub passed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub pass_rate: f64,
    pub duration_ms: i64,
    pub result: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("pack '{pack_ref}' is already registered (version {version}); use force to replace it")]
    AlreadyRegistered { pack_ref: String, version: String },
    #[error("{kind} '{component}' belongs to pack '{owner}'; it is not overwritten")]
    ComponentConflict {
        kind: String,
        component: String,
        owner: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Store(StoreError::Sqlx(e))
    }
}

/// An open write of one pack. Dropped without `commit`, it rolls back.
pub enum PackWrite {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

const EXISTING: &str = "SELECT id, version FROM packs WHERE ref = $1";
const INSERT_PACK: &str = "INSERT INTO packs (ref, label, description, version, conf_schema, config, \
    meta, tags, runtime_deps, dependencies, storage_path, source, source_type, source_url, \
    source_ref, registry_url, git_commit, checksum, checksum_verified, installed_by, \
    installed_at, updated_at, registry_trust, file_manifest, expected_checksum) VALUES ($1, $2, \
    $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $21, \
    $22, $23, $24) RETURNING id";
const UPDATE_PACK: &str = "UPDATE packs SET label = $2, description = $3, version = $4, \
    conf_schema = $5, config = $6, meta = $7, tags = $8, runtime_deps = $9, dependencies = $10, \
    storage_path = $11, source = $12, source_type = $13, source_url = $14, source_ref = $15, \
    registry_url = $16, git_commit = $17, checksum = $18, checksum_verified = $19, \
    installed_by = $20, installed_at = $21, updated_at = $21, registry_trust = $22, \
    file_manifest = $23, expected_checksum = $24 WHERE ref = $1 RETURNING id";
const DELETE_COMPONENTS: &str = "DELETE FROM components WHERE pack_id = $1";
/// `(kind, ref, owning pack)` of the components of other packs than `$1` that have one
/// of `rows` given `(kind, ref)` pairs (`$2, $3`, `$4, $5`, …). Exact pairs, so each is
/// one probe of the `(kind, ref)` unique index on both backends (a `LIKE` on the ref
/// prefix scanned the whole table for every registered pack).
fn owners_sql(rows: usize) -> String {
    let mut sql = String::from(
        "SELECT c.kind, c.ref, p.ref FROM components c JOIN packs p ON p.id = c.pack_id \
         WHERE c.pack_id <> $1 AND (",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(" OR ");
        }
        let first = row * 2 + 2;
        sql.push_str(&format!("(c.kind = ${first} AND c.ref = ${})", first + 1));
    }
    sql.push(')');
    sql
}
/// Pairs looked up per statement by [`owners_sql`].
const OWNERS_PER_QUERY: usize = 50;
/// `INSERT INTO components … VALUES ($1..$7), ($8..$14), …` for `rows` rows.
fn insert_components_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO components (pack_id, kind, ref, label, description, file, definition) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let first = row * 7 + 1;
        let params: Vec<String> = (first..first + 7).map(|n| format!("${n}")).collect();
        sql.push('(');
        sql.push_str(&params.join(", "));
        sql.push(')');
    }
    sql
}
const INSERT_TEST: &str = "INSERT INTO pack_test_results (pack_id, pack_version, executed_at, \
    status, total_tests, passed, failed, skipped, pass_rate, duration_ms, result) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

impl Db {
    /// Begins the write of the packs `pack_refs` (one transaction for all of them),
    /// waiting for any other writer of any of them. PostgreSQL's locks are taken in
    /// sorted order, so two writes of overlapping sets cannot deadlock.
    pub async fn begin_packs_write(&self, pack_refs: &[&str]) -> Result<PackWrite, StoreError> {
        match self {
            Db::Sqlite(pool) => Ok(PackWrite::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)),
            Db::Postgres(pool) => {
                let mut refs = pack_refs.to_vec();
                refs.sort_unstable();
                refs.dedup();
                let mut tx = pool.begin().await?;
                for pack_ref in refs {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                        .bind(format!("attune-packs:{pack_ref}"))
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(PackWrite::Postgres(tx))
            }
        }
    }

    /// `(kind, ref)` of every registered component, for reference checks.
    pub async fn component_refs(&self) -> Result<HashSet<(String, String)>, StoreError> {
        const SQL: &str = "SELECT kind, ref FROM components";
        let rows: Vec<(String, String)> =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?);
        Ok(rows.into_iter().collect())
    }
}

impl PackWrite {
    /// The registered id and version of `pack_ref`, if any.
    pub async fn existing(&mut self, pack_ref: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = on_tx!(self, tx => sqlx::query(EXISTING)
            .bind(pack_ref)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1))));
        Ok(row)
    }

    /// Inserts the pack, or replaces the registered one when `replace`.
    pub async fn upsert_pack(
        &mut self,
        row: &PackRow,
        replace: bool,
        now_ms: i64,
    ) -> Result<i64, WriteError> {
        if let Some((_, version)) = self.existing(&row.pack_ref).await? {
            if !replace {
                return Err(WriteError::AlreadyRegistered {
                    pack_ref: row.pack_ref.clone(),
                    version,
                });
            }
            return Ok(self.bind_pack(UPDATE_PACK, row, now_ms).await?);
        }
        Ok(self.bind_pack(INSERT_PACK, row, now_ms).await?)
    }

    async fn bind_pack(
        &mut self,
        sql: &'static str,
        row: &PackRow,
        now_ms: i64,
    ) -> Result<i64, sqlx::Error> {
        macro_rules! bound {
            ($q:expr) => {
                $q.bind(&row.pack_ref)
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
                    .bind(now_ms)
                    .bind(&row.registry_trust)
                    .bind(&row.file_manifest)
                    .bind(&row.expected_checksum)
            };
        }
        on_tx!(self, tx => bound!(sqlx::query_scalar::<_, i64>(sql)).fetch_one(&mut **tx).await)
    }

    /// Replaces the pack's components: those that disappeared are removed. A
    /// component ref held by another pack is a conflict (nothing is overwritten).
    pub async fn replace_components(
        &mut self,
        pack_id: i64,
        rows: &[ComponentRow],
    ) -> Result<(), WriteError> {
        let mut others: Vec<(String, String, String)> = Vec::new();
        for chunk in rows.chunks(OWNERS_PER_QUERY) {
            let sql = owners_sql(chunk.len());
            macro_rules! bound {
                ($q:expr) => {{
                    let mut q = $q.bind(pack_id);
                    for c in chunk {
                        q = q.bind(c.kind).bind(&c.r#ref);
                    }
                    q
                }};
            }
            others.extend(
                on_tx!(self, tx => bound!(sqlx::query_as::<_, (String, String, String)>(&sql))
                .fetch_all(&mut **tx)
                .await?),
            );
        }
        let taken: std::collections::HashMap<(&str, &str), &str> = others
            .iter()
            .map(|(k, r, owner)| ((k.as_str(), r.as_str()), owner.as_str()))
            .collect();
        if let Some(row) = rows
            .iter()
            .find(|c| taken.contains_key(&(c.kind, c.r#ref.as_str())))
        {
            return Err(WriteError::ComponentConflict {
                kind: row.kind.to_string(),
                component: row.r#ref.clone(),
                owner: taken[&(row.kind, row.r#ref.as_str())].to_string(),
            });
        }
        on_tx!(self, tx => sqlx::query(DELETE_COMPONENTS).bind(pack_id).execute(&mut **tx).await.map(|_| ())?);
        // Multi-row inserts: one round trip per 100 components, not one per component.
        for chunk in rows.chunks(100) {
            let sql = insert_components_sql(chunk.len());
            macro_rules! bound {
                ($q:expr) => {{
                    let mut q = $q;
                    for c in chunk {
                        q = q
                            .bind(pack_id)
                            .bind(c.kind)
                            .bind(&c.r#ref)
                            .bind(&c.label)
                            .bind(&c.description)
                            .bind(&c.file)
                            .bind(&c.definition);
                    }
                    q
                }};
            }
            on_tx!(self, tx => bound!(sqlx::query(&sql)).execute(&mut **tx).await.map(|_| ())?);
        }
        Ok(())
    }

    pub async fn insert_test_result(
        &mut self,
        pack_id: i64,
        row: &TestRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_tx!(self, tx => sqlx::query(INSERT_TEST)
            .bind(pack_id)
            .bind(&row.pack_version)
            .bind(now_ms)
            .bind(&row.status)
            .bind(row.total_tests)
            .bind(row.passed)
            .bind(row.failed)
            .bind(row.skipped)
            .bind(row.pass_rate)
            .bind(row.duration_ms)
            .bind(&row.result)
            .execute(&mut **tx)
            .await
            .map(|_| ())?);
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        on_tx!(self, tx => tx.commit().await?);
        // Event readers of this process look at once (see `events::outbox_committed`).
        crate::events::outbox_committed();
        Ok(())
    }

    /// Ends the transaction without writing, now. Dropping it would only queue the
    /// rollback, leaving the write lock (SQLite) or the advisory locks (PostgreSQL)
    /// held by an idle pooled connection until its next use. A rollback that fails
    /// means the connection is gone, and the transaction with it.
    pub async fn rollback(self) {
        let _ = on_tx!(self, tx => tx.rollback().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner check runs once per registered pack: it must probe the `(kind, ref)`
    /// index, never scan the components table (whose size grows with every pack).
    #[tokio::test]
    async fn owner_check_probes_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let Db::Sqlite(pool) = &db else {
            unreachable!("a sqlite URL")
        };
        for rows in [1, 3, OWNERS_PER_QUERY] {
            let sql = format!("EXPLAIN QUERY PLAN {}", owners_sql(rows));
            let mut query = sqlx::query(&sql).bind(1_i64);
            for i in 0..rows {
                query = query.bind("action").bind(format!("p.a{i}"));
            }
            let plan: Vec<String> = query
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(3))
                .collect();
            assert!(
                plan.iter().any(|step| step.contains("USING INDEX")),
                "{plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN")),
                "{plan:?}"
            );
        }
        db.close().await;
    }

    /// SQLite cannot change a CHECK, so 0003 rebuilds `components`: the rows, their ids,
    /// the index, the unique pair and the cascade from `packs` must all survive it.
    #[tokio::test]
    async fn alias_kind_migration_keeps_the_components_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let Db::Sqlite(pool) = &db else {
            unreachable!("a sqlite URL")
        };
        let run = |sql: &'static str| sqlx::raw_sql(sql).execute(pool);
        run(include_str!("../../../migrations/sqlite/0001_init.sql"))
            .await
            .unwrap();
        run(
            "INSERT INTO packs (id, ref, label, version, storage_path, installed_at, updated_at) \
             VALUES (7, 'pp', 'P', '1.0.0', '/x', 0, 0), (8, 'qq', 'Q', '1.0.0', '/y', 0, 0); \
             INSERT INTO components (id, pack_id, kind, ref, file, definition) VALUES \
             (41, 7, 'action', 'p.a', 'actions/a.yaml', '{}'), \
             (42, 8, 'rule', 'q.r', 'rules/r.yaml', '{}')",
        )
        .await
        .unwrap();
        assert!(
            run(
                "INSERT INTO components (pack_id, kind, ref, file, definition) \
                 VALUES (7, 'alias', 'p.old', 'aliases/old.yaml', '{}')"
            )
            .await
            .is_err(),
            "0001 refuses aliases"
        );
        run(include_str!(
            "../../../migrations/sqlite/0003_alias_kind.sql"
        ))
        .await
        .unwrap();
        let rows: Vec<(i64, i64, String, String)> =
            sqlx::query_as("SELECT id, pack_id, kind, ref FROM components ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                (41, 7, "action".to_string(), "p.a".to_string()),
                (42, 8, "rule".to_string(), "q.r".to_string())
            ]
        );
        run(
            "INSERT INTO components (pack_id, kind, ref, file, definition) \
             VALUES (7, 'alias', 'p.greet', 'aliases/greet.yaml', '{}')",
        )
        .await
        .unwrap();
        let next: (i64,) = sqlx::query_as("SELECT id FROM components WHERE ref = 'p.greet'")
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(next.0 > 42, "AUTOINCREMENT continues: {}", next.0);
        for refused in [
            "INSERT INTO components (pack_id, kind, ref, file, definition) \
             VALUES (7, 'bogus', 'p.b', 'b.yaml', '{}')",
            "INSERT INTO components (pack_id, kind, ref, file, definition) \
             VALUES (7, 'action', 'p.a', 'again.yaml', '{}')",
            "INSERT INTO components (pack_id, kind, ref, file, definition) \
             VALUES (99, 'action', 'p.z', 'z.yaml', '{}')",
        ] {
            assert!(run(refused).await.is_err(), "{refused}");
        }
        let index: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'components' \
             AND name = 'components_pack_id'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(index.len(), 1);
        run("DELETE FROM packs WHERE id = 7").await.unwrap();
        let left: Vec<(String,)> = sqlx::query_as("SELECT ref FROM components")
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(left, [("q.r".to_string(),)]);
        db.close().await;
    }
}
