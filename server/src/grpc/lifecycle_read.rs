//! ListPacks, GetPack and VerifyPacks: protobuf in and out of [`crate::inventory`].

use attune_packs_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{Call, EventStream, PackServiceImpl, status::status};
use crate::inventory::{
    self, EnvironmentState, ListRequest, ListedPack, VerifiedPack, list::ComponentCounts,
};

/// Packs verified at once: each walk reads a whole pack from disk, so a few in
/// parallel keep the disk busy without starving the other calls of blocking threads.
fn verify_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4)
}

pub(super) async fn list_packs(
    service: &PackServiceImpl,
    request: Request<pb::ListPacksRequest>,
) -> Result<Response<pb::ListPacksResponse>, Status> {
    let call = Call::start(&request, "ListPacks");
    let r = request.into_inner();
    let listed = inventory::list::list(
        &service.state.db,
        ListRequest {
            ref_prefix: r.ref_prefix,
            keyword: r.keyword,
            page_size: r.page_size,
            page_token: r.page_token,
            page: r.page,
        },
    )
    .instrument(call.span.clone())
    .await
    .map_err(|e| status(&e))?;
    Ok(Response::new(pb::ListPacksResponse {
        packs: listed.packs.into_iter().map(summary).collect(),
        next_page_token: listed.next_page_token,
        total_items: listed.total_items,
        page: listed.page,
        page_size: listed.page_size,
    }))
}

pub(super) async fn get_pack(
    service: &PackServiceImpl,
    request: Request<pb::GetPackRequest>,
) -> Result<Response<pb::PackDetail>, Status> {
    let call = Call::start(&request, "GetPack");
    let pack_ref = request.into_inner().r#ref;
    let d = inventory::show::show(&service.state.db, &pack_ref)
        .instrument(call.span.clone())
        .await
        .map_err(|e| status(&e))?;
    let environments = d
        .pack
        .environments
        .iter()
        .map(|e| {
            let marker = e.marker.as_ref();
            pb::PackEnvironment {
                runtime: e.runtime.to_string(),
                path: e.path.display().to_string(),
                interpreter: marker
                    .map(|m| m.tool_path.display().to_string())
                    .unwrap_or_default(),
                inputs_hash: marker.map(|m| m.inputs_hash.clone()).unwrap_or_default(),
                built_at_ms: marker
                    .map(|m| i64::try_from(m.built_at_unix).unwrap_or(i64::MAX / 1000) * 1000)
                    .unwrap_or_default(),
                // Not recorded: whether the last build of the pack reused it.
                reused: false,
                status: e.status().to_string(),
            }
        })
        .collect();
    let link = |l: inventory::DependencyLink| pb::PackDependencyLink {
        r#ref: l.pack_ref,
        requirement: l.requirement,
        installed_version: l.installed_version,
        satisfied: l.satisfied,
    };
    let p = d.provenance;
    Ok(Response::new(pb::PackDetail {
        pack: Some(summary(d.pack)),
        provenance: Some(pb::PackProvenance {
            source: p.source,
            source_type: p.source_type,
            source_url: p.source_url,
            source_ref: p.source_ref,
            registry_url: p.registry_url,
            registry_trust: p.registry_trust,
            index_entry: p.index_entry,
            git_commit: p.git_commit,
            expected_checksum: p.expected_checksum,
            actual_checksum: p.actual_checksum,
            checksum_verified: p.checksum_verified,
        }),
        components: d
            .components
            .into_iter()
            .map(|c| pb::PackComponent {
                kind: c.kind,
                r#ref: c.component_ref,
                file: c.file,
            })
            .collect(),
        environments,
        last_test: d.last_test.map(|t| pb::TestResult {
            status: t.status,
            total_tests: count(t.total_tests),
            passed: count(t.passed),
            failed: count(t.failed),
            skipped: count(t.skipped),
            pass_rate: t.pass_rate,
            duration_ms: u64::try_from(t.duration_ms).unwrap_or(0),
        }),
        depends_on: d.depends_on.into_iter().map(link).collect(),
        required_by: d.required_by.into_iter().map(link).collect(),
        kept_versions: d
            .kept_versions
            .into_iter()
            .map(|k| pb::KeptVersion {
                version: k.version,
                checksum: k.checksum.unwrap_or_default(),
                source: k
                    .source
                    .as_deref()
                    .map(crate::source::redact_url)
                    .unwrap_or_default(),
                kept_at_ms: k.kept_at,
            })
            .collect(),
        storage_path: d.storage_path,
    }))
}

pub(super) async fn verify_packs(
    service: &PackServiceImpl,
    request: Request<pb::VerifyPacksRequest>,
) -> Result<Response<EventStream<pb::VerifyPacksEvent>>, Status> {
    let call = Call::start(&request, "VerifyPacks");
    let refs = request.into_inner().refs;
    let db = service.state.db.clone();
    Ok(call.stream(
        &service.stopping,
        move |reporter| async move {
            inventory::verify::verify(&db, refs, verify_concurrency(), &reporter)
                .await
                .map(|report| pb::VerifyPacksResult {
                    packs: report.packs.into_iter().map(verified).collect(),
                    ok: report.ok,
                    failed: report.failed,
                })
                .map_err(|e| status(&e))
        },
        |p| pb::VerifyPacksEvent {
            event: Some(pb::verify_packs_event::Event::Progress(p)),
        },
        |r| pb::VerifyPacksEvent {
            event: Some(pb::verify_packs_event::Event::Result(r)),
        },
    ))
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn summary(p: ListedPack) -> pb::InstalledPackSummary {
    pb::InstalledPackSummary {
        pack_id: p.pack_id,
        r#ref: p.pack_ref,
        label: p.label,
        description: p.description,
        version: p.version,
        source: p.source,
        source_type: p.source_type,
        installed_at_ms: p.installed_at_ms,
        installed_by: p.installed_by,
        updated_at_ms: p.updated_at_ms,
        components: Some(component_counts(p.components)),
        environments: p.environments.iter().map(environment_state).collect(),
        tags: p.tags,
    }
}

fn environment_state(e: &EnvironmentState) -> pb::EnvironmentState {
    pb::EnvironmentState {
        runtime: e.runtime.to_string(),
        status: e.status().to_string(),
        path: e.path.display().to_string(),
    }
}

fn component_counts(c: ComponentCounts) -> pb::ComponentCounts {
    pb::ComponentCounts {
        actions: c.actions,
        sensors: c.sensors,
        triggers: c.triggers,
        rules: c.rules,
        workflows: c.workflows,
        policies: c.policies,
        aliases: c.aliases,
    }
}

fn verified(v: VerifiedPack) -> pb::VerifiedPack {
    pb::VerifiedPack {
        r#ref: v.pack_ref,
        version: v.version,
        status: v.status.as_str().to_string(),
        recorded_checksum: v.recorded_checksum,
        actual_checksum: v.actual_checksum,
        modified: v.modified,
        added: v.added,
        missing: v.missing,
        message: v.message,
        irregular: v.irregular,
    }
}
