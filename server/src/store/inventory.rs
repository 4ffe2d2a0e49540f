//! Reading what is installed: pages of packs, one pack in full, and what VerifyPacks
//! compares against.
//!
//! Pages are in byte order of the ref on both backends (PostgreSQL compares in the
//! "C" collation, with an index in that collation; SQLite's BINARY is byte order), so
//! a page token, which is the last ref of a page, means the same on both.

use std::collections::HashMap;

use super::{Backend, Db, StoreError};

/// What a list row shows of a pack. `file_manifest` is never read for lists: it
/// can be megabytes per pack.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InstalledRow {
    pub id: i64,
    #[sqlx(rename = "ref")]
    pub pack_ref: String,
    pub label: String,
    pub description: Option<String>,
    pub version: String,
    /// JSON list.
    pub tags: String,
    pub source: Option<String>,
    pub source_type: Option<String>,
    pub storage_path: String,
    pub installed_by: Option<String>,
    pub installed_at: i64,
    pub updated_at: i64,
}

/// A pack in full, for GetPack (without its file manifest).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PackDetailRow {
    #[sqlx(flatten)]
    pub summary: InstalledRow,
    /// JSON list, as pack.yaml declared them.
    pub dependencies: String,
    pub source_url: Option<String>,
    pub source_ref: Option<String>,
    pub registry_url: Option<String>,
    pub registry_trust: Option<String>,
    pub git_commit: Option<String>,
    pub checksum: Option<String>,
    pub checksum_verified: bool,
    pub expected_checksum: Option<String>,
}

/// What VerifyPacks compares a pack's directory with.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct VerifyRow {
    #[sqlx(rename = "ref")]
    pub pack_ref: String,
    pub version: String,
    pub storage_path: String,
    pub checksum: Option<String>,
    pub file_manifest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ComponentEntry {
    pub kind: String,
    #[sqlx(rename = "ref")]
    pub component_ref: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LastTestRow {
    pub pack_version: String,
    pub executed_at: i64,
    pub status: String,
    pub total_tests: i64,
    pub passed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub pass_rate: f64,
    pub duration_ms: i64,
}

/// Which packs a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackFilter {
    /// Refs starting with this (compared exactly, byte for byte).
    pub ref_prefix: String,
    /// Case-insensitive substring of ref, label, description or a tag.
    pub keyword: String,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStart {
    /// After this ref (keyset: stable while packs come and go).
    After(String),
    /// After skipping this many packs (the REST gateway's `page`).
    Offset(u64),
}

/// One page of installed packs.
#[derive(Debug, Clone, Default)]
pub struct PackPage {
    pub rows: Vec<InstalledRow>,
    /// Packs after this page exist.
    pub more: bool,
    /// Packs matching the filter, all pages.
    pub total: u64,
    /// `pack id -> [(kind, count)]` for the packs of this page.
    pub component_counts: HashMap<i64, Vec<(String, i64)>>,
}

const SUMMARY_COLUMNS: &str = "id, ref, label, description, version, tags, source, source_type, \
    storage_path, installed_by, installed_at, updated_at";

/// `text` with LIKE's wildcards and escape character escaped (escape `\`).
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The WHERE clause of a filtered list (parameters from `$first`), and its values.
fn filter_sql(backend: Backend, filter: &PackFilter, first: usize) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let mut n = first;
    if !filter.ref_prefix.is_empty() {
        // An exact comparison of the leading characters: no pattern, so nothing in
        // the prefix is a wildcard, and no collation folds case. The range in byte
        // order lets the ref index find the start (refs use no character above `z`,
        // so every ref with the prefix sorts below `<prefix>~`).
        let key = bytewise(backend);
        clauses.push(format!(
            "{key} >= ${n} AND {key} < ${} AND substr(ref, 1, {}) = ${n}",
            n + 1,
            filter.ref_prefix.chars().count()
        ));
        values.push(filter.ref_prefix.clone());
        values.push(format!("{}~", filter.ref_prefix));
        n += 2;
    }
    if !filter.keyword.is_empty() {
        let tag_match = match backend {
            Backend::Sqlite => format!(
                "EXISTS (SELECT 1 FROM json_each(packs.tags) t \
                 WHERE lower(t.value) LIKE ${n} ESCAPE '\\')"
            ),
            Backend::Postgres => format!(
                "EXISTS (SELECT 1 FROM json_array_elements_text(packs.tags::json) t(v) \
                 WHERE lower(t.v) LIKE ${n} ESCAPE '\\')"
            ),
        };
        // A tag that contains the keyword makes the JSON text contain it too, unless
        // JSON escapes one of its characters: then only the elements can tell.
        let tag_match = if filter
            .keyword
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            tag_match
        } else {
            format!("(lower(tags) LIKE ${n} ESCAPE '\\' AND {tag_match})")
        };
        clauses.push(format!(
            "(lower(ref) LIKE ${n} ESCAPE '\\' OR lower(label) LIKE ${n} ESCAPE '\\' \
             OR lower(coalesce(description, '')) LIKE ${n} ESCAPE '\\' OR {tag_match})"
        ));
        values.push(format!(
            "%{}%",
            like_escaped(&filter.keyword.to_lowercase())
        ));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

/// `ref` in byte order on either backend.
fn bytewise(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "ref",
        Backend::Postgres => "ref COLLATE \"C\"",
    }
}

impl Db {
    /// A page of installed packs matching `filter`, in byte order of the ref, with the
    /// total and the component counts of the page's packs (three queries, whatever
    /// the page size).
    pub async fn installed_page(
        &self,
        filter: &PackFilter,
        start: &PageStart,
        page_size: u32,
    ) -> Result<PackPage, StoreError> {
        let backend = self.backend();
        let (where_sql, values) = filter_sql(backend, filter, 1);
        let count_sql = format!("SELECT COUNT(*) FROM packs{where_sql}");
        let total: i64 = on_pool!(self, pool => {
            let mut q = sqlx::query_scalar(&count_sql);
            for v in &values {
                q = q.bind(v);
            }
            q.fetch_one(pool).await?
        });

        let key = bytewise(backend);
        let mut n = values.len() + 1;
        let mut page_sql = format!("SELECT {SUMMARY_COLUMNS} FROM packs{where_sql}");
        let after = match start {
            PageStart::After(last) => {
                let joiner = if where_sql.is_empty() {
                    " WHERE"
                } else {
                    " AND"
                };
                page_sql.push_str(&format!("{joiner} {key} > ${n}"));
                n += 1;
                Some(last.as_str())
            }
            PageStart::Offset(_) => None,
        };
        // One more than a page, to know whether another follows.
        page_sql.push_str(&format!(" ORDER BY {key} LIMIT ${n}"));
        n += 1;
        let offset = match start {
            PageStart::Offset(skip) if *skip > 0 => {
                page_sql.push_str(&format!(" OFFSET ${n}"));
                Some(i64::try_from(*skip).unwrap_or(i64::MAX))
            }
            _ => None,
        };
        let limit = i64::from(page_size) + 1;
        let mut rows: Vec<InstalledRow> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(&page_sql);
            for v in &values {
                q = q.bind(v);
            }
            if let Some(after) = after {
                q = q.bind(after);
            }
            q = q.bind(limit);
            if let Some(offset) = offset {
                q = q.bind(offset);
            }
            q.fetch_all(pool).await?
        });
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);

        let mut component_counts: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
        if !rows.is_empty() {
            let placeholders: Vec<String> = (1..=rows.len()).map(|i| format!("${i}")).collect();
            let counts_sql = format!(
                "SELECT pack_id, kind, COUNT(*) FROM components WHERE pack_id IN ({}) \
                 GROUP BY pack_id, kind",
                placeholders.join(", ")
            );
            let counted: Vec<(i64, String, i64)> = on_pool!(self, pool => {
                let mut q = sqlx::query_as(&counts_sql);
                for row in &rows {
                    q = q.bind(row.id);
                }
                q.fetch_all(pool).await?
            });
            for (pack_id, kind, count) in counted {
                component_counts
                    .entry(pack_id)
                    .or_default()
                    .push((kind, count));
            }
        }
        Ok(PackPage {
            rows,
            more,
            total: u64::try_from(total).unwrap_or(0),
            component_counts,
        })
    }

    /// The installed pack `pack_ref` in full, if it is installed.
    pub async fn installed_pack(
        &self,
        pack_ref: &str,
    ) -> Result<Option<PackDetailRow>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, dependencies, source_url, source_ref, registry_url, \
             registry_trust, git_commit, checksum, checksum_verified, expected_checksum \
             FROM packs WHERE ref = $1"
        );
        Ok(on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(pack_ref)
            .fetch_optional(pool)
            .await?))
    }

    /// The components of the pack with id `pack_id`, by kind then ref.
    pub async fn pack_components(&self, pack_id: i64) -> Result<Vec<ComponentEntry>, StoreError> {
        let sql = format!(
            "SELECT kind, ref, file FROM components WHERE pack_id = $1 ORDER BY kind, {}",
            bytewise(self.backend())
        );
        Ok(on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(pack_id)
            .fetch_all(pool)
            .await?))
    }

    /// The most recent test result of the pack with id `pack_id`.
    pub async fn last_test(&self, pack_id: i64) -> Result<Option<LastTestRow>, StoreError> {
        // INTEGER columns are 32-bit on PostgreSQL: widened so both decode as i64.
        const SQL: &str = "SELECT pack_version, executed_at, status, \
            CAST(total_tests AS BIGINT) AS total_tests, CAST(passed AS BIGINT) AS passed, \
            CAST(failed AS BIGINT) AS failed, CAST(skipped AS BIGINT) AS skipped, pass_rate, \
            duration_ms FROM pack_test_results WHERE pack_id = $1 \
            ORDER BY executed_at DESC, id DESC LIMIT 1";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(pack_id)
            .fetch_optional(pool)
            .await?))
    }

    /// Every installed ref, in byte order.
    pub async fn installed_refs(&self) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT ref FROM packs ORDER BY {}",
            bytewise(self.backend())
        );
        Ok(on_pool!(self, pool => sqlx::query_scalar(&sql).fetch_all(pool).await?))
    }

    /// What VerifyPacks needs of `pack_ref` (its manifest included), if installed.
    pub async fn verify_row(&self, pack_ref: &str) -> Result<Option<VerifyRow>, StoreError> {
        const SQL: &str = "SELECT ref, version, storage_path, checksum, file_manifest FROM packs \
            WHERE ref = $1";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(pack_ref)
            .fetch_optional(pool)
            .await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_escaped() {
        assert_eq!(like_escaped("a_b%c\\d"), "a\\_b\\%c\\\\d");
        let (sql, values) = filter_sql(
            Backend::Sqlite,
            &PackFilter {
                ref_prefix: "co_".into(),
                keyword: "50%".into(),
            },
            1,
        );
        assert!(sql.contains("substr(ref, 1, 3) = $1"), "{sql}");
        assert_eq!(values, ["co_", "co_~", "%50\\%%"]);
    }
}
