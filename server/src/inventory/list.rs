//! ListPacks: installed packs a page at a time, in byte order of the ref.
//!
//! A page token is the position after the last pack of a page (its ref), so paging
//! with tokens is stable while packs are installed or removed meanwhile: no pack is
//! shown twice, none that stays installed is skipped. A 1-based `page` (the REST
//! gateway's) counts packs instead, like Attune's own list endpoints.

use sha2::{Digest, Sha256};

use super::{EnvironmentState, InventoryError, environments};
use crate::store::{
    Db,
    inventory::{InstalledRow, PackFilter, PageStart},
};

pub use crate::register::ComponentCounts;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Longest `ref_prefix` / `keyword` accepted (a ref has at most 64 characters; a
/// keyword longer than this matches nothing a person typed).
pub const MAX_FILTER_CHARS: usize = 256;
/// Longest page token accepted: ours are well below it.
const MAX_TOKEN_CHARS: usize = 512;
const TOKEN_VERSION: &str = "p1";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    pub ref_prefix: String,
    pub keyword: String,
    /// Default [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`].
    pub page_size: Option<u32>,
    /// From a previous answer; empty for the first page.
    pub page_token: String,
    /// 1-based; ignored when `page_token` is set.
    pub page: Option<u32>,
}

/// One installed pack as a list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedPack {
    pub pack_id: i64,
    pub pack_ref: String,
    pub label: String,
    pub description: String,
    pub version: String,
    pub source: String,
    pub source_type: String,
    pub installed_at_ms: i64,
    pub installed_by: String,
    pub updated_at_ms: i64,
    pub tags: Vec<String>,
    pub components: ComponentCounts,
    pub environments: Vec<EnvironmentState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PackList {
    pub packs: Vec<ListedPack>,
    /// Empty on the last page.
    pub next_page_token: String,
    pub total_items: u64,
    /// 1-based number of this page.
    pub page: u32,
    pub page_size: u32,
}

/// Where the next page starts, and its number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    page: u32,
    after: String,
}

/// Ties a token to the filter it was made for: the same position means something
/// else under another filter.
fn filter_tag(filter: &PackFilter) -> String {
    let mut sha = Sha256::new();
    sha.update(filter.ref_prefix.as_bytes());
    sha.update([0]);
    sha.update(filter.keyword.as_bytes());
    hex::encode(&sha.finalize()[..6])
}

/// Opaque to callers: hex of `p1 <filter tag> <page> <last ref>`.
fn encode_token(filter: &PackFilter, token: &Token) -> String {
    hex::encode(format!(
        "{TOKEN_VERSION} {} {} {}",
        filter_tag(filter),
        token.page,
        token.after
    ))
}

fn decode_token(filter: &PackFilter, text: &str) -> Result<Token, InventoryError> {
    let bad = |reason| InventoryError::BadPageToken { reason };
    if text.len() > MAX_TOKEN_CHARS {
        return Err(bad("too long"));
    }
    let bytes = hex::decode(text).map_err(|_| bad("not a token"))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not a token"))?;
    let mut parts = text.splitn(4, ' ');
    let (Some(version), Some(tag), Some(page), Some(after)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a token"));
    };
    if version != TOKEN_VERSION {
        return Err(bad("from another version of the server"));
    }
    if tag != filter_tag(filter) {
        return Err(bad("made for other filters"));
    }
    let page = page
        .parse::<u32>()
        .ok()
        .filter(|p| *p >= 2)
        .ok_or_else(|| bad("not a token"))?;
    if !crate::manifest::is_valid_pack_ref(after) {
        return Err(bad("not a token"));
    }
    Ok(Token {
        page,
        after: after.to_string(),
    })
}

fn check_filter(field: &'static str, value: &str) -> Result<(), InventoryError> {
    let len = value.chars().count();
    if len > MAX_FILTER_CHARS {
        return Err(InventoryError::FilterTooLong {
            field,
            len,
            max: MAX_FILTER_CHARS,
        });
    }
    Ok(())
}

/// A page of installed packs.
pub async fn list(db: &Db, request: ListRequest) -> Result<PackList, InventoryError> {
    check_filter("ref_prefix", &request.ref_prefix)?;
    check_filter("keyword", &request.keyword)?;
    let page_size = match request.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(0) => {
            return Err(InventoryError::PageSizeZero {
                default: DEFAULT_PAGE_SIZE,
            });
        }
        Some(n) if n > MAX_PAGE_SIZE => {
            return Err(InventoryError::PageSizeTooLarge {
                requested: n,
                max: MAX_PAGE_SIZE,
            });
        }
        Some(n) => n,
    };
    let filter = PackFilter {
        ref_prefix: request.ref_prefix,
        keyword: request.keyword.trim().to_string(),
    };
    let (page, start) = if request.page_token.is_empty() {
        match request.page {
            Some(0) => return Err(InventoryError::PageZero),
            None | Some(1) => (1, PageStart::Offset(0)),
            Some(page) => (
                page,
                PageStart::Offset(u64::from(page - 1) * u64::from(page_size)),
            ),
        }
    } else {
        let token = decode_token(&filter, &request.page_token)?;
        (token.page, PageStart::After(token.after))
    };
    let found = db.installed_page(&filter, &start, page_size).await?;
    let next_page_token = match (found.more, found.rows.last()) {
        (true, Some(last)) => encode_token(
            &filter,
            &Token {
                page: page.saturating_add(1),
                after: last.pack_ref.clone(),
            },
        ),
        _ => String::new(),
    };
    let mut counts = found.component_counts;
    let rows: Vec<(InstalledRow, ComponentCounts)> = found
        .rows
        .into_iter()
        .map(|row| {
            let c = counts.remove(&row.id).unwrap_or_default();
            (row, component_counts(&c))
        })
        .collect();
    // Environment links and markers are files: read off the async threads.
    let packs = tokio::task::spawn_blocking(move || {
        rows.into_iter()
            .map(|(row, components)| listed(row, components))
            .collect()
    })
    .await
    .expect("listing environments panicked");
    Ok(PackList {
        packs,
        next_page_token,
        total_items: found.total,
        page,
        page_size,
    })
}

pub(super) fn component_counts(counted: &[(String, i64)]) -> ComponentCounts {
    let mut c = ComponentCounts::default();
    for (kind, n) in counted {
        let n = u32::try_from(*n).unwrap_or(u32::MAX);
        match kind.as_str() {
            "action" => c.actions += n,
            "sensor" => c.sensors += n,
            "trigger" => c.triggers += n,
            "rule" => c.rules += n,
            "workflow" => c.workflows += n,
            "policy" => c.policies += n,
            "alias" => c.aliases += n,
            // Runtimes, permission sets and queues have no count of their own.
            _ => {}
        }
    }
    c
}

/// The list entry of `row` (reads the pack's environment links).
pub(super) fn listed(row: InstalledRow, components: ComponentCounts) -> ListedPack {
    let environments = environments(std::path::Path::new(&row.storage_path), &row.pack_ref);
    ListedPack {
        pack_id: row.id,
        // Written by registration as a JSON list; unreadable means none recorded.
        tags: serde_json::from_str(&row.tags).unwrap_or_default(),
        pack_ref: row.pack_ref,
        label: row.label,
        description: row.description.unwrap_or_default(),
        version: row.version,
        // Stored redacted; redacted again for rows written before that was so.
        source: row
            .source
            .as_deref()
            .map(crate::source::redact_url)
            .unwrap_or_default(),
        source_type: row.source_type.unwrap_or_default(),
        installed_at_ms: row.installed_at,
        installed_by: row.installed_by.unwrap_or_default(),
        updated_at_ms: row.updated_at,
        components,
        environments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_filter() {
        let filter = PackFilter {
            ref_prefix: "co".into(),
            keyword: String::new(),
        };
        let token = Token {
            page: 3,
            after: "core_x".into(),
        };
        let text = encode_token(&filter, &token);
        assert_eq!(decode_token(&filter, &text).unwrap(), token);
        let other = PackFilter {
            ref_prefix: "c".into(),
            keyword: String::new(),
        };
        let e = decode_token(&other, &text).unwrap_err().to_string();
        assert!(e.contains("made for other filters"), "{e}");
        for bad in ["zz", "", &"ab".repeat(400), &hex::encode("p1 x 2 core")] {
            assert!(decode_token(&filter, bad).is_err(), "{bad}");
        }
        // A ref that no pack can have is not a position.
        let forged = hex::encode(format!("p1 {} 2 ' OR 1=1 --", filter_tag(&filter)));
        assert!(decode_token(&filter, &forged).is_err());
    }
}
